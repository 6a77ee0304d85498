#!/bin/sh
# Test-only provider: every action prints $EXTP_BYTES bytes (default 2 GiB)
# of text, then a final line, and succeeds. attach prints the text on stdout
# too (its result would be far too large).
yes "chatty provider output line, over and over" | head -c "${EXTP_BYTES:-2147483648}"
echo "chatty last line"
