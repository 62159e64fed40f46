#!/usr/bin/env python3
"""Small, deterministic psycopg scenarios for named prepared statements under
transaction pooling, run by tests/clients.rs against a pooler with ONE server
(1 worker, pool_size 1), so every client shares it.

Usage: psycopg_regressions.py HOST PORT USER PASSWORD DB CASE

Cases (each must behave exactly as it does on PostgreSQL directly):
  rollback_deallocate_all  psycopg's rollback() sends DEALLOCATE ALL when the
                           connection has prepared statements; the other
                           clients' statements on that server must keep working.
  failed_parse             a named Parse that fails (syntax error), twice: both
                           attempts get the syntax error.
  aborted_parse            a named Parse inside an aborted transaction fails
                           (25P02); after the rollback the same Parse works.
  pipeline_skipped_parse   a named Parse that the server skips because an
                           earlier query of the same pipeline failed; the next
                           attempt works.
Prints `OK psycopg-regressions <case>` and exits 0, or prints the error and
exits 1.
"""

import sys
import traceback

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


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def rollback_deallocate_all(connect):
    q1 = "SELECT %s::int + 1 AS reg_dealloc_1"
    q2 = "SELECT %s::int + 2 AS reg_dealloc_2"
    c1 = connect(autocommit=True)
    c2 = connect()  # psycopg's default: autocommit off
    check(c1.execute(q1, [1], prepare=True).fetchone() == (2,), "c1 first run")
    check(c2.execute(q2, [1], prepare=True).fetchone() == (3,), "c2 first run")
    # ROLLBACK, then DEALLOCATE ALL (psycopg forgets its statements on rollback).
    c2.rollback()
    for i in range(8):
        got = c1.execute(q1, [i]).fetchone()
        check(got == (i + 1,), f"c1 after c2's rollback: {got!r}")
        got = c2.execute(q2, [i]).fetchone()
        check(got == (i + 2,), f"c2 after its rollback: {got!r}")
        c2.commit()


def failed_parse(connect):
    c = connect(autocommit=True)
    for attempt in range(3):
        try:
            c.execute("SELEC %s::int AS reg_failed_parse", [1], prepare=True)
            raise AssertionError("a syntax error was accepted")
        except errors.SyntaxError:
            pass
        except psycopg.Error as exc:
            raise AssertionError(
                f"attempt {attempt}: want 42601 syntax error, got {exc.sqlstate}: {exc}"
            ) from exc


def aborted_parse(connect):
    q = "SELECT %s::int * 2 AS reg_aborted_parse"
    c = connect()
    try:
        c.execute("SELECT 1 / %s", [0])
        raise AssertionError("division by zero did not fail")
    except errors.DivisionByZero:
        pass
    try:
        c.execute(q, [21], prepare=True)
        raise AssertionError("a query in a failed transaction did not fail")
    except errors.InFailedSqlTransaction:
        pass
    c.rollback()
    got = c.execute(q, [21], prepare=True).fetchone()
    check(got == (42,), f"after the rollback: {got!r}")
    c.commit()


def pipeline_skipped_parse(connect):
    q = "SELECT %s::int * 3 AS reg_pipeline_parse"
    c = connect(autocommit=True)
    try:
        with c.pipeline():
            c.execute("SELECT 1 / %s", [0])
            c.execute(q, [1], prepare=True)
        raise AssertionError("the pipeline did not fail")
    except errors.DivisionByZero:
        pass
    got = c.execute(q, [14], prepare=True).fetchone()
    check(got == (42,), f"after the failed pipeline: {got!r}")


CASES = {
    f.__name__: f
    for f in (rollback_deallocate_all, failed_parse, aborted_parse, pipeline_skipped_parse)
}


def main(argv):
    host, port, user, password, db, case = argv

    def connect(**kw):
        return psycopg.connect(
            host=host,
            port=port,
            user=user,
            password=password,
            dbname=db,
            application_name=f"psycopg-regressions-{case}",
            connect_timeout=10,
            **kw,
        )

    CASES[case](connect)
    print(f"OK psycopg-regressions {case}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 7 or sys.argv[6] not in CASES:
        print(__doc__, flush=True)
        sys.exit(2)
    try:
        main(sys.argv[1:])
    except BaseException as exc:  # noqa: BLE001
        traceback.print_exc()
        print(f"FAILED psycopg-regressions {sys.argv[6]}: {exc!r}", flush=True)
        sys.exit(1)
