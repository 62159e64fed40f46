#!/usr/bin/env bash
# Benchmarks pgbouncers side by side with PgBouncer on this machine (see scripts/bench.py).
#
# Usage: scripts/bench.sh [--quick] [--pairs N] [--secs S] [--idle 2000,10000] [--callgrind] [--perf]
#                        [--only select,prepared,many,rate,latency,login,tls,idle,proxy,workers]
#                        [--pgbouncer PATH] [--pgbouncer2 PATH|none]
# Installs what is missing (PostgreSQL, PgBouncer, HAProxy, asyncpg, openssl), builds the release
# binary and the null relay (the cost floor), then runs every scenario interleaved and prints a
# table of medians and ratios. The anchor is the newest PgBouncer: the 1.25 that
# ../shared/bench/build-pgbouncer.sh builds into /tmp/pgbouncer-1.25 (or $PGBOUNCER_125, or
# --pgbouncer), else Debian's 1.18; with 1.25 as the anchor, Debian's 1.18 is a second column.
# The TLS scenarios give both poolers one throwaway certificate and client_tls_sslmode = require.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

need_test_pkgs
if ! python3 -c 'import asyncpg' 2>/dev/null; then
    python3 -m pip install -q --disable-pip-version-check asyncpg ||
        python3 -m pip install -q --disable-pip-version-check --break-system-packages asyncpg ||
        die "pip install asyncpg failed"
fi
have openssl || apt_install openssl
if [[ " $* " == *" --callgrind "* ]] && ! have valgrind; then apt_install valgrind; fi
if [[ " $* " == *" --perf "* ]] && ! have perf; then apt_install linux-perf; fi
cargo build --release --quiet
# The cost floor: a 1:1 forwarder with no parsing (worker/examples/null_relay.rs).
cargo build --release --quiet -p pgbouncers-worker --example null_relay
# 10,000 idle clients need descriptors on both sides.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# A fresh cluster each run: the previous one may be from another version of the script.
export BENCH_DIR=${BENCH_DIR:-/tmp/pgbouncers-bench}
rm -rf "$BENCH_DIR"
exec python3 scripts/bench.py "$@"
