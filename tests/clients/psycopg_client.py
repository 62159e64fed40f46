#!/usr/bin/env python3
"""psycopg 3 through the pooler, run by tests/clients.rs: several concurrent
connections with the driver's defaults (prepare_threshold 5, autocommit off),
checking every result.

Usage: psycopg_client.py HOST PORT USER PASSWORD DB TAG NCLIENTS [--tls-ca=FILE]

With --tls-ca (tests/tls_clients.rs), every connection uses sslmode=verify-full
with FILE as the root certificate and checks that TLS is in use; without it,
TLS is not used.

TAG names this run's tables (parallel runs share one PostgreSQL). Note that
psycopg's rollback() sends DEALLOCATE ALL when the connection has prepared
statements (as it does after a DROP or ALTER). Prints `prepared_names=...`, `backends=N`, then `OK psycopg` and exits 0; on
any failure prints the error and exits 1.
"""

import logging
import sys
import threading
import traceback
from datetime import datetime, timedelta, timezone

try:
    import psycopg
    from psycopg import errors
except ImportError as exc:  # pragma: no cover - environment problem
    print(
        f"psycopg is not installed ({exc}): run scripts/test.sh, or "
        "python3 -m pip install 'psycopg[binary]' asyncpg",
        flush=True,
    )
    sys.exit(1)

# psycopg logs "error ignored terminating <Pipeline ...>" for the pipeline
# that fails on purpose.
logging.getLogger("psycopg").setLevel(logging.CRITICAL)

# Client time zones (alternating between connections) and how PostgreSQL
# renders INSTANT as text in each: proves the server a transaction runs on
# has this client's TimeZone, even when servers are shared.
ZONES = [
    ("Asia/Kolkata", "2024-01-02 08:34:05+05:30"),
    ("Asia/Tokyo", "2024-01-02 12:04:05+09"),
]
INSTANT = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
ROUNDS = 4
# More than prepare_threshold (5): psycopg prepares it from the 6th run on.
REPEATS = 8
# Found in pg_prepared_statements.statement; passed as a parameter so the
# lookup query itself does not contain it.
MARK = "psycopg_prep_mark"
PREP_Q = (
    "SELECT %s::int + %s::int AS sum, %s::text AS t, %s::bytea AS b, "
    "%s::timestamptz AS ts, NULL::text AS n /* " + MARK + " */"
)
LOOKUP_Q = "SELECT name FROM pg_prepared_statements WHERE strpos(statement, %s) > 0"


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def tls_ca_arg(extra):
    """FILE from an optional `--tls-ca=FILE` argument, else None."""
    for arg in extra:
        if arg.startswith("--tls-ca="):
            return arg[len("--tls-ca=") :]
        raise SystemExit(f"unknown argument {arg!r}")
    return None


def text_of(w, k):
    return f"naïve café ☃ 日本語 ✓ {w}-{k}"


def bytes_of(w, k):
    return bytes([0, 1, 2, 255, w % 256, k % 256]) + b"\x00\\'\"end"


def row_of(w, k):
    note = None if k % 2 else f"note {k}"
    return (
        w * 1000 + k,
        w,
        text_of(w, k),
        note,
        INSTANT + timedelta(seconds=k, microseconds=123456),
        bytes_of(w, k),
    )


class Run:
    def __init__(self, argv):
        self.host, self.port, self.user, self.password, self.db, self.tag = argv[:6]
        self.clients = int(argv[6])
        self.tls_ca = tls_ca_arg(argv[7:])
        self.table = f"t_psycopg_{self.tag}"
        self.lock = threading.Lock()
        self.pids = set()
        self.names = set()
        self.errors = []

    def connect(self, w, **kw):
        zone = ZONES[w % len(ZONES)][0]
        if self.tls_ca is not None:
            kw.update(sslmode="verify-full", sslrootcert=self.tls_ca)
        conn = psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=self.db,
            application_name=f"psycopg-{self.tag}-{w}",
            options=f"-c TimeZone={zone}",
            connect_timeout=10,
            **kw,
        )
        if self.tls_ca is not None:
            check(conn.pgconn.ssl_in_use, "sslmode=verify-full but TLS is not in use")
        return conn

    def setup(self):
        with self.connect(0, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {self.table}")
            conn.execute(
                f"CREATE TABLE {self.table} (id int PRIMARY KEY, worker int NOT NULL, "
                "name text NOT NULL, note text, ts timestamptz NOT NULL, data bytea NOT NULL)"
            )

    def teardown(self):
        with self.connect(0, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {self.table}")

    def note_pid(self, conn):
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        conn.commit()
        with self.lock:
            self.pids.add(pid)

    def worker(self, w, conn, barrier):
        try:
            barrier.wait(timeout=60)
            for rnd in range(ROUNDS):
                self.round(w, rnd, conn)
            self.final_checks(w, conn)
        except BaseException as exc:  # noqa: BLE001 - reported to main
            with self.lock:
                self.errors.append(f"client {w}: {exc!r}\n{traceback.format_exc()}")
            # A failed client may sit in a transaction holding a server: let
            # the others go on, so one failure does not look like a hang.
            conn.close()

    def round(self, w, rnd, conn):
        zone, rendered = ZONES[w % len(ZONES)]
        table = self.table
        self.note_pid(conn)

        # Session parameters: this client's own, whichever server it got.
        cur = conn.cursor()
        tz = cur.execute("SHOW TimeZone").fetchone()[0]
        check(tz == zone, f"TimeZone is {tz!r}, want {zone!r}")
        app = cur.execute("SHOW application_name").fetchone()[0]
        check(app == f"psycopg-{self.tag}-{w}", f"application_name is {app!r}")
        check(conn.info.parameter_status("TimeZone") == zone, "ParameterStatus TimeZone")
        got = cur.execute("SELECT %s::timestamptz::text", [INSTANT]).fetchone()[0]
        check(got == rendered, f"timestamptz rendered {got!r}, want {rendered!r}")
        conn.commit()

        # The same parametrised query, more times than prepare_threshold.
        for i in range(REPEATS):
            a, b = w * 100 + i, rnd
            ts = INSTANT + timedelta(days=i, microseconds=7)
            data = bytes_of(w, i)
            row = cur.execute(PREP_Q, [a, b, text_of(w, i), data, ts]).fetchone()
            check(row == (a + b, text_of(w, i), data, ts, None), f"prepared row {row!r}")
            conn.commit()

        # The server this transaction runs on holds it as a named statement.
        cur.execute(PREP_Q, [1, 2, "x", b"y", INSTANT]).fetchone()
        names = [r[0] for r in cur.execute(LOOKUP_Q, [MARK]).fetchall()]
        check(names, "no named prepared statement on the server for the repeated query")
        conn.commit()
        with self.lock:
            self.names.update(names)

        # A committed transaction of inserts (executemany, prepared) ...
        base = rnd * 20
        rows = [row_of(w, base + k) for k in range(6)]
        cur.executemany(f"INSERT INTO {table} VALUES (%s, %s, %s, %s, %s, %s)", rows)
        conn.commit()
        # ... and a rolled-back one.
        for k in range(6, 9):
            cur.execute(f"INSERT INTO {table} VALUES (%s, %s, %s, %s, %s, %s)", row_of(w, base + k))
        conn.rollback()
        got = cur.execute(
            f"SELECT id, worker, name, note, ts, data FROM {table} "
            "WHERE worker = %s AND id >= %s AND id < %s ORDER BY id",
            [w, w * 1000 + base, w * 1000 + base + 20],
        ).fetchall()
        check(got == rows, f"round-trip rows differ:\n{got!r}\n!=\n{rows!r}")
        conn.commit()

        # An error inside a transaction, then rollback and reuse.
        cur.execute(f"INSERT INTO {table} VALUES (%s, %s, %s, %s, %s, %s)", row_of(w, base + 10))
        try:
            cur.execute("SELECT 1 / %s", [0])
            raise AssertionError("division by zero did not fail")
        except errors.DivisionByZero as exc:
            check(exc.sqlstate == "22012", f"sqlstate {exc.sqlstate}")
        try:
            cur.execute("SELECT 1")
            raise AssertionError("a query in a failed transaction did not fail")
        except errors.InFailedSqlTransaction:
            pass
        conn.rollback()
        n = cur.execute(
            f"SELECT count(*) FROM {table} WHERE id = %s", [w * 1000 + base + 10]
        ).fetchone()[0]
        check(n == 0, "row of the failed transaction is there")
        row = cur.execute(PREP_Q, [40, 2, "after", b"\x00", INSTANT]).fetchone()
        check(row[0] == 42 and row[1] == "after", f"prepared after error {row!r}")
        conn.commit()

        # A parameter the server rejects (the str has its own prepared-cache
        # key, so this one is sent unnamed), then rollback.
        try:
            cur.execute(PREP_Q, ["notanint", 1, "", b"", INSTANT])
            raise AssertionError("bad int did not fail")
        except errors.InvalidTextRepresentation:
            pass
        conn.rollback()

        # Pipeline mode: several prepared statements, one sync.
        pipe_rows = [row_of(w, base + k) for k in range(11, 17)]
        with conn.pipeline() as p:
            for r in pipe_rows:
                conn.execute(f"INSERT INTO {table} VALUES (%s, %s, %s, %s, %s, %s)", r)
            c1 = conn.execute(PREP_Q, [7, 8, "pipe", b"p", INSTANT])
            c2 = conn.execute(
                f"SELECT count(*) FROM {table} WHERE worker = %s AND id >= %s AND id < %s",
                [w, w * 1000 + base + 11, w * 1000 + base + 17],
            )
            p.sync()
            r1 = c1.fetchone()
            r2 = c2.fetchone()
        conn.commit()
        check(r1[:2] == (15, "pipe"), f"pipeline prepared {r1!r}")
        check(r2[0] == len(pipe_rows), f"pipeline count {r2!r}")

        # A pipeline whose middle statement fails: everything after it is
        # skipped up to the sync, and the connection is usable again.
        try:
            with conn.pipeline():
                conn.execute(PREP_Q, [1, 1, "a", b"", INSTANT])
                conn.execute("SELECT 1 / %s", [0])
                conn.execute(PREP_Q, [2, 2, "b", b"", INSTANT])
            raise AssertionError("pipeline with an error did not fail")
        except errors.DivisionByZero:
            pass
        conn.rollback()

        # COPY in and out.
        copy_rows = [row_of(w, base + k) for k in range(17, 20)]
        with cur.copy(f"COPY {table} (id, worker, name, note, ts, data) FROM STDIN") as copy:
            for r in copy_rows:
                copy.write_row(r)
        conn.commit()
        out = []
        with cur.copy(
            f"COPY (SELECT id, name, note, data FROM {table} "
            f"WHERE worker = {int(w)} AND id >= {w * 1000 + base + 17} "
            f"AND id < {w * 1000 + base + 20} ORDER BY id) TO STDOUT"
        ) as copy:
            copy.set_types(["int4", "text", "text", "bytea"])
            for r in copy.rows():
                out.append(r)
        conn.commit()
        want = [(r[0], r[2], r[3], r[5]) for r in copy_rows]
        check(out == want, f"COPY round trip {out!r} != {want!r}")

    def final_checks(self, w, conn):
        cur = conn.cursor()
        n = cur.execute(f"SELECT count(*) FROM {self.table} WHERE worker = %s", [w]).fetchone()[0]
        # 6 executemany + 6 pipeline + 3 COPY rows per round.
        check(n == ROUNDS * 15, f"worker {w} has {n} rows, want {ROUNDS * 15}")
        conn.commit()

    def main(self):
        self.setup()
        conns = [self.connect(w) for w in range(self.clients)]
        try:
            # All connections are open at once: in transaction mode more
            # clients than servers.
            barrier = threading.Barrier(self.clients)
            threads = [
                threading.Thread(target=self.worker, args=(w, conns[w], barrier))
                for w in range(self.clients)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            for c in conns:
                c.close()
        if self.errors:
            for e in self.errors:
                print(e, flush=True)
            raise AssertionError(f"{len(self.errors)} of {self.clients} clients failed")
        self.teardown()
        print(f"prepared_names={','.join(sorted(self.names))}")
        print(f"backends={len(self.pids)}")
        print("OK psycopg", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 8:
        print(__doc__, flush=True)
        sys.exit(2)
    try:
        Run(sys.argv[1:]).main()
    except BaseException as exc:  # noqa: BLE001
        traceback.print_exc()
        print(f"FAILED psycopg: {exc!r}", flush=True)
        sys.exit(1)
