# Shared code of the rbd provider, sourced by every script.
#
# Volumes are Ceph RBD images POOL/[NAMESPACE/]VOL_NAME. attach prints the
# kernel device (/dev/rbdN) on line 1 where the kernel's rbd module is present
# and the disk is not userspace-only (EXTP_ACCESS=userspace), else an empty
# line; line 2 is always the userspace URI for QEMU's own rbd driver,
# kvm:rbd:POOL/[NAMESPACE/]IMAGE[:conf=CONF][:id=ID], escaped as QEMU's
# legacy rbd filename wants. Every rbd command is bounded by the 'timeout'
# parameter, so a cluster that is down gives a clear error, not a hang.

usage() {
    cat <<USAGE
rbd ExtStorage provider: $(basename "$0")

Volumes are Ceph RBD images in the pool given by the 'pool' ext param
(default rbd), optionally in a RADOS namespace. attach prints the kernel
device where 'rbd device map' works, else an empty line, then
kvm:rbd:POOL/IMAGE:... for QEMU's userspace rbd driver.

Ext params: pool, namespace, conf (ceph.conf path), id (Ceph client id,
without 'client.'), keyring or keyfile (absolute paths; keys are never put on
a command line), timeout (seconds per Ceph operation, default 30).

Run through Ganeti or the extstorage CLI, never by hand; the input is the
environment: VOL_NAME, VOL_SIZE, VOL_NEW_SIZE, VOL_METADATA,
VOL_SNAPSHOT_NAME, VOL_SNAPSHOT_SIZE, VOL_OPEN_EXCLUSIVE, VOL_CNAME,
VOL_UUID, EXTP_POOL, EXTP_NAMESPACE, EXTP_CONF, EXTP_ID, EXTP_KEYRING,
EXTP_KEYFILE, EXTP_TIMEOUT, EXTP_ACCESS. Settings may be put in
./etc/settings.sh (relative to the provider directory), e.g. defaults for the
EXTP_ variables, or RBD_NODE_NAME (this node's name in open records; default
uname -n).
USAGE
}

SCRIPT=$(basename "$0")
SCRIPT_ARGS=()
for arg in "$@"; do
    case "$arg" in
        -h|--help) usage; exit 0 ;;
        *) SCRIPT_ARGS+=("$arg") ;;
    esac
done

if [ -f ./etc/settings.sh ]; then
    # shellcheck disable=SC1091
    . ./etc/settings.sh
fi

log() { echo "rbd $SCRIPT: $*" >&2; }
die() { log "error: $*"; exit 1; }

: "${VOL_NAME:?VOL_NAME is not set: run this script through Ganeti or extstorage}"

# ------------------------------------------------------------ parameters

# Refuses control characters (a newline would break attach's output).
check_text() {
    case "$2" in
        *[[:cntrl:]]*) die "the '$1' parameter contains a control character (newline, tab, ...): '$2'" ;;
    esac
}

# An absolute path to an existing, readable regular file.
check_file() {
    local name=$1 path=$2
    check_text "$name" "$path"
    case "$path" in
        /*) ;;
        *) die "the '$name' parameter must be an absolute path, not '$path' (scripts run in the provider directory, so a relative path would be looked up there)" ;;
    esac
    [ -e "$path" ] || die "the '$name' file $path does not exist: give the path of an existing file"
    [ -f "$path" ] || die "the '$name' path $path is not a regular file"
    [ -r "$path" ] || die "the '$name' file $path is not readable by $(id -un)"
}

POOL=${EXTP_POOL-rbd}
NAMESPACE=${EXTP_NAMESPACE-}
CONF=${EXTP_CONF-}
CLIENT_ID=${EXTP_ID-}
KEYRING=${EXTP_KEYRING-}
KEYFILE=${EXTP_KEYFILE-}
TIMEOUT=${EXTP_TIMEOUT-30}

[ -n "$POOL" ] || die "the 'pool' parameter is empty: give the RADOS pool of the images (default rbd)"
check_text pool "$POOL"
check_text namespace "$NAMESPACE"
case "$POOL$NAMESPACE" in
    */*|*@*) die "the 'pool' ('$POOL') and 'namespace' ('$NAMESPACE') parameters may not contain '/' or '@': rbd refuses such names" ;;
esac
if [ -n "$CONF" ]; then
    check_file conf "$CONF"
    case "$CONF" in
        *[,\;\ ]*) die "the 'conf' path '$CONF' contains ',', ';' or a space: Ceph reads a list of config files split at those characters; move the file to a path without them" ;;
    esac
fi
if [ -n "$CLIENT_ID" ]; then
    case "$CLIENT_ID" in
        client.*) die "the 'id' parameter is the client id without 'client.': give '${CLIENT_ID#client.}', not '$CLIENT_ID'" ;;
    esac
    [[ $CLIENT_ID =~ ^[A-Za-z0-9_.-]+$ ]] \
        || die "the 'id' parameter '$CLIENT_ID' may only hold letters, digits, '_', '.' and '-'"
fi
[ -n "$KEYRING" ] && check_file keyring "$KEYRING"
[ -n "$KEYFILE" ] && check_file keyfile "$KEYFILE"
if [ -n "$KEYRING" ] && [ -n "$KEYFILE" ]; then
    die "give either the 'keyring' or the 'keyfile' parameter, not both (Ceph would use the keyfile and ignore the keyring)"
fi
[[ $TIMEOUT =~ ^[0-9]{1,4}$ ]] && [ "$TIMEOUT" -ge 1 ] && [ "$TIMEOUT" -le 3600 ] \
    || die "the 'timeout' parameter must be a number of seconds from 1 to 3600, not '$TIMEOUT'"
TIMEOUT=$((10#$TIMEOUT))

NODE=${RBD_NODE_NAME:-$(uname -n)}
[[ $NODE =~ ^[A-Za-z0-9_.-]+$ ]] \
    || die "this node's name '$NODE' may only hold letters, digits, '_', '.' and '-' (set RBD_NODE_NAME in etc/settings.sh)"

# The image, as people write it, for messages.
SPEC="$POOL/${NAMESPACE:+$NAMESPACE/}$VOL_NAME"
CLUSTER_DESC="conf ${CONF:-/etc/ceph/ceph.conf}, client.${CLIENT_ID:-admin}"

# Options of every rbd command: the cluster and the key (by file, never the
# key itself), and Ceph's own operation timeouts, so that librados gives up
# on a cluster that does not answer (client_mount_timeout covers the
# monitors at connect, the op timeouts every later request). No admin socket
# for these short-lived clients.
CEPH_OPTS=(
    --client-mount-timeout="$TIMEOUT"
    --rados-mon-op-timeout="$TIMEOUT"
    --rados-osd-op-timeout="$TIMEOUT"
    --admin-socket=
)
[ -n "$CONF" ] && CEPH_OPTS+=(--conf="$CONF")
[ -n "$CLIENT_ID" ] && CEPH_OPTS+=(--id="$CLIENT_ID")
[ -n "$KEYRING" ] && CEPH_OPTS+=(--keyring="$KEYRING")
[ -n "$KEYFILE" ] && CEPH_OPTS+=(--keyfile="$KEYFILE")

# Pool and namespace options for an image command.
POOL_OPTS=(--pool="$POOL")
[ -n "$NAMESPACE" ] && POOL_OPTS+=(--namespace="$NAMESPACE")
IMAGE_OPTS=("${POOL_OPTS[@]}" --image="$VOL_NAME")

# ---------------------------------------------------------- exit hooks

RBD_ERRFILE=$(mktemp "${TMPDIR:-/tmp}/extstorage-rbd.XXXXXX")
EXIT_HOOKS=()
at_exit() { EXIT_HOOKS+=("$1"); }
run_exit_hooks() {
    local rc=$? h
    for h in "${EXIT_HOOKS[@]}"; do
        eval "$h" || true
    done
    rm -f "$RBD_ERRFILE"
    exit "$rc"
}
trap run_exit_hooks EXIT

# ---------------------------------------------------------- running rbd

# Sets RBD_WHAT, the command for messages: rbd and its (sub)command words.
rbd_what() {
    RBD_WHAT="rbd $1"
    case "${2-}" in
        ""|-*) ;;
        *) RBD_WHAT+=" $2" ;;
    esac
}

# Runs rbd with the cluster options. The whole command is bounded too
# (timeout + 10 s, plus RBD_LOCK_WAIT s when set, then SIGKILL 5 s later), in
# case some wait is not covered by Ceph's own timeouts. --foreground keeps
# rbd in our process group, so the caller's timeout and signals reach it.
# Sets RBD_OUT (stdout), RBD_RC and RBD_BOUND (the bound); stderr is kept in
# RBD_ERRFILE. Never exits.
rbd_run() {
    rbd_what "$@"
    RBD_RC=0
    RBD_BOUND=$((TIMEOUT + 10 + ${RBD_LOCK_WAIT:-0}))
    RBD_OUT=$(timeout --foreground --kill-after=5 "$RBD_BOUND" \
        rbd "${CEPH_OPTS[@]}" "$@" 2>"$RBD_ERRFILE" </dev/null) || RBD_RC=$?
}

# Extra seconds for metadata updates of an image (RBD_LOCK_WAIT): librbd has
# the holder of the image's exclusive lock (a QEMU) make them. When that
# holder died, librbd waits until Ceph drops its watch (the OSDs'
# osd_client_watch_timeout, 30 s by default), then breaks its lock and
# blocklists it; Ceph's own op timeouts do not cut that wait short.
LOCK_WAIT=35

# Like rbd_run, for commands that move data (copy, remove): their length
# grows with the image, so only Ceph's per-operation timeouts bound them
# (and the caller's timeout for the whole script).
rbd_run_long() {
    rbd_what "$@"
    RBD_RC=0
    RBD_OUT=$(rbd "${CEPH_OPTS[@]}" "$@" 2>"$RBD_ERRFILE" </dev/null) || RBD_RC=$?
}

# Runs rbd (rbd_run) and dies with rbd_fail unless it succeeds.
rbd_ok() {
    rbd_run "$@"
    [ "$RBD_RC" = 0 ] || rbd_fail
}

# rbd's stderr, without blank lines and the admin-socket noise.
rbd_stderr() {
    grep -v -e '^[[:space:]]*$' -e 'AdminSocket' "$RBD_ERRFILE" 2>/dev/null || true
}

# Whether rbd's stderr of the last command matches the extended regex $1.
rbd_said() {
    rbd_stderr | grep -q -i -E -- "$1"
}

# Whether the last rbd command failed because the image (not its pool or
# namespace) does not exist.
image_missing() {
    [ "$RBD_RC" = 2 ] && rbd_said "error opening image" \
        && ! rbd_said "error opening pool|namespace '.*' does not exist"
}

# Dies with what the last rbd command's failure means and what to do. rbd
# exits with the errno of the failure (2 ENOENT, 17 EEXIST, 110 ETIMEDOUT, ...);
# its own words go to the log first.
rbd_fail() {
    local last
    rbd_stderr | tail -n 8 | sed 's/^/  | /' >&2
    last=$(rbd_stderr | tail -n 1)
    case "$RBD_RC" in
        124|137)
            if [ "${RBD_LOCK_WAIT:-0}" -gt 0 ]; then
                die "'$RBD_WHAT' did not finish within $RBD_BOUND s: the Ceph cluster ($CLUSTER_DESC) is not answering, or the client holding image $SPEC's exclusive lock died and Ceph keeps its watch longer than $LOCK_WAIT s; check the cluster ('ceph -s', 'rbd status $SPEC'), then retry"
            fi
            die "'$RBD_WHAT' did not finish within $RBD_BOUND s: the Ceph cluster ($CLUSTER_DESC) is not answering; check that it is up ('ceph -s') and reachable from this node, or raise the 'timeout' parameter" ;;
        110)
            die "the Ceph cluster ($CLUSTER_DESC) did not answer within $TIMEOUT s ('$RBD_WHAT': connection timed out): check that its monitors and OSDs are up ('ceph -s') and reachable from this node, or raise the 'timeout' parameter" ;;
        2)
            if rbd_said "error opening pool"; then
                die "pool '$POOL' does not exist in the Ceph cluster ($CLUSTER_DESC): create it ('ceph osd pool create $POOL' then 'rbd pool init $POOL') or pass the right one with -p pool=NAME"
            elif rbd_said "namespace '.*' does not exist"; then
                die "namespace '$NAMESPACE' does not exist in pool '$POOL': create it ('rbd namespace create --pool $POOL --namespace $NAMESPACE') or pass the right one with -p namespace=NAME"
            elif rbd_said "error opening image"; then
                die "image $SPEC does not exist"
            fi ;;
        17)
            die "image $SPEC already exists" ;;
        1|13)
            if rbd_said "permission denied|operation not permitted|auth"; then
                die "the Ceph cluster refused client.${CLIENT_ID:-admin} ('$RBD_WHAT': ${last:-permission denied}): check the 'id', the 'keyring'/'keyfile' and the client's caps"
            fi ;;
        16)
            die "image $SPEC is busy ('$RBD_WHAT': ${last:-device or resource busy})" ;;
    esac
    die "'$RBD_WHAT' failed (exit $RBD_RC) on $SPEC: ${last:-no message}"
}

# ---------------------------------------------------------- JSON

# Evaluates the Python expression $1 over the JSON document on stdin (as d;
# no output at all, as 'rbd image-meta list' prints for no keys, is {});
# prints a list one item per line. (python3 comes with ceph-common.)
json_eval() {
    python3 -c '
import json, sys
text = sys.stdin.read()
d = json.loads(text) if text.strip() else {}
r = eval(sys.argv[1])
if not isinstance(r, list):
    print(r)
elif r:
    print("\n".join(map(str, r)))
' "$1"
}

# ---------------------------------------------------------- the image

# Sets IMAGE_BYTES to the image's size, or dies (missing image: a clear error).
image_size() {
    rbd_ok info "${IMAGE_OPTS[@]}" --format=json
    IMAGE_BYTES=$(json_eval 'd["size"]' <<<"$RBD_OUT")
}

# Prints the image's watchers (clients that have it open), one per line.
image_watchers() {
    rbd_ok status "${IMAGE_OPTS[@]}" --format=json
    json_eval '[w["address"] + " (client." + str(w["client"]) + ")" for w in d.get("watchers", [])]' <<<"$RBD_OUT"
}

# Sets metadata key $1 to $2 ('--': a value may start with '-').
meta_set() { RBD_LOCK_WAIT=$LOCK_WAIT rbd_ok image-meta set "${IMAGE_OPTS[@]}" -- "$1" "$2"; }

# Removes metadata key $1; a missing key is fine.
meta_remove() {
    local RBD_LOCK_WAIT=$LOCK_WAIT
    rbd_run image-meta remove "${IMAGE_OPTS[@]}" "$1"
    if [ "$RBD_RC" = 2 ] && rbd_said "no existing metadata key"; then
        return 0
    fi
    [ "$RBD_RC" = 0 ] || rbd_fail
}

# Backslash-escapes what QEMU's legacy rbd filename treats specially.
rbd_escape() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\//\\/}
    s=${s//@/\\@}
    s=${s//:/\\:}
    s=${s//=/\\=}
    s=${s//;/\\;}
    printf '%s' "$s"
}

# The userspace URI (without the kvm: prefix): pool, namespace, image, and
# the conf and id QEMU needs to reach the same cluster as this provider.
# Never a key: QEMU finds it through the conf, as Ceph does.
kvm_uri() {
    local s
    s="rbd:$(rbd_escape "$POOL")/"
    [ -n "$NAMESPACE" ] && s+="$(rbd_escape "$NAMESPACE")/"
    s+=$(rbd_escape "$VOL_NAME")
    [ -n "$CONF" ] && s+=":conf=$(rbd_escape "$CONF")"
    [ -n "$CLIENT_ID" ] && s+=":id=$(rbd_escape "$CLIENT_ID")"
    printf '%s' "$s"
}

# Prints why QEMU, given only conf and id by the URI, would not use the key
# file this provider was told to use; prints nothing when it would (or when
# the cluster needs no key: auth_client_required without cephx). Ceph takes
# the key from 'keyfile' if set, else from the first readable file of the
# 'keyring' list, both for client.ID from the conf (or Ceph's defaults).
qemu_key_problem() {
    [ -n "$KEYRING$KEYFILE" ] || return 0
    local cc auth conf_keyfile list f
    cc=(timeout --foreground 10 ceph-conf --cluster=ceph --name="client.${CLIENT_ID:-admin}")
    [ -n "$CONF" ] && cc+=(--conf="$CONF")
    auth=$("${cc[@]}" --show-config-value auth_client_required 2>/dev/null) || return 0
    case ",${auth// /}," in
        *,cephx,*) ;;
        *) return 0 ;;
    esac
    conf_keyfile=$("${cc[@]}" --show-config-value keyfile 2>/dev/null || true)
    local where="the [client.${CLIENT_ID:-admin}] section of ${CONF:-/etc/ceph/ceph.conf}"
    if [ -n "$KEYFILE" ]; then
        [ "$(realpath -m -- "$conf_keyfile")" = "$(realpath -m -- "$KEYFILE")" ] && return 0
        echo "QEMU gets only conf and id from the URI and would not read keyfile $KEYFILE (the conf gives keyfile '${conf_keyfile:-none}'): add 'keyfile = $KEYFILE' to $where"
        return 0
    fi
    if [ -n "$conf_keyfile" ]; then
        echo "QEMU gets only conf and id from the URI and would take the key from keyfile $conf_keyfile (set in the conf), not from keyring $KEYRING: make $where name the same key"
        return 0
    fi
    list=$("${cc[@]}" --show-config-value keyring 2>/dev/null || true)
    while read -r f; do
        [ -n "$f" ] && [ -r "$f" ] || continue
        [ "$(realpath -- "$f")" = "$(realpath -- "$KEYRING")" ] && return 0
        echo "QEMU gets only conf and id from the URI and would read the key from $f (the first readable file of the conf's keyring list '$list'), not from $KEYRING: add 'keyring = $KEYRING' to $where"
        return 0
    done < <(tr ',;' '\n\n' <<<"$list" | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//')
    echo "QEMU gets only conf and id from the URI and would find no keyring (the conf's keyring list is '$list'): add 'keyring = $KEYRING' to $where"
}

# ---------------------------------------------------------- kernel rbd

# Whether the kernel can map RBD images here (rbd module loaded or loadable).
# Where it cannot (no module), access is userspace only.
kernel_rbd_available() {
    [ -d /sys/bus/rbd ] || modprobe -q rbd 2>/dev/null
}

# The kernel devices (/dev/rbdN) mapping this image's head on this node.
mapped_devices() {
    local d
    for d in /sys/bus/rbd/devices/*; do
        [ -r "$d/name" ] || continue
        [ "$(cat "$d/pool")" = "$POOL" ] || continue
        [ "$(cat "$d/pool_ns" 2>/dev/null || true)" = "$NAMESPACE" ] || continue
        [ "$(cat "$d/name")" = "$VOL_NAME" ] || continue
        [ "$(cat "$d/current_snap")" = "-" ] || continue
        echo "/dev/rbd${d##*/}"
    done
}

# Unmaps every kernel mapping of the image on this node; one that is open
# (mounted, used by a guest) is refused by the kernel: we say so.
unmap_all() {
    local dev
    for dev in $(mapped_devices); do
        rbd_run device unmap "$dev"
        if [ "$RBD_RC" != 0 ]; then
            [ "$RBD_RC" = 16 ] && die "$dev (image $SPEC) is in use on this node: stop using it (shut the guest down, unmount it), then retry"
            rbd_fail
        fi
        log "unmapped $dev"
    done
}

# ---------------------------------------------------------- open records

# Open state lives in the image's metadata, one key per node:
# extstorage.open.<node> = exclusive | shared.
OPEN_PREFIX=extstorage.open.
OPEN_KEY=$OPEN_PREFIX$NODE

# Prints "<node> <mode>" for every node that has the image open.
open_records() {
    rbd_ok image-meta list "${IMAGE_OPTS[@]}" --format=json
    json_eval '[k[len("'"$OPEN_PREFIX"'"):] + " " + v for k, v in sorted(d.items()) if k.startswith("'"$OPEN_PREFIX"'")]' <<<"$RBD_OUT"
}

# Removes this node's open record (close, and detach: Ganeti closes only
# inside a migration, and a node that detached a disk no longer uses it).
# No record, or no image any more, is success.
drop_open_record() {
    local RBD_LOCK_WAIT=$LOCK_WAIT
    rbd_run image-meta remove "${IMAGE_OPTS[@]}" "$OPEN_KEY"
    if [ "$RBD_RC" = 0 ]; then
        log "$SPEC closed on $NODE"
    elif [ "$RBD_RC" = 2 ] && rbd_said "no existing metadata key"; then
        log "$SPEC has no open record of $NODE"
    elif image_missing; then
        log "image $SPEC does not exist: no open record to remove"
    else
        rbd_fail
    fi
}

# Checks a VOL_NAME-like name (VOL_SNAPSHOT_NAME): letters, digits, _ . + -
check_volume_name() {
    [[ $2 =~ ^[A-Za-z0-9_+.][-A-Za-z0-9_+.]*$ ]] \
        || die "$1 '$2' may only hold letters, digits and '_ . + -' (not starting with '-')"
}
