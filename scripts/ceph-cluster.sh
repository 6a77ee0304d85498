#!/usr/bin/env bash
# Starts or stops a throwaway single-node Ceph cluster (one mon, one memstore
# OSD, pool "rbd") entirely in userspace, for tests that need a real RBD.
#
# Usage:
#   scripts/ceph-cluster.sh start DIR   create DIR/ceph.conf and run mon + osd
#   scripts/ceph-cluster.sh stop DIR    kill the mon and osd started in DIR
#
# After `start`, DIR/ceph.conf is the config to pass (`rbd -c DIR/ceph.conf`,
# QEMU `rbd:rbd/IMAGE:conf=DIR/ceph.conf`). Nothing outside DIR is written.
# The mon listens on 127.0.0.1:PORT (CEPH_MON_PORT, default: a free port
# chosen from 3300 upwards), so several clusters can coexist.
# Follows docs/test-environment.md. Exit status is non-zero, with the reason
# on stderr and the tail of the daemon logs, if the cluster does not come up.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
dir=$2

started=0
die() {
    echo "ceph-cluster: $*" >&2
    # Do not leave half a cluster running.
    [ "$started" = 1 ] && stop
    for f in "$dir"/log/*.log; do
        [ -f "$f" ] || continue
        echo "---- tail of $f" >&2
        tail -n 20 "$f" >&2 || true
    done
    exit 1
}

stop() {
    for name in osd.0 mon.a; do
        pidfile="$dir/run/$name.pid"
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 1 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$pidfile"
    done
}

port_free() {
    ! ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
}

start() {
    for p in ceph-mon ceph-osd ceph monmaptool rbd; do
        command -v "$p" >/dev/null || die "'$p' not found: run scripts/install-deps.sh (packages ceph-mon ceph-osd ceph-common)"
    done
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [ -e "$dir/ceph.conf" ] && die "$dir already holds a cluster; stop it and use a fresh directory"
    mkdir -p "$dir/run" "$dir/log" "$dir/mon" "$dir/osd"

    port=${CEPH_MON_PORT:-}
    if [ -z "$port" ]; then
        port=3300
        while ! port_free "$port"; do
            port=$((port + 1))
            [ "$port" -lt 3400 ] || die "no free port in 3300..3399 for the monitor"
        done
    fi
    fsid=$(cat /proc/sys/kernel/random/uuid)
    conf="$dir/ceph.conf"
    cat >"$conf" <<CONF
[global]
fsid = $fsid
mon host = v2:127.0.0.1:$port
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
ms bind ipv6 = false
public addr = 127.0.0.1
cluster addr = 127.0.0.1
run dir = $dir/run
admin socket = $dir/run/\$cluster-\$name.asok
log file = $dir/log/\$cluster-\$name.log
pid file = $dir/run/\$name.pid
mon data = $dir/mon/\$cluster-\$id
osd data = $dir/osd/\$cluster-\$id
keyring = /dev/null
osd objectstore = memstore

[osd]
osd objectstore = memstore
memstore device bytes = 2147483648
CONF

    started=1
    monmaptool --create --add a "v2:127.0.0.1:$port" --fsid "$fsid" "$dir/monmap" >/dev/null \
        || die "monmaptool failed"
    ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring /dev/null \
        || die "ceph-mon --mkfs failed"
    ceph-mon -c "$conf" -i a || die "ceph-mon did not start"
    c() { timeout 60 ceph -c "$conf" --connect-timeout 30 "$@"; }
    id=$(c osd create) || die "'ceph osd create' failed (monitor not reachable on 127.0.0.1:$port?)"
    [ "$id" = 0 ] || die "'ceph osd create' returned '$id', expected 0"
    mkdir -p "$dir/osd/ceph-0"
    ceph-osd -c "$conf" -i 0 --mkfs >/dev/null 2>&1 || die "ceph-osd --mkfs failed"
    c osd crush add osd.0 1 root=default host=localhost >/dev/null 2>&1 \
        || die "'ceph osd crush add' failed"
    ceph-osd -c "$conf" -i 0 >/dev/null 2>&1 || die "ceph-osd did not start"
    c osd pool create rbd 8 >/dev/null 2>&1 || die "'ceph osd pool create rbd' failed"
    timeout 120 rbd -c "$conf" pool init rbd || die "'rbd pool init rbd' failed (is the OSD up?)"
    echo "$conf"
}

case "$cmd" in
start) start ;;
stop) stop ;;
*) usage ;;
esac
