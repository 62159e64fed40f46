#!/usr/bin/env bash
# Builds and runs every cargo-fuzz target for a while, one after the other, and reports execs, coverage and crashes.
#
# Usage: scripts/fuzz.sh SECONDS [TARGET...]
#   SECONDS  how long each target runs (libFuzzer -max_total_time)
#   TARGET   only these targets (default: every target in fuzz/Cargo.toml)
# Environment: FUZZ_ARGS adds libFuzzer options (e.g. FUZZ_ARGS="-max_len=8192", or
#   FUZZ_ARGS="-runs=10000000" to stop each target at ten million executions).
#   FUZZ_KEEP=1 merges what the run found into the committed corpus afterwards.
#   FUZZ_SANITIZER=none builds without AddressSanitizer (cargo fuzz -s): several times
#   more executions per second; the targets are safe Rust, so ASan finds little there.
#
# The committed seeds in fuzz/corpus/<target> are read: each run grows a scratch
# corpus in a temporary directory that is removed afterwards. With FUZZ_KEEP=1 the
# inputs of the scratch corpus that add coverage are merged into fuzz/corpus/<target>
# (libFuzzer -merge=1), so the next run starts where this one ended.
# Crash inputs land in fuzz/artifacts/<target>/ (git-ignored). The exit status is
# non-zero when any target crashed, leaked, timed out or failed to run.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

if [ $# -lt 1 ] || ! [[ $1 =~ ^[0-9]+$ ]]; then
    die "usage: scripts/fuzz.sh SECONDS [TARGET...]"
fi
seconds=$1
shift

# cargo-fuzz needs nightly-only flags (-Zsanitizer); RUSTC_BOOTSTRAP lets the stable
# toolchain take them, so no nightly toolchain is required.
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cd fuzz && cargo fuzz list)
fi

log "building ${#targets[@]} fuzz targets"
san=${FUZZ_SANITIZER:-address}
(cd fuzz && cargo fuzz build -s "$san")

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

failed=0
summary=()
for t in "${targets[@]}"; do
    [ -d "fuzz/corpus/$t" ] || die "no seed corpus fuzz/corpus/$t"
    mkdir -p "$scratch/$t"
    logfile="$scratch/$t.log"
    log "fuzzing $t for ${seconds}s"
    rc=0
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of options
    (cd fuzz && cargo fuzz run -s "$san" "$t" "$scratch/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 ${FUZZ_ARGS:-}) \
        >"$logfile" 2>&1 || rc=$?
    # libFuzzer's last status line looks like "#123456 DONE cov: 812 ft: 2290 corp: ...".
    last=$(grep -E '^#[0-9]+' "$logfile" | tail -n 1 || true)
    execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$logfile" | grep -oE '[0-9]+$' || true)
    cov=$(grep -oE 'cov: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || true)
    ft=$(grep -oE 'ft: [0-9]+' <<<"$last" | grep -oE '[0-9]+' || true)
    corp=$(grep -oE 'corp: [0-9]+/[0-9]+[a-zA-Z]*' <<<"$last" | cut -d' ' -f2 || true)
    artifact=$(grep -oE 'Test unit written to [^ ]+' "$logfile" | tail -n 1 | cut -d' ' -f5 || true)
    status=ok
    if [ "$rc" -ne 0 ] || [ -n "$artifact" ]; then
        status=FAILED
        failed=1
        # Keep the log next to the artifact for whoever picks it up.
        mkdir -p "fuzz/artifacts/$t"
        cp "$logfile" "fuzz/artifacts/$t/last-failure.log"
        grep -E 'panicked at|ERROR: (libFuzzer|AddressSanitizer)|^SUMMARY' "$logfile" | head -n 4 >&2 || true
    fi
    if [ "$status" = ok ] && [ "${FUZZ_KEEP:-0}" = 1 ]; then
        before=$(find "fuzz/corpus/$t" -type f | wc -l)
        (cd fuzz && cargo fuzz run -s "$san" "$t" "corpus/$t" "$scratch/$t" -- -merge=1) \
            >"$scratch/$t.merge.log" 2>&1 || die "merging the corpus of $t failed"
        log "$t: corpus $before -> $(find "fuzz/corpus/$t" -type f | wc -l) files"
    fi
    line=$(printf '%-14s %-6s execs=%-10s cov=%-6s ft=%-6s corpus=%-12s artifact=%s' \
        "$t" "$status" "${execs:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "${artifact:-none}")
    summary+=("$line")
    printf '%s\n' "$line"
done

printf '\n==> summary (%ss per target)\n' "$seconds"
printf '%s\n' "${summary[@]}"
if [ "$failed" -ne 0 ]; then
    die "some fuzz targets failed; inputs and logs are in fuzz/artifacts/"
fi
