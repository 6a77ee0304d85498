#!/bin/sh
# Test-only provider: every action records its environment, working
# directory and arguments under $EXTP_OUT/<action>.{env,cwd,args}.
# attach prints no device and one userspace URI. EXTP_SLEEP makes the action
# take that long (lock tests).
action=$(basename "$0")
: "${EXTP_OUT:?EXTP_OUT is required}"
env > "$EXTP_OUT/$action.env.tmp"
mv "$EXTP_OUT/$action.env.tmp" "$EXTP_OUT/$action.env"
pwd > "$EXTP_OUT/$action.cwd"
printf '%s\n' "$@" > "$EXTP_OUT/$action.args"
echo "recorder $action stderr" >&2
if [ -n "${EXTP_SLEEP:-}" ]; then
    sleep "$EXTP_SLEEP"
fi
if [ "$action" = attach ]; then
    printf '\nkvm:recorded:%s\n' "$VOL_NAME"
else
    echo "recorder $action stdout"
fi
: > "$EXTP_OUT/$action.done"
