#!/usr/bin/env bash
# The reference deployment of docs/DEPLOY.md on one machine, with 127.0.0.x standing for hosts:
# a PostgreSQL primary (127.0.0.11) and a streaming standby made with pg_basebackup (127.0.0.12),
# three peered pgbouncers hosts (127.0.0.2, .3, .4; 2 workers each) and one HAProxy
# (127.0.0.1) that round-robins clients over them with send-proxy-v2 and PROXY health checks.
# Database `demo` is read-write (it follows the primary), `demo_ro` prefers the standby.
#
# Usage: scripts/cluster.sh up               start it all (again), then run `bench 5`
#        scripts/cluster.sh bench [SECONDS]  pgbench (TPC-B, 20 clients) through HAProxy
#        scripts/cluster.sh switchover       promote the standby, stop the old primary
#        scripts/cluster.sh down             stop everything and remove CL_DIR
#
# Environment: CL_DIR (default /tmp/pgbouncers-cluster), CL_PORT (HAProxy, default 6432),
# CL_POOLER_PORT (each pooler host, default 6433), CL_PG_PORT (both PostgreSQL servers,
# default 15434), CL_METRICS_PORT (each pooler host's /metrics, default 9127), CL_BIN (the
# pgbouncers binary; default: build target/release/pgbouncers).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

CL_DIR=${CL_DIR:-/tmp/pgbouncers-cluster}
CL_PORT=${CL_PORT:-6432}
CL_POOLER_PORT=${CL_POOLER_PORT:-6433}
CL_PG_PORT=${CL_PG_PORT:-15434}
CL_METRICS_PORT=${CL_METRICS_PORT:-9127}
HOSTS=(127.0.0.2 127.0.0.3 127.0.0.4)
PRIMARY=127.0.0.11
STANDBY=127.0.0.12
WORKERS=2
# Per pooler host, all its workers together: HOSTS x MAX_DB_CONNECTIONS must stay below
# PostgreSQL's max_connections minus its reserved slots (see docs/DEPLOY.md, "Sizing").
MAX_DB_CONNECTIONS=20
PG_MAX_CONNECTIONS=100

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; }

# Runs a PostgreSQL program as the postgres user when we are root (initdb refuses root).
as_pg() {
    if is_root; then
        setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
    else
        "$@"
    fi
}

pg_ctl_() { as_pg "$PGBIN/pg_ctl" "$@"; }

stop_all() {
    local f
    if [ -f "$CL_DIR/haproxy.pid" ]; then
        kill -TERM "$(cat "$CL_DIR/haproxy.pid")" 2>/dev/null || true
        rm -f "$CL_DIR/haproxy.pid"
    fi
    for f in "$CL_DIR"/pooler-*.pid; do
        [ -f "$f" ] || continue
        kill -INT "$(cat "$f")" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$(cat "$f")" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$(cat "$f")" 2>/dev/null || true
        rm -f "$f"
    done
    for d in primary standby; do
        if [ -f "$CL_DIR/$d/postmaster.pid" ]; then
            pg_ctl_ -D "$CL_DIR/$d" -m immediate -w stop >/dev/null 2>&1 || true
        fi
    done
}

# psql as the superuser over the Unix socket of server $1 (primary or standby).
pg_sql() { psql -XqAt -h "$CL_DIR/sock-$1" -p "$CL_PG_PORT" -U postgres -c "$2"; }

# Prints pgbench's summary lines for a run of $1 seconds through HAProxy.
bench() {
    local secs=${1:-5}
    log "pgbench -c 20 -j 2 -T $secs (TPC-B: writes) through HAProxy 127.0.0.1:$CL_PORT"
    PGPASSWORD=demopw pgbench -n -c 20 -j 2 -T "$secs" -h 127.0.0.1 -p "$CL_PORT" -U demo demo 2>&1 |
        grep -E "number of (transactions actually processed|failed transactions)|tps =|aborted"
    log "pgbench -S -c 20 -j 2 -T $secs on demo_ro (reads, prefer-standby)"
    PGPASSWORD=demopw pgbench -n -S -c 20 -j 2 -T "$secs" -h 127.0.0.1 -p "$CL_PORT" -U demo demo_ro 2>&1 |
        grep -E "number of (transactions actually processed|failed transactions)|tps =|aborted"
}

case "${1:-}" in
up | down | switchover) ;;
bench)
    bench "${2:-5}"
    exit 0
    ;;
-h | --help)
    usage
    exit 0
    ;;
*)
    usage >&2
    exit 2
    ;;
esac

need_test_pkgs
PGBIN=$(pg_bindir) || die "no PostgreSQL server binaries found"

if [ "$1" = down ]; then
    stop_all
    rm -rf "$CL_DIR"
    log "stopped and removed $CL_DIR"
    exit 0
fi

if [ "$1" = switchover ]; then
    log "promoting the standby ($STANDBY) and stopping the old primary ($PRIMARY)"
    start=$(date +%s.%N)
    pg_ctl_ -D "$CL_DIR/primary" -m fast -w stop >/dev/null
    pg_ctl_ -D "$CL_DIR/standby" -w promote >/dev/null
    for _ in $(seq 100); do
        if PGPASSWORD=demopw psql -XqAt -h 127.0.0.1 -p "$CL_PORT" -U demo demo \
            -c "CREATE TEMP TABLE w(x int); INSERT INTO w VALUES (1)" >/dev/null 2>&1; then
            break
        fi
        sleep 0.2
    done
    end=$(date +%s.%N)
    PGPASSWORD=demopw psql -XqAt -h 127.0.0.1 -p "$CL_PORT" -U demo demo \
        -c "SELECT 'writes go to ' || inet_server_addr() || ' again, in recovery: ' || pg_is_in_recovery()" ||
        die "no write through HAProxy after the switchover: see $CL_DIR/pooler-*.log"
    log "writes through HAProxy succeeded $(awk "BEGIN { printf \"%.1f\", $end - $start }") s after the old primary stopped"
    exit 0
fi

if [ -n "${CL_BIN:-}" ]; then
    BIN=$CL_BIN
else
    log "building pgbouncers (release)"
    cargo build --release --quiet
    BIN=$(pwd)/target/release/pgbouncers
fi

stop_all
rm -rf "$CL_DIR"
mkdir -p "$CL_DIR/sock-primary" "$CL_DIR/sock-standby"
chmod 755 "$CL_DIR"
if is_root; then chown -R postgres:postgres "$CL_DIR"; fi

log "PostgreSQL primary on $PRIMARY:$CL_PG_PORT"
as_pg "$PGBIN/initdb" -D "$CL_DIR/primary" -U postgres --auth-local=trust \
    --auth-host=scram-sha-256 --no-sync >"$CL_DIR/initdb.log" 2>&1 ||
    die "initdb failed: see $CL_DIR/initdb.log"
cat >>"$CL_DIR/primary/postgresql.conf" <<EOF
port = $CL_PG_PORT
listen_addresses = '$PRIMARY'
unix_socket_directories = '$CL_DIR/sock-primary'
max_connections = $PG_MAX_CONNECTIONS
fsync = off
EOF
# The first matching line wins: these replace initdb's.
cat >"$CL_DIR/primary/pg_hba.conf" <<EOF
local all all trust
local replication all trust
# The standby's stream (a throwaway cluster: no password), and the poolers.
host replication postgres 127.0.0.0/8 trust
host all all 127.0.0.0/8 scram-sha-256
EOF
pg_ctl_ -D "$CL_DIR/primary" -l "$CL_DIR/primary.log" -w start >/dev/null ||
    die "the primary did not start: see $CL_DIR/primary.log"
pg_sql primary "CREATE ROLE demo LOGIN PASSWORD 'demopw'" >/dev/null
pg_sql primary "CREATE DATABASE demo OWNER demo" >/dev/null
PGPASSWORD=demopw pgbench -q -i -s 1 -h "$PRIMARY" -p "$CL_PG_PORT" -U demo demo >/dev/null 2>&1 ||
    die "pgbench -i on the primary failed"

log "streaming standby on $STANDBY:$CL_PG_PORT (pg_basebackup -R)"
as_pg "$PGBIN/pg_basebackup" -h "$PRIMARY" -p "$CL_PG_PORT" -U postgres -D "$CL_DIR/standby" \
    -R -X stream -c fast -w >"$CL_DIR/basebackup.log" 2>&1 </dev/null ||
    die "pg_basebackup failed: see $CL_DIR/basebackup.log"
cat >>"$CL_DIR/standby/postgresql.conf" <<EOF
listen_addresses = '$STANDBY'
unix_socket_directories = '$CL_DIR/sock-standby'
EOF
pg_ctl_ -D "$CL_DIR/standby" -l "$CL_DIR/standby.log" -w start >/dev/null ||
    die "the standby did not start: see $CL_DIR/standby.log"
[ "$(pg_sql standby "SELECT pg_is_in_recovery()")" = t ] || die "the standby is not in recovery"

cat >"$CL_DIR/userlist.txt" <<EOF
"demo" "demopw"
"admin" "adminpw"
EOF
peers=""
for i in "${!HOSTS[@]}"; do
    peers+="  $((i + 1)): {host: ${HOSTS[$i]}, port: $CL_POOLER_PORT}"$'\n'
done
for i in "${!HOSTS[@]}"; do
    host=${HOSTS[$i]}
    cat >"$CL_DIR/pooler-$((i + 1)).yaml" <<EOF
# Written by scripts/cluster.sh: pooler host $((i + 1)) of ${#HOSTS[@]} (docs/DEPLOY.md).
listen_addr: $host
listen_port: $CL_POOLER_PORT
workers: $WORKERS
pidfile: $CL_DIR/pooler-$((i + 1)).pid
metrics_addr: $host:$CL_METRICS_PORT
pool_mode: transaction
default_pool_size: 10
max_db_connections: $MAX_DB_CONNECTIONS
max_client_conn: 1000
auth_type: scram-sha-256
auth_file: $CL_DIR/userlist.txt
admin_users: [admin]
# HAProxy (127.0.0.1) sends the real client address in a PROXY v2 header.
proxy_protocol: required
proxy_trusted: [127.0.0.1/32]
# Cancel requests that land on the wrong host go to the right one.
peer_id: $((i + 1))
peers:
$peers# Failover: a host that fails or has the wrong role is skipped, and roles are re-checked.
server_check_delay: 2
server_login_retry: 2
log_connections: false
log_disconnections: false
databases:
  demo:
    host: $PRIMARY,$STANDBY
    port: $CL_PG_PORT
    target_session_attrs: read-write
  demo_ro:
    host: $STANDBY,$PRIMARY
    port: $CL_PG_PORT
    dbname: demo
    target_session_attrs: prefer-standby
EOF
    "$BIN" --check -c "$CL_DIR/pooler-$((i + 1)).yaml" >/dev/null ||
        die "pooler-$((i + 1)).yaml does not check out"
    "$BIN" -c "$CL_DIR/pooler-$((i + 1)).yaml" >"$CL_DIR/pooler-$((i + 1)).log" 2>&1 &
done

servers=""
for i in "${!HOSTS[@]}"; do
    servers+="    server pooler$((i + 1)) ${HOSTS[$i]}:$CL_POOLER_PORT send-proxy-v2 check check-send-proxy inter 2s"$'\n'
done
cat >"$CL_DIR/haproxy.cfg" <<EOF
global
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
listen postgres
    bind 127.0.0.1:$CL_PORT
    balance roundrobin
    # Health checks connect with a PROXY header too (check-send-proxy), as clients do.
$servers
EOF
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
log "HAProxy on 127.0.0.1:$CL_PORT in front of ${HOSTS[*]} (port $CL_POOLER_PORT)"
"$HAPROXY" -f "$CL_DIR/haproxy.cfg" -D -p "$CL_DIR/haproxy.pid" || die "HAProxy did not start"

ok=0
for _ in $(seq 100); do
    if PGPASSWORD=demopw psql -XqAt -h 127.0.0.1 -p "$CL_PORT" -U demo -c "SELECT 1" demo >/dev/null 2>&1; then
        ok=1
        break
    fi
    sleep 0.2
done
[ "$ok" = 1 ] || die "no answer through HAProxy: see $CL_DIR/pooler-*.log"
bench 5

cat <<EOF

The cluster is up (files, logs and configs in $CL_DIR).
Connect:        PGPASSWORD=demopw psql -h 127.0.0.1 -p $CL_PORT -U demo demo      (demo_ro for reads)
Admin console:  PGPASSWORD=adminpw psql -h 127.0.0.1 -p $CL_PORT -U admin pgbouncer  (one host of the three)
Metrics:        curl -s http://${HOSTS[0]}:$CL_METRICS_PORT/metrics
Switchover:     scripts/cluster.sh switchover
Stop:           scripts/cluster.sh down
EOF
