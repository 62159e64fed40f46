#!/usr/bin/env bash
# Installs what the tests need, then runs cargo fmt --check, clippy and every test in the workspace.
#
# Usage: scripts/test.sh [extra cargo test arguments, e.g. --test harness_smoke]
# Every step runs even if an earlier one failed, so one run shows all
# problems; the exit status is non-zero if any step failed. Tests are never
# skipped for a missing tool: what is missing gets installed here, and the
# harness fails a test whose tool is absent.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

log "checking tools"
need_test_pkgs
need_client_drivers
need_exporter
need_rust_components rustfmt clippy

test_log=$(mktemp)
trap 'rm -f "$test_log"' EXIT

results=()
failed=0

# step NAME COMMAND...: runs it, records PASS/FAIL and how long it took.
step() {
    local name=$1 start rc
    shift
    log "$name: $*"
    start=$SECONDS
    set +e
    "$@"
    rc=$?
    set -e
    if [ "$rc" -eq 0 ]; then
        results+=("$(printf '%-8s PASS  %4ss' "$name" $((SECONDS - start)))")
    else
        results+=("$(printf '%-8s FAIL  %4ss  (exit %s)' "$name" $((SECONDS - start)) "$rc")")
        failed=1
    fi
}

# Keeps cargo test's output for the summary while still streaming it.
# shellcheck disable=SC2317  # called indirectly, through step
cargo_test() {
    cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$test_log"
    return "${PIPESTATUS[0]}"
}

# The protocol crate stays sans-IO because nothing in its dependency tree can do I/O:
# fail if an I/O or logging crate ever enters it (dev-dependencies are not counted).
# One exception: on aarch64 sha2's cpufeatures reads CPU features through libc (getauxval);
# libc is allowed when cpufeatures is all that pulls it in.
# shellcheck disable=SC2317  # called indirectly, through step
proto_sans_io() {
    local tree banned users
    tree=$(cargo tree -p pgbouncers-proto -e normal --prefix none) || return 1
    banned=$(grep -E '^(mio|nix|libc|socket2|signal-hook[a-z0-9-]*|log) v' <<<"$tree" | sort -u || true)
    if grep -q '^libc v' <<<"$banned"; then
        users=$(cargo tree -p pgbouncers-proto -e normal -i libc --depth 1 --prefix none | tail -n +2)
        if ! grep -qv '^cpufeatures v' <<<"$users"; then
            banned=$(grep -v '^libc v' <<<"$banned" || true)
        fi
    fi
    if [ -n "$banned" ]; then
        echo "pgbouncers-proto must not depend on these (see worker/proto/Cargo.toml):"
        echo "$banned"
        return 1
    fi
    echo "pgbouncers-proto: no mio, nix, libc, socket2, signal-hook or log in its tree"
}

# The loop's methods never call back into a chain they are part of (scripts/loop_cycles.py);
# its self-test first, so that the check is seen to catch a planted cycle.
# shellcheck disable=SC2317  # called indirectly, through step
loop_calls() {
    python3 scripts/loop_cycles.py --self-test && python3 scripts/loop_cycles.py
}

step fmt cargo fmt --all -- --check
step sans-io proto_sans_io
step modules python3 scripts/module_cycles.py
step calls loop_calls
step clippy cargo clippy --workspace --all-targets -- -D warnings
step test cargo_test "$@"
# The benchmark's smoke run, so scripts/bench.sh cannot rot (it is not a measurement).
step bench scripts/bench.sh --quick

# Totals over every test binary's "test result:" line.
read -r passed failed_tests ignored < <(
    awk '/^test result:/ {
            for (i = 1; i <= NF; i++) {
                if ($(i) ~ /^passed;?$/)  p += $(i - 1)
                if ($(i) ~ /^failed;?$/)  f += $(i - 1)
                if ($(i) ~ /^ignored;?$/) s += $(i - 1)
            }
        }
        END { printf "%d %d %d\n", p, f, s }' "$test_log"
)

echo
echo "==================== summary ===================="
for line in "${results[@]}"; do
    echo "  $line"
done
if grep -q '^test .* FAILED$' "$test_log"; then
    echo "  failed tests:"
    grep '^test .* FAILED$' "$test_log" | sed -e 's/^test /    /' -e 's/ \.\.\. FAILED$//'
fi
if [ "$failed" -ne 0 ]; then
    echo "  RESULT: FAILED"
else
    echo "  RESULT: OK"
fi
echo "tests: ${passed} passed, ${failed_tests} failed, ${ignored} skipped"
exit "$failed"
