#!/bin/sh
# Test-only provider: everything but attach succeeds silently.
exit 0
