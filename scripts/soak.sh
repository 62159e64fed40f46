#!/usr/bin/env bash
# Soaks pgbouncers: pgbench through 3 transaction-mode workers for SECONDS while the config is reloaded every 10 s, a random worker is SIGKILLed every 30 s and PostgreSQL restarts every 60 s.
#
# Usage: scripts/soak.sh [SECONDS]        (default 600, at least 20)
# Environment:
#   PGBOUNCERS_BIN  the binary to soak (default: target/release/pgbouncers if
#                   it exists, else a debug build made here)
#   SOAK_KEEP=1     keep the temp dir (configs, logs, pgbench output)
#
# What runs: a throwaway PostgreSQL (trust auth, its own temp dir and port),
# pgbouncers with 3 workers in transaction mode in front of it, and pgbench
# (TPC-B-like, 20 clients) through the pooler, cycling the query protocol
# simple -> extended -> prepared. Every 10 s the script rewrites the config
# (pool_size alternating 10 / 20) and sends SIGHUP, then checks through the
# admin console (SHOW DATABASES) that the new size took effect. Every 30 s it
# SIGKILLs one worker picked at random; the supervisor must respawn it.
#
# How failures are attributed (why "0 failures except on killed workers" is
# checked exactly, not estimated):
# - pgbench runs in back-to-back chunks of CHUNK (5) seconds, each a fresh
#   `pgbench -c 20 -T 5`. pgbench connects its 20 clients at the start of a
#   chunk and never reconnects within it; a client whose connection breaks
#   is "aborted" (pgbench prints `client N aborted ...` and exits 2).
# - A kill is only carried out in the middle of a chunk: at least 1 s after
#   it started and at least 1.5 s before it ends, and only once SHOW CLIENTS
#   (admin console) lists all 20 of the chunk's clients. SHOW CLIENTS says
#   which worker serves each client, so right before the SIGKILL the script
#   knows exactly how many clients of this chunk sit on the victim: V. (When
#   the timing does not fit, the kill waits for the next chunk's window.)
# - Every 60 s (offset by 15 s from the kills) PostgreSQL itself restarts
#   (pg_ctl restart -m fast), also in the middle of a chunk: every client
#   with a transaction in flight may lose it, so such a chunk may lose all
#   its clients. A chunk that starts while PostgreSQL is down, or within
#   server_login_retry (1 s here) of its return, may fail too: the pooler
#   then gives every request PgBouncer's immediate "server login has been
#   failing" error, by design. After that the pooler must recover by
#   itself: later chunks are judged like any other, and the summary gives
#   the time from PostgreSQL's return to the first clean chunk.
# - At the end every chunk is judged on its own: a chunk with no kill and no
#   restart must have exited 0 with no aborted client and no failed
#   transaction; a chunk with a kill may lose at most V clients (aborted +
#   failed <= V), one with a restart at most all of them, and must exit 0
#   or 2. Anything else is an unexplained failure.
# The script exits non-zero on any unexplained failure, on a reload that did
# not take effect, if the supervisor died, or if it does not end with exactly
# 3 running workers. It prints a summary either way.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

DURATION=${1:-600}
WORKERS=3
CLIENTS=20
CHUNK=5
HUP_EVERY=10
KILL_EVERY=30
RESTART_EVERY=60
case "$DURATION" in
'' | *[!0-9]*) die "usage: scripts/soak.sh [SECONDS] (a whole number, at least 20)" ;;
esac
[ "$DURATION" -ge 20 ] || die "SECONDS must be at least 20"

need_test_pkgs
BINDIR=$(pg_bindir) || die "PostgreSQL binaries not found"

if [ -n "${PGBOUNCERS_BIN:-}" ]; then
    BIN=$PGBOUNCERS_BIN
elif [ -x target/release/pgbouncers ]; then
    BIN=target/release/pgbouncers
else
    log "building a debug binary"
    cargo build --quiet --bin pgbouncers
    BIN=target/debug/pgbouncers
fi
[ -x "$BIN" ] || die "$BIN is not an executable"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

WORK=$(mktemp -d /tmp/pgbouncers-soak.XXXXXX)
chmod 755 "$WORK"
PGDATA_DIR=$WORK/data
POOLER_PID=
LOAD_PID=
STATUS=1

now_ms() { date +%s%3N; }

# Two TCP ports the kernel considers free right now.
free_ports() {
    python3 - <<'EOF'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# Runs a PostgreSQL server program, as the postgres OS user when we are root
# (initdb and postgres refuse to run as root).
as_pg() {
    if is_root; then
        if have setpriv; then
            setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
        else
            runuser -u postgres -- "$@"
        fi
    else
        "$@"
    fi
}

# psql straight to PostgreSQL over its Unix socket, as the superuser.
pg_sql() {
    "$BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$WORK" -p "$PG_PORT" -U postgres -d "${2:-postgres}" -c "$1"
}

# An admin console command through the pooler: rows as `|`-separated
# fields, header line first, no footer.
console() {
    PGCONNECT_TIMEOUT=5 "$BINDIR/psql" -X -A -F '|' -P footer=off \
        -h 127.0.0.1 -p "$PORT" -U admin -d pgbouncer -c "$1" 2>>"$WORK/console.err"
}

# Prints the values of column $2 in console output $1 for rows where column
# $3 equals $4 (all rows when $3 is empty).
column() {
    awk -F'|' -v want="$2" -v key="$3" -v val="$4" '
        NR == 1 { for (i = 1; i <= NF; i++) { if ($i == want) c = i; if ($i == key) k = i }; next }
        c && (key == "" || (k && $k == val)) { print $c }' <<<"$1"
}

# shellcheck disable=SC2317  # called indirectly, through trap
cleanup() {
    local rc=$?
    set +e
    if [ -n "$LOAD_PID" ] && kill -0 "$LOAD_PID" 2>/dev/null; then
        kill "$LOAD_PID" 2>/dev/null
    fi
    if [ -f "$WORK/pgbench.pid" ]; then
        kill "$(cat "$WORK/pgbench.pid")" 2>/dev/null
    fi
    if [ -n "$POOLER_PID" ] && kill -0 "$POOLER_PID" 2>/dev/null; then
        local workers
        workers=$(pgrep -P "$POOLER_PID" || true)
        kill -TERM "$POOLER_PID" 2>/dev/null
        for _ in $(seq 50); do
            kill -0 "$POOLER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$POOLER_PID" 2>/dev/null
        # Workers die with their supervisor (PR_SET_PDEATHSIG); these are
        # only stragglers, by the pids we saw.
        for w in $workers; do kill -KILL "$w" 2>/dev/null; done
        wait "$POOLER_PID" 2>/dev/null
    fi
    if [ -f "$PGDATA_DIR/postmaster.pid" ]; then
        as_pg "$BINDIR/pg_ctl" -D "$PGDATA_DIR" -m immediate -w -t 20 stop >/dev/null 2>&1
    fi
    if [ "$STATUS" -ne 0 ] && [ -f "$WORK/pooler.log" ]; then
        echo "--- pooler log (last 40 lines) ---" >&2
        tail -n 40 "$WORK/pooler.log" >&2
    fi
    if [ "${SOAK_KEEP:-0}" = 1 ]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- PostgreSQL -------------------------------------------------------------------

read -r PG_PORT PORT < <(free_ports)
log "PostgreSQL on port $PG_PORT, pgbouncers ($BIN) on port $PORT, work dir $WORK"
mkdir -p "$PGDATA_DIR"
if is_root; then chown postgres:postgres "$WORK" "$PGDATA_DIR"; fi
as_pg "$BINDIR/initdb" -D "$PGDATA_DIR" -A trust -U postgres --no-sync -E UTF8 --locale=C \
    >"$WORK/initdb.log" 2>&1 || die "initdb failed: $(tail -n 20 "$WORK/initdb.log")"
cat >>"$PGDATA_DIR/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
lc_messages = 'C'
EOF
as_pg "$BINDIR/pg_ctl" -D "$PGDATA_DIR" -l "$WORK/postgres.log" -w -t 60 start >/dev/null ||
    die "PostgreSQL did not start: $(tail -n 20 "$WORK/postgres.log")"
pg_sql "CREATE ROLE soak LOGIN" >/dev/null
pg_sql "CREATE DATABASE soak OWNER soak" >/dev/null
"$BINDIR/pgbench" -i -s 1 -q -h 127.0.0.1 -p "$PG_PORT" -U soak soak >"$WORK/pgbench-init.log" 2>&1 ||
    die "pgbench -i failed: $(tail -n 20 "$WORK/pgbench-init.log")"

# ---- pgbouncers -------------------------------------------------------------------

write_config() {
    cat >"$WORK/pgbouncers.yaml.new" <<EOF
listen_addr: 127.0.0.1
listen_port: $PORT
auth_type: trust
admin_users: [admin]
pool_mode: transaction
max_client_conn: 1000
query_wait_timeout: 30
server_login_retry: 1
log_stats: false
databases:
  soak: { host: 127.0.0.1, port: $PG_PORT, dbname: soak, pool_size: $1 }
EOF
    # Renamed into place: a reload never reads a half-written file.
    mv "$WORK/pgbouncers.yaml.new" "$WORK/pgbouncers.yaml"
}

POOL_SIZE=20
write_config "$POOL_SIZE"
# Its own session: a Ctrl-C meant for this script goes to us, and we stop it.
setsid "$BIN" -c "$WORK/pgbouncers.yaml" --workers "$WORKERS" >>"$WORK/pooler.log" 2>&1 &
POOLER_PID=$!
for _ in $(seq 100); do
    console "SHOW VERSION" >/dev/null 2>&1 && break
    kill -0 "$POOLER_PID" 2>/dev/null || die "pgbouncers exited: $(tail -n 20 "$WORK/pooler.log")"
    sleep 0.1
done
console "SHOW VERSION" >/dev/null || die "the admin console does not answer: $(tail -n 20 "$WORK/pooler.log")"

running_workers() { column "$(console 'SHOW WORKERS')" pid state running; }

# ---- load -------------------------------------------------------------------------

START=$(now_ms)
END=$((START + DURATION * 1000))

# Back-to-back pgbench chunks until END; `current` holds "chunk start_ms"
# while one runs, chunks.tsv one line per finished chunk.
load_loop() {
    local chunk=0 modes=(simple extended prepared) mode secs t0 rc
    while :; do
        secs=$(((END - $(now_ms)) / 1000))
        [ "$secs" -ge 2 ] || break
        [ "$secs" -le "$CHUNK" ] || secs=$CHUNK
        chunk=$((chunk + 1))
        mode=${modes[$((chunk % 3))]}
        t0=$(now_ms)
        echo "$chunk $t0 $secs" >"$WORK/current.new"
        mv "$WORK/current.new" "$WORK/current"
        "$BINDIR/pgbench" -h 127.0.0.1 -p "$PORT" -U soak -n -c "$CLIENTS" -j 2 -T "$secs" \
            -M "$mode" soak >"$WORK/chunk.$chunk.out" 2>&1 &
        echo $! >"$WORK/pgbench.pid"
        rc=0
        wait $! || rc=$?
        rm -f "$WORK/current" "$WORK/pgbench.pid"
        printf '%s %s %s %s %s\n' "$chunk" "$t0" "$(now_ms)" "$rc" "$mode" >>"$WORK/chunks.tsv"
    done
}
: >"$WORK/chunks.tsv"
: >"$WORK/kills.tsv"
: >"$WORK/restarts.tsv"
load_loop &
LOAD_PID=$!

reloads=0
reload_failures=0
kills=0
restarts=0
restart_failures=0
next_hup=$((START + HUP_EVERY * 1000))
next_kill=$((START + KILL_EVERY * 1000))
next_restart=$((START + (RESTART_EVERY + 15) * 1000))

# SIGHUP with the other pool_size; the new size must show in SHOW DATABASES.
do_reload() {
    POOL_SIZE=$((POOL_SIZE == 20 ? 10 : 20))
    write_config "$POOL_SIZE"
    kill -HUP "$POOLER_PID"
    reloads=$((reloads + 1))
    local ok=0
    for _ in $(seq 50); do
        if [ "$(column "$(console 'SHOW DATABASES')" pool_size name soak)" = "$POOL_SIZE" ]; then
            ok=1
            break
        fi
        sleep 0.1
    done
    if [ "$ok" -eq 1 ]; then
        log "reload $reloads: pool_size $POOL_SIZE in effect"
    else
        reload_failures=$((reload_failures + 1))
        warn "reload $reloads: pool_size $POOL_SIZE not in effect after 5 s"
    fi
}

# Kills a random worker if a chunk is in its kill window with all clients
# connected; returns 1 (try again shortly) otherwise.
try_kill() {
    local chunk t0 secs now clients total workers slot pid victims
    [ -f "$WORK/current" ] || return 1
    read -r chunk t0 secs <"$WORK/current" || return 1
    now=$(now_ms)
    [ $((now - t0)) -ge 1000 ] || return 1
    [ $((t0 + secs * 1000 - now)) -ge 1500 ] || return 1
    clients=$(console "SHOW CLIENTS") || return 1
    total=$(column "$clients" worker database soak | wc -l)
    [ "$total" -eq "$CLIENTS" ] || return 1
    workers=$(console "SHOW WORKERS") || return 1
    mapfile -t slots < <(column "$workers" worker state running)
    [ "${#slots[@]}" -eq "$WORKERS" ] || return 1
    slot=${slots[$((RANDOM % ${#slots[@]}))]}
    pid=$(column "$workers" pid worker "$slot")
    victims=$(column "$clients" worker database soak | grep -cx "$slot" || true)
    # Still the same chunk: the count above is this chunk's.
    [ -f "$WORK/current" ] && [ "$(cut -d' ' -f1 "$WORK/current")" = "$chunk" ] || return 1
    kill -KILL "$pid"
    kills=$((kills + 1))
    printf '%s %s %s %s %s\n' "$chunk" "$slot" "$pid" "$victims" "$(now_ms)" >>"$WORK/kills.tsv"
    log "kill $kills: worker $slot (pid $pid) in chunk $chunk, serving $victims of its $CLIENTS clients"
    return 0
}

# Restarts PostgreSQL in the middle of a chunk; returns 1 (try again shortly)
# when no chunk is in its window.
try_restart() {
    local chunk t0 secs now
    [ -f "$WORK/current" ] || return 1
    read -r chunk t0 secs <"$WORK/current" || return 1
    now=$(now_ms)
    [ $((now - t0)) -ge 1000 ] || return 1
    # Room after it: the pooler's server_login_retry (1 s) ends inside this chunk.
    [ $((t0 + secs * 1000 - now)) -ge 3000 ] || return 1
    restarts=$((restarts + 1))
    if as_pg "$BINDIR/pg_ctl" -D "$PGDATA_DIR" -l "$WORK/postgres.log" -m fast -w -t 60 restart >/dev/null; then
        log "restart $restarts: PostgreSQL restarted in chunk $chunk ($(($(now_ms) - now)) ms)"
    else
        restart_failures=$((restart_failures + 1))
        warn "restart $restarts: PostgreSQL did not restart"
    fi
    # chunk, when it went down, when it was back.
    printf '%s %s %s\n' "$chunk" "$now" "$(now_ms)" >>"$WORK/restarts.tsv"
    return 0
}

while kill -0 "$LOAD_PID" 2>/dev/null; do
    now=$(now_ms)
    kill -0 "$POOLER_PID" 2>/dev/null || break
    if [ "$now" -ge "$next_hup" ] && [ "$now" -lt $((END - 2000)) ]; then
        do_reload
        next_hup=$((next_hup + HUP_EVERY * 1000))
    fi
    if [ "$now" -ge "$next_restart" ] && [ "$now" -lt $((END - 8000)) ]; then
        if try_restart; then
            next_restart=$((next_restart + RESTART_EVERY * 1000))
        fi
    fi
    if [ "$now" -ge "$next_kill" ] && [ "$now" -lt $((END - 3000)) ]; then
        if try_kill; then
            next_kill=$((next_kill + KILL_EVERY * 1000))
        fi
    fi
    sleep 0.2
done
wait "$LOAD_PID" 2>/dev/null || true
LOAD_PID=

# ---- verdict ------------------------------------------------------------------------

supervisor_alive=1
kill -0 "$POOLER_PID" 2>/dev/null || supervisor_alive=0
final_workers=0
final_children=0
if [ "$supervisor_alive" -eq 1 ]; then
    # A worker killed near the end may still be coming back.
    for _ in $(seq 100); do
        final_workers=$(running_workers | wc -l)
        final_children=$(pgrep -P "$POOLER_PID" | wc -l)
        [ "$final_workers" -eq "$WORKERS" ] && [ "$final_children" -eq "$WORKERS" ] && break
        sleep 0.1
    done
fi

chunks=0
transactions=0
aborted_total=0
explained=0
unexplained=0
details=()
# Server_login_retry of the pooler's config, plus slack for the chunk's own start.
RETRY_WINDOW_MS=1500
restart_lost=0
while read -r chunk t0 _ rc mode; do
    chunks=$((chunks + 1))
    out=$WORK/chunk.$chunk.out
    aborted=$(grep -cE 'client [0-9]+ aborted' "$out" || true)
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out" | head -n 1)
    processed=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out" | head -n 1)
    failed=${failed:-0}
    transactions=$((transactions + ${processed:-0}))
    allowed=$(awk -v c="$chunk" '$1 == c { v += $4 } END { print v + 0 }' "$WORK/kills.tsv")
    # The restart's own chunk, or one that began before the retry window ended. Such a
    # chunk may also end with pgbench's exit 1: its own first query got the error.
    restart_chunk=0
    if awk -v c="$chunk" -v t="$t0" -v w="$RETRY_WINDOW_MS" \
        '$1 == c || (t >= $2 && t < $3 + w) { found = 1 } END { exit !found }' "$WORK/restarts.tsv"; then
        allowed=$CLIENTS
        restart_chunk=1
    fi
    lost=$((aborted + failed))
    aborted_total=$((aborted_total + lost))
    if [ "$rc" -eq 0 ] && [ "$lost" -eq 0 ]; then
        continue
    fi
    if [ "$restart_chunk" -eq 1 ] && [ "$rc" -le 2 ]; then
        explained=$((explained + lost))
        restart_lost=$((restart_lost + 1))
        continue
    fi
    if [ "$allowed" -gt 0 ] && [ "$lost" -le "$allowed" ] && { [ "$rc" -eq 0 ] || [ "$rc" -eq 2 ]; }; then
        explained=$((explained + lost))
        continue
    fi
    unexplained=$((unexplained + (lost > 0 ? lost : 1)))
    details+=("chunk $chunk ($mode): exit $rc, $aborted aborted + $failed failed, $allowed allowed (killed workers, restarts)")
    details+=("$(grep -E 'error|aborted|FATAL' "$out" | head -n 5 | sed 's/^/    /')")
done <"$WORK/chunks.tsv"

elapsed=$((($(now_ms) - START) / 1000))
echo
echo "==================== soak summary ===================="
echo "  binary:        $BIN"
echo "  duration:      ${elapsed}s (asked ${DURATION}s), $chunks pgbench chunks of ${CHUNK}s x $CLIENTS clients"
echo "  transactions:  $transactions ($((transactions / (elapsed > 0 ? elapsed : 1))) per second)"
echo "  reloads:       $reloads ($reload_failures did not take effect)"
echo "  worker kills:  $kills"
while read -r chunk slot pid victims _; do
    echo "    chunk $chunk: worker $slot (pid $pid) with $victims clients"
done <"$WORK/kills.tsv"
echo "  PG restarts:   $restarts ($restart_failures failed)"
echo "                 $restart_lost chunks inside a restart or its retry window ended early or lost clients (allowed)"
while read -r chunk down up; do
    # The first chunk that started after the retry window: it must run clean.
    read -r next t0 rc < <(awk -v from=$((up + RETRY_WINDOW_MS)) '$2 >= from { print $1, $2, $4; exit }' "$WORK/chunks.tsv")
    if [ -n "${next:-}" ]; then
        echo "    chunk $chunk: down $((up - down)) ms; chunk $next started $((t0 - up)) ms after PostgreSQL was back: $([ "$rc" -eq 0 ] && echo clean || echo "exit $rc")"
    else
        echo "    chunk $chunk: down $((up - down)) ms; no chunk after it"
    fi
    next=
done <"$WORK/restarts.tsv"
echo "  lost clients:  $aborted_total ($explained on killed workers or restarts, $unexplained unexplained)"
for d in "${details[@]}"; do echo "    $d"; done
echo "  supervisor:    $([ "$supervisor_alive" -eq 1 ] && echo alive || echo DEAD)"
echo "  workers:       $final_workers running in SHOW WORKERS, $final_children child processes (want $WORKERS)"

problems=()
[ "$chunks" -gt 0 ] || problems+=("no pgbench chunk ran")
[ "$transactions" -gt 0 ] || problems+=("no transaction went through")
[ "$unexplained" -eq 0 ] || problems+=("$unexplained unexplained failures")
[ "$reload_failures" -eq 0 ] || problems+=("$reload_failures reloads did not take effect")
[ "$restart_failures" -eq 0 ] || problems+=("$restart_failures PostgreSQL restarts failed")
if [ "$DURATION" -ge $((RESTART_EVERY + 25)) ] && [ "$restarts" -eq 0 ]; then
    problems+=("PostgreSQL was never restarted (never found a window)")
fi
[ "$supervisor_alive" -eq 1 ] || problems+=("the supervisor died")
[ "$final_workers" -eq "$WORKERS" ] || problems+=("$final_workers running workers at the end, want $WORKERS")
[ "$final_children" -eq "$WORKERS" ] || problems+=("$final_children worker processes at the end, want $WORKERS")
if [ "$DURATION" -ge $((KILL_EVERY + 10)) ] && [ "$kills" -eq 0 ]; then
    problems+=("no worker was killed (never found a kill window)")
fi
if [ "${#problems[@]}" -eq 0 ]; then
    echo "  RESULT: OK"
    STATUS=0
else
    for p in "${problems[@]}"; do echo "  problem: $p"; done
    echo "  RESULT: FAILED"
fi
exit "$STATUS"
