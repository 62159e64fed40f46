#!/usr/bin/env bash
# Runs pgbouncers for real on this machine: a throwaway PostgreSQL, pgbouncers with 2 workers
# behind HAProxy (send-proxy-v2), a short pgbench through HAProxy, then SHOW POOLS and SHOW
# CLIENTS from the admin console with the clients' real addresses, how to connect and stop.
# With --tls it also makes a throwaway CA and a server certificate (openssl, in QS_DIR), the
# pooler takes TLS only (client_tls_sslmode: require), HAProxy passes the TLS bytes through
# untouched (TCP mode, PROXY v2 header in front), psql and pgbench check the certificate
# (sslmode=verify-full), and SHOW CLIENTS shows each client's TLS version and cipher.
#
# Usage: scripts/quickstart.sh          start everything (again) and leave it running
#        scripts/quickstart.sh --tls    the same with TLS from the clients to pgbouncers
#        scripts/quickstart.sh stop     stop everything and remove the throwaway files
#
# Environment: QS_DIR (default /tmp/pgbouncers-quickstart), QS_PORT (pooler, default 6432),
# QS_HAPROXY_PORT (HAProxy, default 5433), QS_PG_PORT (PostgreSQL, default 15433).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

QS_DIR=${QS_DIR:-/tmp/pgbouncers-quickstart}
QS_PORT=${QS_PORT:-6432}
QS_PG_PORT=${QS_PG_PORT:-15433}
QS_HAPROXY_PORT=${QS_HAPROXY_PORT:-5433}
ROOT=$(pwd)

usage() { sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; }
TLS=0
case "${1:-}" in
"" | stop) ;;
--tls) TLS=1 ;;
-h | --help)
    usage
    exit 0
    ;;
*)
    usage >&2
    exit 2
    ;;
esac

# Runs a PostgreSQL program as the postgres user when we are root (initdb refuses root).
as_pg() {
    if is_root; then
        setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
    else
        "$@"
    fi
}

stop_all() {
    if [ -f "$QS_DIR/haproxy.pid" ]; then
        kill -TERM "$(cat "$QS_DIR/haproxy.pid")" 2>/dev/null || true
        rm -f "$QS_DIR/haproxy.pid"
    fi
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
if [ "$TLS" -eq 1 ] && ! have openssl; then apt_install openssl; fi
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

# How clients reach the pooler: libpq settings in the environment, so every psql and pgbench
# below is the same command with and without TLS.
export PGHOST=127.0.0.1 PGPORT=$QS_HAPROXY_PORT
TLS_YAML=
if [ "$TLS" -eq 1 ]; then
    log "making a throwaway CA and a certificate for localhost and 127.0.0.1 in $QS_DIR"
    (
        cd "$QS_DIR"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout ca.key -out ca.crt -days 30 -subj "/CN=pgbouncers quickstart CA"
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout server.key -out server.csr -subj "/CN=localhost" \
            -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -addext "extendedKeyUsage=serverAuth"
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
            -out server.crt -days 30 -copy_extensions copy
        chmod 600 ca.key server.key
    ) >"$QS_DIR/openssl.log" 2>&1 || die "openssl failed: see $QS_DIR/openssl.log"
    TLS_YAML="# TLS from clients (through HAProxy, which passes it on untouched): nothing else is let in.
client_tls_sslmode: require
client_tls_cert_file: $QS_DIR/server.crt
client_tls_key_file: $QS_DIR/server.key"
    export PGSSLMODE=verify-full PGSSLROOTCERT=$QS_DIR/ca.crt
fi

cat >"$QS_DIR/userlist.txt" <<EOF
"demo" "demopw"
"admin" "adminpw"
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
admin_users: [admin]
# HAProxy connects from 127.0.0.2 and tells us the real client in a PROXY v2 header.
proxy_protocol: required
proxy_trusted: [127.0.0.2/32]
application_name_add_host: true
log_connections: false
log_disconnections: false
$TLS_YAML
databases:
  demo:
    host: 127.0.0.1
    port: $QS_PG_PORT
EOF
cat >"$QS_DIR/haproxy.cfg" <<EOF
global
    maxconn 2000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
listen postgres
    # TCP mode: HAProxy copies bytes and never sees inside TLS; the PROXY v2 header it
    # prepends travels in cleartext before the client's SSLRequest.
    bind 127.0.0.1:$QS_HAPROXY_PORT
    server pgbouncers 127.0.0.1:$QS_PORT send-proxy-v2 source 127.0.0.2
EOF

if [ "$TLS" -eq 1 ]; then
    log "starting pgbouncers on 127.0.0.1:$QS_PORT with 2 workers, client_tls_sslmode: require"
else
    log "starting pgbouncers on 127.0.0.1:$QS_PORT with 2 workers"
fi
"$BIN" -c "$QS_DIR/pgbouncers.yaml" >"$QS_DIR/pgbouncers.log" 2>&1 &
echo $! >"$QS_DIR/pgbouncers.pid"
log "starting HAProxy on 127.0.0.1:$QS_HAPROXY_PORT (send-proxy-v2, source 127.0.0.2)"
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
"$HAPROXY" -f "$QS_DIR/haproxy.cfg" -D -p "$QS_DIR/haproxy.pid" || die "HAProxy did not start"
for _ in $(seq 50); do
    if PGPASSWORD=demopw psql -XqAt -U demo -c "SELECT 1" demo >/dev/null 2>&1; then
        break
    fi
    sleep 0.2
done
PGPASSWORD=demopw psql -XqAt -U demo -c "SELECT 1" demo >/dev/null ||
    die "no answer through HAProxy: see $QS_DIR/pgbouncers.log"
if [ "$TLS" -eq 1 ]; then
    log "psql with sslmode=verify-full through HAProxy: the pooler's certificate checks out"
    PGPASSWORD=demopw psql -XqAt -U demo demo -c '\conninfo' | sed 's/^/  /'
    if PGSSLMODE=disable PGPASSWORD=demopw psql -XqAt -U demo -c "SELECT 1" demo >"$QS_DIR/nossl.out" 2>&1; then
        die "a client without TLS got in although client_tls_sslmode is require"
    fi
    sed 's/^/  sslmode=disable is refused: /' "$QS_DIR/nossl.out"
fi

if [ "$TLS" -eq 1 ]; then
    log "pgbench -S -c 20 -T 5 with sslmode=verify-full through HAProxy and pgbouncers"
else
    log "pgbench -S -c 20 -T 5 through HAProxy and pgbouncers"
fi
PGPASSWORD=demopw pgbench -n -S -c 20 -j 2 -T 5 -U demo demo 2>&1 |
    grep -E "number of (transactions actually processed|failed transactions)|tps ="

# A few clients that stay a moment, so the admin console has something to show.
sleepers=()
for _ in 1 2 3; do
    PGPASSWORD=demopw psql -XqAt -U demo \
        -c "SELECT pg_sleep(3)" demo >/dev/null 2>&1 &
    sleepers+=($!)
done
sleep 0.5
log "SHOW POOLS (admin console: all workers together)"
PGPASSWORD=adminpw psql -XA -F'|' -U admin -c "SHOW POOLS" pgbouncer |
    awk -F'|' 'NF > 10 { printf "  %-10s %-10s %-10s %-11s %-10s %-8s %-9s\n", $1, $2, $3, $4, $7, $10, $16 }'
if [ "$TLS" -eq 1 ]; then
    log "SHOW CLIENTS: addr/port are the clients' own (127.0.0.1), not HAProxy's 127.0.0.2; tls is each client's TLS"
    PGPASSWORD=adminpw psql -XA -F'|' -U admin -c "SHOW CLIENTS" pgbouncer |
        awk -F'|' 'NF > 10 { printf "  %-5s %-6s %-10s %-7s %-10s %-6s %-6s %s\n", $1, $2, $3, $5, $6, $7, $22, $18 }'
else
    log "SHOW CLIENTS: addr/port are the clients' own (127.0.0.1), not HAProxy's 127.0.0.2"
    PGPASSWORD=adminpw psql -XA -F'|' -U admin -c "SHOW CLIENTS" pgbouncer |
        awk -F'|' 'NF > 10 { printf "  %-5s %-6s %-10s %-7s %-10s %-6s %-6s\n", $1, $2, $3, $5, $6, $7, $22 }'
fi
wait "${sleepers[@]}"

log "processes"
ps -o pid,args --ppid "$(cat "$QS_DIR/pgbouncers.pid")" --pid "$(cat "$QS_DIR/pgbouncers.pid")"

if [ "$TLS" -eq 1 ]; then
    cat <<EOF

pgbouncers is running behind HAProxy with TLS required (log: $QS_DIR/pgbouncers.log, config: $QS_DIR/pgbouncers.yaml).
CA certificate: $QS_DIR/ca.crt (server certificate for localhost and 127.0.0.1: $QS_DIR/server.crt)
Connect:        PGPASSWORD=demopw psql "host=127.0.0.1 port=$QS_HAPROXY_PORT user=demo dbname=demo sslmode=verify-full sslrootcert=$QS_DIR/ca.crt"
Admin console:  PGPASSWORD=adminpw psql "host=127.0.0.1 port=$QS_HAPROXY_PORT user=admin dbname=pgbouncer sslmode=verify-full sslrootcert=$QS_DIR/ca.crt"
Reload:         kill -HUP $(cat "$QS_DIR/pgbouncers.pid")   (re-reads the certificate files too)
Stop:           scripts/quickstart.sh stop
EOF
else
    cat <<EOF

pgbouncers is running behind HAProxy (log: $QS_DIR/pgbouncers.log, config: $QS_DIR/pgbouncers.yaml).
Connect:        PGPASSWORD=demopw psql -h 127.0.0.1 -p $QS_HAPROXY_PORT -U demo demo
Admin console:  PGPASSWORD=adminpw psql -h 127.0.0.1 -p $QS_HAPROXY_PORT -U admin pgbouncer
Reload:         kill -HUP $(cat "$QS_DIR/pgbouncers.pid")
Stop:           scripts/quickstart.sh stop
EOF
fi
