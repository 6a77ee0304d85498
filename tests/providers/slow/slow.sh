#!/bin/sh
# Test-only provider for signals, locks, fds and secrets. Every action
# records that it started ($EXTP_OUT/<action>.ran), then does what EXTP_MODE
# says:
#   trap    wait for SIGINT, SIGTERM or SIGHUP; record its name in
#           <action>.signal, stop the background sleep and exit 0. Our pid
#           is in <action>.pid once the traps are set.
#   hang    start a child that ignores SIGTERM, record both pids
#           (hang.script.pid, hang.child.pid) and never finish
#   check   record in <action>.check every process still alive (not a
#           zombie) in the process group recorded by hang, or "none"
#   daemon  leave a daemon in our process group (daemon.pid) and succeed
#   fds     record our open fds (ls -l /proc/self/fd) in <action>.fds
#   leak    print EXTP_KEY in an rbd URI, an iSCSI URI and a command line,
#           then fail
#   (none)  succeed
# attach prints no device and a kvm: URI.
action=$(basename "$0")
: "${EXTP_OUT:?EXTP_OUT is required}"
: > "$EXTP_OUT/$action.ran"

record_pid() { # file pid
    echo "$2" > "$1.tmp" && mv "$1.tmp" "$1"
}

case "${EXTP_MODE:-}" in
    trap)
        sleep 1000 &
        child=$!
        for sig in INT TERM HUP; do
            # shellcheck disable=SC2064 # expand $sig and $child now
            trap "echo $sig > '$EXTP_OUT/$action.signal'; kill $child; exit 0" "$sig"
        done
        echo "$action waits for a signal"
        record_pid "$EXTP_OUT/$action.pid" $$
        wait "$child"
        ;;
    hang)
        sh -c 'trap "" TERM; while :; do sleep 1; done' &
        record_pid "$EXTP_OUT/hang.child.pid" $!
        record_pid "$EXTP_OUT/hang.script.pid" $$
        echo "hanging now"
        while :; do sleep 1; done
        ;;
    check)
        pgid=$(cat "$EXTP_OUT/hang.script.pid")
        alive=""
        for stat in /proc/[0-9]*/stat; do
            # shellcheck disable=SC2046 # split the fields on purpose
            set -- $(cat "$stat" 2>/dev/null) || continue
            [ "$#" -ge 5 ] || continue
            if [ "$5" = "$pgid" ] && [ "$3" != Z ] && [ "$3" != X ]; then
                alive="$alive $1"
            fi
        done
        echo "${alive:-none}" > "$EXTP_OUT/$action.check"
        ;;
    daemon)
        sleep 300 </dev/null >/dev/null 2>&1 &
        record_pid "$EXTP_OUT/daemon.pid" $!
        ;;
    fds)
        ls -l /proc/self/fd > "$EXTP_OUT/$action.fds"
        ;;
    leak)
        echo "+ rbd map --id admin --key $EXTP_KEY pool/img" >&2
        echo "kvm:rbd:pool/img:id=admin:key=$EXTP_KEY:mon_host=10.0.0.1"
        echo "kvm:iscsi://alice%$EXTP_KEY@10.0.0.1/iqn.2001-04.com.example:t1/0"
        exit 1
        ;;
esac
if [ "$action" = attach ]; then
    printf '\nkvm:slow:%s\n' "$VOL_NAME"
fi
