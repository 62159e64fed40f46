#!/usr/bin/env python3
"""asyncpg through the pooler, run by tests/clients.rs: several concurrent
connections with the driver's defaults (every parametrised query is a named
prepared statement from its statement cache), checking every result.

Usage: asyncpg_client.py HOST PORT USER PASSWORD DB TAG NCLIENTS [--tls-ca=FILE]

With --tls-ca (tests/tls_clients.rs), every connection asks for TLS with an
SSLRequest, verifies the certificate and host name against FILE and checks
that TLS is in use; without it, ssl=False as before.

TAG names this run's tables (parallel runs share one PostgreSQL). Prints
`prepared_names=...`, `backends=N`, then `OK asyncpg` and exits 0; on any
failure prints the error and exits 1.
"""

import asyncio
import io
import ssl
import sys
import traceback
from datetime import datetime, timedelta, timezone

try:
    import asyncpg
except ImportError as exc:  # pragma: no cover - environment problem
    print(
        f"asyncpg is not installed ({exc}): run scripts/test.sh, or "
        "python3 -m pip install 'psycopg[binary]' asyncpg",
        flush=True,
    )
    sys.exit(1)

# Client time zones (alternating between connections), sent as startup
# parameters, and how PostgreSQL renders INSTANT as text in each.
ZONES = [
    ("Asia/Kolkata", "2024-01-02 08:34:05+05:30"),
    ("Asia/Tokyo", "2024-01-02 12:04:05+09"),
]
INSTANT = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
ROUNDS = 4
REPEATS = 8
# Found in pg_prepared_statements.statement; passed as a parameter so the
# lookup query itself does not contain it.
MARK = "asyncpg_prep_mark"
PREP_Q = (
    "SELECT $1::int + $2::int AS sum, $3::text AS t, $4::bytea AS b, "
    "$5::timestamptz AS ts, NULL::text AS n /* " + MARK + " */"
)
EXPLICIT_MARK = "asyncpg_explicit_mark"
EXPLICIT_Q = (
    "SELECT id, name, note, ts, data FROM {table} WHERE worker = $1 AND id >= $2 "
    "AND id < $3 ORDER BY id /* " + EXPLICIT_MARK + " */"
)
LOOKUP_Q = "SELECT name FROM pg_prepared_statements WHERE strpos(statement, $1) > 0"


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
        self.host, port, self.user, self.password, self.db, self.tag = argv[:6]
        self.port = int(port)
        self.clients = int(argv[6])
        self.tls = False
        tls_ca = tls_ca_arg(argv[7:])
        if tls_ca is not None:
            # Verifies the chain and the host name (check_hostname is on).
            self.tls = ssl.create_default_context(cafile=tls_ca)
        self.table = f"t_asyncpg_{self.tag}"
        self.pids = set()
        self.names = set()

    async def connect(self, w):
        zone = ZONES[w % len(ZONES)][0]
        conn = await asyncpg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=self.db,
            ssl=self.tls,
            timeout=10,
            server_settings={"application_name": f"asyncpg-{self.tag}-{w}", "TimeZone": zone},
        )
        if self.tls:
            # asyncpg has no public accessor for its transport.
            tls = conn._transport.get_extra_info("ssl_object")
            check(tls is not None, "ssl=context but TLS is not in use")
        return conn

    async def round(self, w, rnd, conn):
        zone, rendered = ZONES[w % len(ZONES)]
        table = self.table
        self.pids.add(await conn.fetchval("SELECT pg_backend_pid()"))

        tz = await conn.fetchval("SHOW TimeZone")
        check(tz == zone, f"TimeZone is {tz!r}, want {zone!r}")
        app = await conn.fetchval("SHOW application_name")
        check(app == f"asyncpg-{self.tag}-{w}", f"application_name is {app!r}")
        enc = await conn.fetchval("SHOW client_encoding")
        check(enc == "UTF8", f"client_encoding is {enc!r}")
        got = await conn.fetchval("SELECT $1::timestamptz::text", INSTANT)
        check(got == rendered, f"timestamptz rendered {got!r}, want {rendered!r}")

        # The same parametrised query, again and again (cached statement).
        for i in range(REPEATS):
            a, b = w * 100 + i, rnd
            ts = INSTANT + timedelta(days=i, microseconds=7)
            data = bytes_of(w, i)
            row = await conn.fetchrow(PREP_Q, a, b, text_of(w, i), data, ts)
            check(tuple(row) == (a + b, text_of(w, i), data, ts, None), f"prepared row {row!r}")

        # The server this transaction runs on holds it as a named statement.
        async with conn.transaction():
            await conn.fetchrow(PREP_Q, 1, 2, "x", b"y", INSTANT)
            names = [r[0] for r in await conn.fetch(LOOKUP_Q, MARK)]
        check(names, "no named prepared statement on the server for the repeated query")
        self.names.update(names)

        # A committed transaction of inserts (executemany) ...
        base = rnd * 20
        rows = [row_of(w, base + k) for k in range(6)]
        ins = f"INSERT INTO {table} VALUES ($1, $2, $3, $4, $5, $6)"
        async with conn.transaction():
            await conn.executemany(ins, rows)
        # ... and a rolled-back one.
        tr = conn.transaction()
        await tr.start()
        for k in range(6, 9):
            await conn.execute(ins, *row_of(w, base + k))
        await tr.rollback()

        # An explicitly prepared statement, used many times.
        stmt = await conn.prepare(EXPLICIT_Q.format(table=table))
        for _ in range(REPEATS):
            got = [tuple(r) for r in await stmt.fetch(w, w * 1000 + base, w * 1000 + base + 20)]
            want = [(r[0], r[2], r[3], r[4], r[5]) for r in rows]
            check(got == want, f"round-trip rows differ:\n{got!r}\n!=\n{want!r}")
        async with conn.transaction():
            check(len(await stmt.fetch(w, 0, 1 << 30)) >= 6, "explicit statement in a transaction")
            names = [r[0] for r in await conn.fetch(LOOKUP_Q, EXPLICIT_MARK)]
        check(names, "no named prepared statement on the server for conn.prepare()")
        self.names.update(names)

        # An error inside a transaction, then rollback and reuse.
        tr = conn.transaction()
        await tr.start()
        await conn.execute(ins, *row_of(w, base + 10))
        try:
            await conn.fetchval("SELECT 1 / $1::int", 0)
            raise AssertionError("division by zero did not fail")
        except asyncpg.DivisionByZeroError as exc:
            check(exc.sqlstate == "22012", f"sqlstate {exc.sqlstate}")
        try:
            await conn.fetchval("SELECT 1")
            raise AssertionError("a query in a failed transaction did not fail")
        except asyncpg.InFailedSQLTransactionError:
            pass
        await tr.rollback()
        n = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE id = $1", w * 1000 + base + 10)
        check(n == 0, "row of the failed transaction is there")
        row = await conn.fetchrow(PREP_Q, 40, 2, "after", b"\x00", INSTANT)
        check(row[0] == 42 and row[1] == "after", f"prepared after error {row!r}")

        # An error from a cached statement outside a transaction block.
        try:
            await conn.fetchrow(PREP_Q, 2**31 - 1, 1, "", b"", INSTANT)
            raise AssertionError("integer overflow did not fail")
        except asyncpg.NumericValueOutOfRangeError:
            pass
        check((await conn.fetchrow(PREP_Q, 1, 1, "", b"", INSTANT))[0] == 2, "reuse after error")

        # The context manager rolls back on an exception.
        try:
            async with conn.transaction():
                await conn.execute(ins, *row_of(w, base + 11))
                raise KeyError("boom")
        except KeyError:
            pass
        n = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE id = $1", w * 1000 + base + 11)
        check(n == 0, "row of the rolled-back transaction is there")

        # COPY: binary records in, CSV out, CSV in.
        copy_rows = [row_of(w, base + k) for k in range(12, 16)]
        res = await conn.copy_records_to_table(
            table, records=copy_rows, columns=["id", "worker", "name", "note", "ts", "data"]
        )
        check(res == f"COPY {len(copy_rows)}", f"copy_records_to_table: {res!r}")
        buf = io.BytesIO()
        await conn.copy_from_query(
            f"SELECT id, name FROM {table} WHERE worker = $1 AND id >= $2 AND id < $3 ORDER BY id",
            w,
            w * 1000 + base + 12,
            w * 1000 + base + 16,
            output=buf,
            format="csv",
        )
        want = "".join(f"{r[0]},{r[2]}\n" for r in copy_rows).encode()
        check(buf.getvalue() == want, f"copy_from_query {buf.getvalue()!r} != {want!r}")
        csv_rows = [row_of(w, base + k) for k in range(16, 19)]
        src = "".join(
            f"{r[0]},{r[1]},\"{r[2]}\",{r[3] if r[3] is not None else ''},{r[4].isoformat()},"
            f"\\x{r[5].hex()}\n"
            for r in csv_rows
        ).encode()
        res = await conn.copy_to_table(
            table,
            source=io.BytesIO(src),
            columns=["id", "worker", "name", "note", "ts", "data"],
            format="csv",
        )
        check(res == f"COPY {len(csv_rows)}", f"copy_to_table: {res!r}")
        got = [tuple(r) for r in await stmt.fetch(w, w * 1000 + base + 12, w * 1000 + base + 19)]
        want = [(r[0], r[2], r[3], r[4], r[5]) for r in copy_rows + csv_rows]
        check(got == want, f"copied rows differ:\n{got!r}\n!=\n{want!r}")

    async def worker(self, w, conn):
        try:
            for rnd in range(ROUNDS):
                await self.round(w, rnd, conn)
        except BaseException:
            # A failed client may sit in a transaction holding a server: let
            # the others go on, so one failure does not look like a hang.
            conn.terminate()
            raise
        n = await conn.fetchval(f"SELECT count(*) FROM {self.table} WHERE worker = $1", w)
        # 6 executemany + 4 binary COPY + 3 CSV COPY rows per round.
        check(n == ROUNDS * 13, f"worker {w} has {n} rows, want {ROUNDS * 13}")

    async def main(self):
        admin = await self.connect(0)
        await admin.execute(f"DROP TABLE IF EXISTS {self.table}")
        await admin.execute(
            f"CREATE TABLE {self.table} (id int PRIMARY KEY, worker int NOT NULL, "
            "name text NOT NULL, note text, ts timestamptz NOT NULL, data bytea NOT NULL)"
        )
        await admin.close()
        # All connections are open at once: in transaction mode more clients
        # than servers.
        conns = await asyncio.gather(*(self.connect(w) for w in range(self.clients)))
        try:
            results = await asyncio.wait_for(
                asyncio.gather(
                    *(self.worker(w, c) for w, c in enumerate(conns)),
                    return_exceptions=True,
                ),
                timeout=100,
            )
        finally:
            await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
        failed = [(w, r) for w, r in enumerate(results) if isinstance(r, BaseException)]
        for w, exc in failed:
            print(f"client {w}: {exc!r}", flush=True)
            traceback.print_exception(exc, file=sys.stdout)
        if failed:
            raise AssertionError(f"{len(failed)} of {self.clients} clients failed")
        admin = await self.connect(0)
        await admin.execute(f"DROP TABLE IF EXISTS {self.table}")
        await admin.close()
        print(f"prepared_names={','.join(sorted(self.names))}")
        print(f"backends={len(self.pids)}")
        print("OK asyncpg", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 8:
        print(__doc__, flush=True)
        sys.exit(2)
    try:
        asyncio.run(Run(sys.argv[1:]).main())
    except BaseException as exc:  # noqa: BLE001
        traceback.print_exc()
        print(f"FAILED asyncpg: {exc!r}", flush=True)
        sys.exit(1)
