#!/bin/sh
# Test-only provider: every action starts a child that ignores SIGTERM,
# records both pids in $EXTP_OUT, and never finishes.
: "${EXTP_OUT:?EXTP_OUT is required}"
sh -c 'trap "" TERM; while :; do sleep 1; done' &
echo $! > "$EXTP_OUT/child.pid"
echo $$ > "$EXTP_OUT/script.pid"
echo "hanging now"
while :; do sleep 1; done
