#!/usr/bin/env bash
# Builds and runs the cargo-fuzz targets in fuzz/ (docs/reliability.md).
#
#   scripts/fuzz.sh --list                the targets
#   scripts/fuzz.sh --build               build every target
#   scripts/fuzz.sh --check [N]           every target over its committed seeds
#                                         plus N new inputs (default 20000),
#                                         fixed RNG seed: what scripts/test.sh runs
#   scripts/fuzz.sh TARGET [SECONDS]      fuzz TARGET for SECONDS (default 60)
#   scripts/fuzz.sh TARGET --runs N       fuzz TARGET for N executions
#
# Anything after `--` goes to libFuzzer (e.g. `-- -seed=7 -max_len=8192`).
# A run of one target keeps its corpus in fuzz/corpus/TARGET (not committed)
# and reads the committed seeds in fuzz/seeds/TARGET. Crashes and hangs
# (an input running longer than 10 s) are saved in fuzz/artifacts/TARGET/,
# the script exits non-zero, and the log shows how to reproduce them
# (`cargo fuzz run TARGET fuzz/artifacts/TARGET/crash-...`, with
# RUSTC_BOOTSTRAP=1).
#
# Environment:
#   FUZZ_SANITIZER  address (default) or none
#
# cargo-fuzz is installed when missing. Stable Rust is enough:
# RUSTC_BOOTSTRAP=1 lets it accept the nightly-only flags cargo-fuzz passes
# (-Zsanitizer, -Cpasses=sancov-module), and the stable toolchain ships the
# AddressSanitizer runtime.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
SANITIZER="${FUZZ_SANITIZER:-address}"
export RUSTC_BOOTSTRAP=1

usage() {
    sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
}

ensure_cargo_fuzz() {
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
        cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
    fi
}

targets() {
    cargo fuzz list
}

build() {
    cargo fuzz build --sanitizer "$SANITIZER" "$@"
}

# Runs TARGET with libFuzzer arguments; keeps the log in $log, prints one
# summary line, and returns libFuzzer's status.
run_target() {
    local target=$1 log=$2
    shift 2
    local start end status=0
    start=$(date +%s)
    # vhost_user_protocol keeps one server (and its threads) for the whole
    # process: LeakSanitizer reports the buffers of threads that outlive an
    # input, which are not leaks.
    local extra=() asan="${ASAN_OPTIONS:-}"
    if [ "$target" = vhost_user_protocol ]; then
        extra=(-detect_leaks=0)
        asan="${asan:+$asan:}detect_leaks=0"
    fi
    ASAN_OPTIONS="$asan" cargo fuzz run --sanitizer "$SANITIZER" "$target" "$@" \
        ${extra[@]+"${extra[@]}"} >"$log" 2>&1 || status=$?
    end=$(date +%s)
    local execs corpus rate rss
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
    corpus=$(grep -o 'corp: [0-9]*/[0-9a-zA-Z]*' "$log" | tail -1 | cut -d' ' -f2)
    if [ "$status" = 0 ]; then
        printf '%-20s ok      %10s execs %6ss %7s execs/s  corpus %-10s rss %s MB\n' \
            "$target" "${execs:-?}" "$((end - start))" "${rate:-?}" "${corpus:-?}" "${rss:-?}"
    else
        printf '%-20s FAILED  after %ss (exit %s); the end of %s:\n' \
            "$target" "$((end - start))" "$status" "$log"
        grep -A12 -m1 -e 'panicked at' -e 'ERROR: libFuzzer' -e '^error' "$log" || true
        grep -v -e '^#[0-9]' -e 'NEW_FUNC' "$log" | tail -12
    fi
    return "$status"
}

mode=${1:-}
[ -n "$mode" ] || usage
shift
libfuzzer_args=()
args=()
while [ $# -gt 0 ]; do
    if [ "$1" = -- ]; then
        shift
        libfuzzer_args=("$@")
        break
    fi
    args+=("$1")
    shift
done

ensure_cargo_fuzz
case "$mode" in
    -h | --help) usage ;;
    --list) targets ;;
    --build) build ;;
    --check)
        runs=${args[0]:-20000}
        build
        work=$(mktemp -d)
        trap 'rm -rf "$work"' EXIT
        failed=0
        for t in $(targets); do
            mkdir -p "$work/$t"
            run_target "$t" "$work/$t.log" "$work/$t" "fuzz/seeds/$t" -- \
                -runs="$runs" -seed=1 -timeout=10 -print_final_stats=1 \
                ${libfuzzer_args[@]+"${libfuzzer_args[@]}"} || failed=1
        done
        exit "$failed"
        ;;
    -*) usage ;;
    *)
        target=$mode
        all=$(targets)
        if ! grep -qx -- "$target" <<<"$all"; then
            echo "fuzz.sh: no target $target; the targets are: $(tr '\n' ' ' <<<"$all")" >&2
            exit 2
        fi
        case "${args[0]:-60}" in
            --runs) limit=(-runs="${args[1]:?--runs needs a number}") ;;
            *[!0-9]*) usage ;;
            *) limit=(-max_total_time="${args[0]:-60}") ;;
        esac
        build "$target"
        mkdir -p "fuzz/corpus/$target" fuzz/logs
        log="fuzz/logs/$target-$(date +%Y%m%d-%H%M%S).log"
        run_target "$target" "$log" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
            "${limit[@]}" -timeout=10 -print_final_stats=1 \
            ${libfuzzer_args[@]+"${libfuzzer_args[@]}"}
        echo "log: $log"
        ;;
esac
