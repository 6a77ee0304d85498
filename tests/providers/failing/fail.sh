#!/bin/sh
# Test-only provider: every action prints 30 lines and a stderr line, then
# exits 3.
for i in $(seq 1 30); do echo "out line $i"; done
echo "fatal: from stderr" >&2
exit 3
