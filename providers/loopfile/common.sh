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

VOL_FILE="$EXTP_DIR/$VOL_NAME.img"

# The loop devices currently backed by the volume file, one per line.
loop_devices() {
    [ -e "$VOL_FILE" ] || return 0
    losetup --list --noheadings --output NAME --associated "$VOL_FILE"
}
