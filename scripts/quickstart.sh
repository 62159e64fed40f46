#!/usr/bin/env bash
# Runs pgbouncers for real on this machine: a throwaway PostgreSQL, the pooler with 2 workers,
# a short pgbench through it, then how to connect and how to stop.
#
# Usage: scripts/quickstart.sh          start everything (again) and leave it running
#        scripts/quickstart.sh stop     stop everything and remove the throwaway files
#
# Environment: QS_DIR (default /tmp/pgbouncers-quickstart), QS_PORT (pooler, default 6432),
# QS_PG_PORT (PostgreSQL, default 15433).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

QS_DIR=${QS_DIR:-/tmp/pgbouncers-quickstart}
QS_PORT=${QS_PORT:-6432}
QS_PG_PORT=${QS_PG_PORT:-15433}
ROOT=$(pwd)

# Runs a PostgreSQL program as the postgres user when we are root (initdb refuses root).
as_pg() {
    if is_root; then
        setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
    else
        "$@"
    fi
}

stop_all() {
    if [ -f "$QS_DIR/pgbouncers.pid" ]; then
        kill -TERM "$(cat "$QS_DIR/pgbouncers.pid")" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$(cat "$QS_DIR/pgbouncers.pid")" 2>/dev/null || break
            sleep 0.1
        done
        rm -f "$QS_DIR/pgbouncers.pid"
    fi
    if [ -d "$QS_DIR/pg" ]; then
        as_pg "$PGBIN/pg_ctl" -D "$QS_DIR/pg" -m fast -w stop >/dev/null 2>&1 || true
    fi
}

log "checking tools"
need_test_pkgs
PGBIN=$(pg_bindir) || die "no PostgreSQL server binaries found"

if [ "${1:-}" = "stop" ]; then
    stop_all
    rm -rf "$QS_DIR"
    log "stopped and removed $QS_DIR"
    exit 0
fi

log "building pgbouncers (release)"
cargo build --release --quiet
BIN=$ROOT/target/release/pgbouncers

stop_all
rm -rf "$QS_DIR"
mkdir -p "$QS_DIR"
chmod 755 "$QS_DIR"
if is_root; then chown postgres:postgres "$QS_DIR"; fi

log "starting a throwaway PostgreSQL on 127.0.0.1:$QS_PG_PORT"
as_pg "$PGBIN/initdb" -D "$QS_DIR/pg" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    --no-sync >"$QS_DIR/initdb.log" 2>&1 || die "initdb failed: see $QS_DIR/initdb.log"
cat >>"$QS_DIR/pg/postgresql.conf" <<EOF
port = $QS_PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$QS_DIR'
max_connections = 100
fsync = off
EOF
as_pg "$PGBIN/pg_ctl" -D "$QS_DIR/pg" -l "$QS_DIR/postgresql.log" -w start >/dev/null ||
    die "PostgreSQL did not start: see $QS_DIR/postgresql.log"
psql -XqAt -h "$QS_DIR" -p "$QS_PG_PORT" -U postgres -c "CREATE ROLE demo LOGIN PASSWORD 'demopw'" >/dev/null
psql -XqAt -h "$QS_DIR" -p "$QS_PG_PORT" -U postgres -c "CREATE DATABASE demo OWNER demo" >/dev/null
PGPASSWORD=demopw pgbench -q -i -s 1 -h 127.0.0.1 -p "$QS_PG_PORT" -U demo demo >/dev/null 2>&1

cat >"$QS_DIR/userlist.txt" <<EOF
"demo" "demopw"
EOF
cat >"$QS_DIR/pgbouncers.yaml" <<EOF
# Written by scripts/quickstart.sh; see etc/pgbouncers.yaml for every setting.
listen_addr: 127.0.0.1
listen_port: $QS_PORT
workers: 2
pool_mode: transaction
default_pool_size: 10
max_client_conn: 1000
auth_type: scram-sha-256
auth_file: $QS_DIR/userlist.txt
log_connections: false
log_disconnections: false
databases:
  demo:
    host: 127.0.0.1
    port: $QS_PG_PORT
EOF

log "starting pgbouncers on 127.0.0.1:$QS_PORT with 2 workers"
"$BIN" -c "$QS_DIR/pgbouncers.yaml" >"$QS_DIR/pgbouncers.log" 2>&1 &
echo $! >"$QS_DIR/pgbouncers.pid"
for _ in $(seq 50); do
    if PGPASSWORD=demopw psql -XqAt -h 127.0.0.1 -p "$QS_PORT" -U demo -c "SELECT 1" demo >/dev/null 2>&1; then
        break
    fi
    sleep 0.2
done
PGPASSWORD=demopw psql -XqAt -h 127.0.0.1 -p "$QS_PORT" -U demo -c "SELECT 1" demo >/dev/null ||
    die "pgbouncers is not answering: see $QS_DIR/pgbouncers.log"

log "pgbench -S -c 20 -T 5 through pgbouncers"
PGPASSWORD=demopw pgbench -n -S -c 20 -j 2 -T 5 -h 127.0.0.1 -p "$QS_PORT" -U demo demo 2>&1 |
    grep -E "number of (transactions actually processed|failed transactions)|tps ="

log "processes"
ps -o pid,args --ppid "$(cat "$QS_DIR/pgbouncers.pid")" --pid "$(cat "$QS_DIR/pgbouncers.pid")"

cat <<EOF

pgbouncers is running (log: $QS_DIR/pgbouncers.log, config: $QS_DIR/pgbouncers.yaml).
Connect:  PGPASSWORD=demopw psql -h 127.0.0.1 -p $QS_PORT -U demo demo
Reload:   kill -HUP $(cat "$QS_DIR/pgbouncers.pid")
Stop:     scripts/quickstart.sh stop
EOF
