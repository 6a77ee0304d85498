# Shared code of the loopfile provider, sourced by every script.
# Volumes are sparse files "$EXTP_DIR/$VOL_NAME.img" attached as loop devices.

usage() {
    cat <<USAGE
loopfile ExtStorage provider: $(basename "$0")

Volumes are sparse files in the directory given by the 'dir' ext param,
attached as real block devices through losetup.

Run through Ganeti or the extstorage CLI, never by hand; the input is the
environment: VOL_NAME, VOL_SIZE, VOL_NEW_SIZE, VOL_METADATA,
VOL_SNAPSHOT_NAME, VOL_SNAPSHOT_SIZE, VOL_OPEN_EXCLUSIVE, EXTP_DIR.
Settings may be put in ./etc/settings.sh (relative to the provider directory).
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

log() { echo "loopfile $(basename "$0"): $*" >&2; }
die() { log "error: $*"; exit 1; }

: "${VOL_NAME:?VOL_NAME is not set: run this script through Ganeti or extstorage}"
: "${EXTP_DIR:?the 'dir' parameter is required: pass -p dir=/path/to/volume/files}"
case "$EXTP_DIR" in
    /*) ;;
    *) die "the 'dir' parameter must be an absolute path, not '$EXTP_DIR' (scripts run in the provider directory, so a relative path would put volumes there)" ;;
esac

VOL_FILE="$EXTP_DIR/$VOL_NAME.img"

# The loop devices currently backed by the volume file, one per line.
loop_devices() {
    [ -e "$VOL_FILE" ] || return 0
    losetup --list --noheadings --output NAME --associated "$VOL_FILE"
}

# The loop devices still backed by the volume file after it was deleted:
# sysfs shows their backing file as "<file> (deleted)". losetup cannot find
# them by the file's name any more.
stale_loop_devices() {
    local real f
    real=$(realpath -m -- "$VOL_FILE")
    for f in /sys/block/loop*/loop/backing_file; do
        [ -r "$f" ] || continue
        if [ "$(cat -- "$f" 2>/dev/null)" = "$real (deleted)" ]; then
            f=${f%/loop/backing_file}
            echo "/dev/${f##*/}"
        fi
    done
}

# Prints what uses block device $1, one user per line: processes holding it
# open (by that path), kernel holders (device-mapper, md), mounts, swap.
# Nothing printed: unused.
device_users() {
    local dev=$1 name majmin h
    name=${dev##*/}
    for h in /sys/block/"$name"/holders/*; do
        [ -e "$h" ] && echo "kernel holder ${h##*/}"
    done
    majmin=$(cat "/sys/block/$name/dev" 2>/dev/null || true)
    if [ -n "$majmin" ]; then
        awk -v d="$majmin" '$3 == d { print "mount on " $5 }' /proc/self/mountinfo
    fi
    awk -v d="$dev" '$1 == d { print "swap" }' /proc/swaps 2>/dev/null || true
    # (find complains about processes that exit while it looks.)
    { find /proc/[0-9]*/fd -maxdepth 1 -lname "$dev" 2>/dev/null || true; } | while read -r h; do
        h=${h#/proc/}
        h=${h%%/*}
        echo "process $h ($(cat "/proc/$h/comm" 2>/dev/null || echo gone))"
    done | sort -u
}

# Detaches loop device $1, or fails saying what still uses it.
detach_device() {
    local dev=$1 name users
    name=${dev##*/}
    # Tools that scan loop devices (losetup, udev's blkid probe of a device
    # attached a moment ago) open them briefly: only a user that stays for a
    # second counts.
    for _ in $(seq 10); do
        users=$(device_users "$dev" | sed -e ':a' -e 'N' -e '$!ba' -e 's/\n/, /g')
        [ -n "$users" ] || break
        sleep 0.1
    done
    [ -z "$users" ] || die "$dev (volume file $VOL_FILE) is in use by: $users; stop using it (shut the guest down, unmount it, close it), then retry"
    losetup --detach "$dev"
    # The kernel only defers the detach of a device that is still open (it
    # sets autoclear): then a user we could not see holds it.
    for _ in $(seq 50); do
        if [ ! -e "/sys/block/$name/loop/backing_file" ]; then
            log "detached $dev"
            return 0
        fi
        sleep 0.1
    done
    die "$dev (volume file $VOL_FILE) is still open; the kernel detaches it once it is closed: close it, then retry"
}
