# Shared code of the qemunbd provider, sourced by every script.
# Userspace-only: volumes are raw files "$EXTP_DIR/$VOL_NAME.img" served by
# a qemu-nbd daemon on a unix socket; attach prints no block device, only a
# kvm: URI.

usage() {
    cat <<USAGE
qemunbd ExtStorage provider: $(basename "$0")

Userspace-only volumes: raw files in the directory given by the 'dir' ext
param, exported by qemu-nbd over a unix socket. attach prints an empty first
line and kvm:nbd+unix:///<volume>?socket=<path>.

Run through Ganeti or the extstorage CLI; the input is the environment
(VOL_NAME, VOL_SIZE, VOL_NEW_SIZE, VOL_METADATA, VOL_SNAPSHOT_NAME,
VOL_SNAPSHOT_SIZE, EXTP_DIR). Settings may be put in ./etc/settings.sh.
USAGE
}

for arg in "$@"; do
    case "$arg" in
        -h|--help) usage; exit 0 ;;
    esac
done

if [ -f ./etc/settings.sh ]; then
    # shellcheck disable=SC1091
    . ./etc/settings.sh
fi

log() { echo "qemunbd $(basename "$0"): $*" >&2; }
die() { log "error: $*"; exit 1; }

: "${VOL_NAME:?VOL_NAME is not set: run this script through Ganeti or extstorage}"
: "${EXTP_DIR:?the 'dir' parameter is required: pass -p dir=/path/to/volume/files}"
case "$EXTP_DIR" in
    /*) ;;
    *) die "the 'dir' parameter must be an absolute path, not '$EXTP_DIR' (scripts run in the provider directory, so a relative path would put volumes there)" ;;
esac

# Used by the scripts that source this file, not here.
# shellcheck disable=SC2034
VOL_FILE="$EXTP_DIR/$VOL_NAME.img"
SOCKET="$EXTP_DIR/$VOL_NAME.nbd.sock"
PIDFILE="$EXTP_DIR/$VOL_NAME.nbd.pid"
# shellcheck disable=SC2034
DAEMON_LOG="$EXTP_DIR/$VOL_NAME.nbd.log"

# Prints the pid of the running qemu-nbd for this volume, if any: the pid
# file's process, if one of its arguments is exactly --socket=$SOCKET (a
# whole-argument string comparison: the path is not a pattern).
server_pid() {
    [ -f "$PIDFILE" ] || return 0
    local pid arg
    pid=$(cat "$PIDFILE" 2>/dev/null || true)
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    while IFS= read -r -d '' arg; do
        if [ "$arg" = "--socket=$SOCKET" ]; then
            echo "$pid"
            return 0
        fi
    done 2>/dev/null < "/proc/$pid/cmdline" || true
}

# Stops the volume's qemu-nbd (SIGTERM, SIGKILL after 10 s). It may exit on
# its own at any moment: a signal to a process already gone is not an error.
stop_server() {
    local pid
    pid=$(server_pid)
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
        log "stopped qemu-nbd $pid"
    fi
    rm -f "$PIDFILE" "$SOCKET"
}
