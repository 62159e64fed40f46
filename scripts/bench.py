#!/usr/bin/env python3
"""Measures pgbouncers against PgBouncer on this machine, in one sitting, interleaved.

Run through scripts/bench.sh, which installs what is missing and builds the release binary.
Everything is on loopback with a throwaway PostgreSQL. Every pooler gets the same settings:
transaction pooling, pool size 20, SCRAM-SHA-256 with the same auth file, 200 prepared
statements where the pooler has them. Runs alternate (the anchor PgBouncer, pgbouncers, the
second PgBouncer, ...) and the report gives medians and ratios. Pooler CPU is utime+stime of
every process of the pooler, read from /proc before and after a run; wake-ups are voluntary
context switches (/proc for the poolers and PostgreSQL, getrusage for pgbench). The TLS
scenarios give both poolers the same throwaway certificate (made with openssl) and
client_tls_sslmode = require, and run pgbench with sslmode=require.

usage: bench.py [--quick] [--pairs N] [--secs S] [--idle N,N] [--only GROUPS] [--pgbouncer PATH]
                [--pgbouncer2 PATH|none] [--callgrind] [--perf] [--out FILE]
"""
import argparse
import asyncio
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "pgbouncers")
RELAY_BIN = os.path.join(ROOT, "target", "release", "examples", "null_relay")
RELAY_PORT = 8532
DIR = os.environ.get("BENCH_DIR", "/tmp/pgbouncers-bench")
PG_PORT, PGB_PORT, OURS_PORT, HAPROXY_PORT = 15532, 16532, 6532, 7532
PASSWORD = "benchpw"
TLS_DIR = f"{DIR}/tls"
# The anchor PgBouncer: the newest one, 1.25, where ../shared/bench/build-pgbouncer.sh put it
# (or --pgbouncer), else Debian's package. When the anchor is not Debian's, Debian's 1.18 runs
# beside it as a second column (--pgbouncer2 none leaves it out).
PGBOUNCER_125 = os.environ.get("PGBOUNCER_125", "/tmp/pgbouncer-1.25/build/pgbouncer")
PGBOUNCER = "pgbouncer"
PGBOUNCER2 = None
# Scenario groups, in the order they run; --only picks some of them.
GROUPS = ("select", "prepared", "many", "rate", "latency", "login", "tls", "idle", "proxy", "workers")


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def as_postgres(cmd):
    """PostgreSQL and PgBouncer refuse to run as root."""
    if os.geteuid() == 0:
        return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"] + cmd
    return cmd


def pg_bindir():
    out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
    if out and os.path.exists(os.path.join(out, "initdb")):
        return out
    dirs = sorted(d for d in os.listdir("/usr/lib/postgresql"))
    return f"/usr/lib/postgresql/{dirs[-1]}/bin"


# ---------------------------------------------------------------- processes and /proc

def tree(pid):
    """A process and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except FileNotFoundError:
            pass
    return out


def cpu_split(pids):
    """(user, system) CPU seconds of the processes."""
    user = system = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            user += int(parts[11])
            system += int(parts[12])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return user / TICK, system / TICK


def proc_sum(pids, name, key):
    """The sum over the processes of one `key: value` line of /proc/PID/<name>."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/{name}") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith(key)), 0)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def switches(pids):
    """Voluntary context switches of the processes: how often each went to sleep and was woken."""
    return proc_sum(pids, "status", "voluntary_ctxt_switches:")


def pss_kb(pids):
    return proc_sum(pids, "smaps_rollup", "Pss:")


def version_of(binary):
    """`PgBouncer 1.25.2` and (1, 25) from `binary --version`."""
    line = sh([binary, "--version"]).stdout.splitlines()[0]
    m = re.search(r"(\d+)\.(\d+)", line)
    return line.strip(), (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def wait_port(port, timeout=10):
    import socket
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


# ---------------------------------------------------------------- the poolers

class Pooler:
    name = ""
    port = 0

    def pids(self):
        raise NotImplementedError

    def stop(self):
        raise NotImplementedError


class PgBouncer(Pooler):
    """The Debian package (or --pgbouncer); `procs` > 1 runs that many processes with so_reuseport.
    With `tls`, clients must use TLS, with the certificate from make_certificate()."""

    def __init__(self, procs=1, port=PGB_PORT, tls=False, binary=None, name="PgBouncer"):
        self.name = name if procs == 1 else f"{name} x{procs}"
        self.binary = binary or PGBOUNCER
        self.version, ver = version_of(self.binary)
        # Transaction pooling keeps prepared statements from 1.21 on; both poolers get 200.
        self.prepared = ver >= (1, 21)
        self.port, self.procs, self.pidfiles = port, procs, []
        for i in range(procs):
            ini = f"{DIR}/pgbouncer-{port}-{i}.ini"
            pidfile = f"{DIR}/pgbouncer-{port}-{i}.pid"
            with open(ini, "w") as f:
                f.write(f"""[databases]
bench = host=127.0.0.1 port={PG_PORT} dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {DIR}/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 20000
so_reuseport = {1 if procs > 1 else 0}
logfile = {DIR}/pgbouncer-{port}-{i}.log
pidfile = {pidfile}
log_connections = 0
log_disconnections = 0
ignore_startup_parameters = extra_float_digits
""")
                if self.prepared:
                    f.write("max_prepared_statements = 200\n")
                if tls:
                    f.write(f"client_tls_sslmode = require\nclient_tls_cert_file = {TLS_DIR}/server.crt\n"
                            f"client_tls_key_file = {TLS_DIR}/server.key\n")
            os.chmod(ini, 0o644)
            if os.geteuid() == 0:
                shutil.chown(ini, "postgres")
            subprocess.run(as_postgres([self.binary, "-d", ini]), check=True)
            self.pidfiles.append(pidfile)
        wait_port(port)
        time.sleep(0.3)

    def pids(self):
        out = []
        for pf in self.pidfiles:
            try:
                out.append(int(open(pf).read()))
            except (FileNotFoundError, ValueError):
                pass
        return out

    def stop(self):
        for p in self.pids():
            try:
                os.kill(p, signal.SIGINT)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


class Pgbouncers(Pooler):
    def __init__(self, workers=1, port=OURS_PORT, proxy=False, tls=False, cmd_prefix=(), cwd=None):
        self.name = "pgbouncers" if workers == 1 else f"pgbouncers w{workers}"
        self.port = port
        cfg = f"{DIR}/pgbouncers-{port}-{workers}-{int(proxy)}{'-tls' if tls else ''}.yaml"
        with open(cfg, "w") as f:
            f.write(f"""listen_addr: 127.0.0.1
listen_port: {port}
workers: {workers}
pool_mode: transaction
default_pool_size: 20
max_client_conn: 20000
auth_type: scram-sha-256
auth_file: {DIR}/userlist.txt
log_connections: false
log_disconnections: false
log_stats: false
max_prepared_statements: 200
databases:
  bench:
    host: 127.0.0.1
    port: {PG_PORT}
""")
            if proxy:
                f.write("proxy_protocol: required\nproxy_trusted: [127.0.0.2/32]\n")
            if tls:
                f.write(f"client_tls_sslmode: require\nclient_tls_cert_file: {TLS_DIR}/server.crt\n"
                        f"client_tls_key_file: {TLS_DIR}/server.key\n")
        os.chmod(cfg, 0o644)
        self.log = open(f"{DIR}/pgbouncers.log", "a")
        self.proc = subprocess.Popen(
            as_postgres(list(cmd_prefix) + [BIN, "-c", cfg]),
            stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd)
        wait_port(port, timeout=60)
        time.sleep(0.3)

    def pids(self):
        return tree(self.proc.pid)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class NullRelay(Pooler):
    """The floor: every client gets its own PostgreSQL connection and bytes just move, two
    reads and two writes per transaction (worker/examples/null_relay.rs)."""

    def __init__(self, port=RELAY_PORT):
        self.name = "null relay"
        self.port = port
        self.log = open(f"{DIR}/null_relay.log", "a")
        self.proc = subprocess.Popen(
            as_postgres([RELAY_BIN, str(port), f"127.0.0.1:{PG_PORT}"]),
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(port, timeout=30)

    def pids(self):
        return tree(self.proc.pid)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


# ---------------------------------------------------------------- measurements

def client_env(sslmode=None):
    """libpq's environment: the password, and PGSSLMODE when a scenario sets one (without it,
    libpq's default prefer asks for TLS and the poolers without TLS answer no)."""
    env = dict(os.environ, PGPASSWORD=PASSWORD)
    if sslmode:
        env["PGSSLMODE"] = sslmode
    return env


def pgbench(port, args, secs, host="127.0.0.1", sslmode=None):
    cmd = ["pgbench", "-h", host, "-p", str(port), "-U", "bench", "-n", "-T", str(secs)] + args + ["bench"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=client_env(sslmode))
    out = r.stdout + r.stderr
    tx = re.search(r"number of transactions actually processed: (\d+)", out)
    tps = re.search(r"tps = ([\d.]+) \((?:without initial connection time|including reconnection times)\)", out)
    lat = re.search(r"latency average = ([\d.]+) ms", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    if not tx or not tps:
        raise SystemExit(f"pgbench failed:\n{' '.join(cmd)}\n{out}")
    return {
        "tx": int(tx.group(1)),
        "tps": float(tps.group(1)),
        "lat_ms": float(lat.group(1)) if lat else float("nan"),
        "failed": int(failed.group(1)) if failed else 0,
    }


def host_busy():
    """Busy CPU seconds of the whole machine: every field of /proc/stat's cpu line but idle and iowait."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICK


def postgres_pids():
    try:
        with open(f"{DIR}/pg/postmaster.pid") as f:
            return tree(int(f.readline()))
    except (FileNotFoundError, ValueError):
        return []


def measure(pooler, args, secs, port=None, sslmode=None):
    u0, s0 = cpu_split(pooler.pids())
    h0, pg0, t0 = host_busy(), sum(cpu_split(postgres_pids())), os.times()
    # Wake-ups: voluntary context switches, each a sleep that something's write ended.
    z0 = (switches(pooler.pids()), switches(postgres_pids()), resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw)
    w0 = time.monotonic()
    r = pgbench(port or pooler.port, args, secs, sslmode=sslmode)
    r["host_busy"] = (host_busy() - h0) / (time.monotonic() - w0) / os.cpu_count()
    z1 = (switches(pooler.pids()), switches(postgres_pids()), resource.getrusage(resource.RUSAGE_CHILDREN).ru_nvcsw)
    u1, s1 = cpu_split(pooler.pids())
    h1, pg1, t1 = host_busy(), sum(cpu_split(postgres_pids())), os.times()
    for key, a, b in zip(("pooler_wakeups_per_tx", "pg_wakeups_per_tx", "pgbench_wakeups_per_tx"), z0, z1):
        r[key] = (b - a) / r["tx"] if r["tx"] else float("nan")
    c0, c1 = u0 + s0, u1 + s1
    # The whole machine's CPU, split by who spent it: what bounds throughput on a shared host.
    # Backends that exit during the run are missed in the PostgreSQL figure (none do with a
    # warm pool); pgbench is this script's only child that finishes during the run.
    bench_cpu = (t1.children_user + t1.children_system) - (t0.children_user + t0.children_system)
    for key, cpu in (("host_us_per_tx", h1 - h0), ("pg_us_per_tx", pg1 - pg0), ("pgbench_us_per_tx", bench_cpu)):
        r[key] = cpu * 1e6 / r["tx"] if r["tx"] else float("nan")
    r["cpu_s"] = c1 - c0
    # User time is the pooler's own code; system time is mostly the TCP stack working for it.
    r["user_us_per_tx"] = (u1 - u0) * 1e6 / r["tx"] if r["tx"] else float("nan")
    r["sys_us_per_tx"] = (s1 - s0) * 1e6 / r["tx"] if r["tx"] else float("nan")
    r["cpu_ms_per_1k"] = (c1 - c0) * 1000 / (r["tx"] / 1000) if r["tx"] else float("nan")
    r["cpu_us_per_tx"] = (c1 - c0) * 1e6 / r["tx"] if r["tx"] else float("nan")
    return r


async def open_idle(port, n, tls=False):
    import asyncpg
    import ssl
    sem = asyncio.Semaphore(64)
    # sslmode=require: encrypted, certificate not checked (as the TLS scenarios' pgbench).
    ctx = False
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE

    async def one():
        async with sem:
            return await asyncpg.connect(host="127.0.0.1", port=port, user="bench", password=PASSWORD,
                                         database="bench", statement_cache_size=0, ssl=ctx, timeout=120)
    return await asyncio.gather(*[one() for _ in range(n)])


def idle_memory(pooler, n, tls=False):
    base = pss_kb(pooler.pids())

    async def run():
        conns = await open_idle(pooler.port, n, tls)
        await asyncio.sleep(1.5)
        after = pss_kb(pooler.pids())
        await asyncio.gather(*[c.close() for c in conns])
        return after
    after = asyncio.run(run())
    return {"pss_before_kb": base, "pss_after_kb": after, "bytes_per_client": (after - base) * 1024 / n}


# ---------------------------------------------------------------- set-up

def setup_postgres(quick):
    os.makedirs(DIR, exist_ok=True)
    os.chmod(DIR, 0o755)
    if os.geteuid() == 0:
        shutil.chown(DIR, "postgres", "postgres")
    bindir = pg_bindir()
    data = f"{DIR}/pg"
    if not os.path.exists(data):
        sh(as_postgres([f"{bindir}/initdb", "-D", data, "-U", "postgres", "--auth-local=trust",
                        "--auth-host=scram-sha-256", "--no-sync"]))
        with open(f"{data}/postgresql.conf", "a") as f:
            f.write(f"port = {PG_PORT}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{DIR}'\n"
                    "max_connections = 300\nshared_buffers = 256MB\nfsync = off\nsynchronous_commit = off\n")
    sh(as_postgres([f"{bindir}/pg_ctl", "-D", data, "-l", f"{DIR}/pg.log", "-w", "start"]))
    psql = ["psql", "-XqAt", "-h", DIR, "-p", str(PG_PORT), "-U", "postgres"]
    sh(psql + ["-c", "DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname='bench') THEN "
                     f"CREATE ROLE bench LOGIN SUPERUSER PASSWORD '{PASSWORD}'; END IF; END$$"])
    if sh(psql + ["-c", "SELECT 1 FROM pg_database WHERE datname='bench'"]).stdout.strip() != "1":
        sh(psql + ["-c", "CREATE DATABASE bench OWNER bench"])
        sh(["pgbench", "-q", "-i", "-s", "1" if quick else "10", "-h", "127.0.0.1", "-p", str(PG_PORT),
            "-U", "bench", "bench"], env=dict(os.environ, PGPASSWORD=PASSWORD))
    with open(f"{DIR}/userlist.txt", "w") as f:
        f.write(f'"bench" "{PASSWORD}"\n')
    os.chmod(f"{DIR}/userlist.txt", 0o644)
    return bindir


def make_certificate():
    """A throwaway CA and a certificate for localhost and 127.0.0.1 that it signs (ECDSA P-256, as
    tests/tls.rs makes them), in TLS_DIR, readable by the user the poolers run as."""
    os.makedirs(TLS_DIR, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for cmd in (["req", "-x509"] + ec + ["-keyout", "ca.key", "-out", "ca.crt", "-days", "3", "-subj", "/CN=bench CA"],
                ["req", "-new"] + ec + ["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
                                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", "server.crt", "-days", "3", "-copy_extensions", "copy"]):
        sh(["openssl"] + cmd, cwd=TLS_DIR)
    for f in os.listdir(TLS_DIR):
        os.chmod(f"{TLS_DIR}/{f}", 0o600 if f.endswith(".key") else 0o644)
        if os.geteuid() == 0:
            shutil.chown(f"{TLS_DIR}/{f}", "postgres", "postgres")


def tls_session(port):
    """What psql negotiates with a pooler (sslmode=require): `TLSv1.3 TLS_AES_256_GCM_SHA384`."""
    r = subprocess.run(["psql", "-X", "-h", "127.0.0.1", "-p", str(port), "-U", "bench", "-c", "\\conninfo", "bench"],
                       capture_output=True, text=True, env=client_env("require"))
    m = re.search(r"SSL connection \(protocol: (\S+), cipher: (\S+),", r.stdout)
    if not m:
        raise SystemExit(f"no TLS session with the pooler on {port}:\n{r.stdout}{r.stderr}")
    return f"{m.group(1)} {m.group(2)}"


def stop_postgres(bindir):
    subprocess.run(as_postgres([f"{bindir}/pg_ctl", "-D", f"{DIR}/pg", "-m", "fast", "-w", "stop"]),
                   capture_output=True)


class Haproxy:
    def __init__(self):
        cfg = f"{DIR}/haproxy.cfg"
        with open(cfg, "w") as f:
            f.write(f"""global
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
listen pg
    bind 127.0.0.1:{HAPROXY_PORT}
    server p 127.0.0.1:{OURS_PORT} send-proxy-v2 source 127.0.0.2
""")
        exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
        self.log = open(f"{DIR}/haproxy.log", "w")
        self.proc = subprocess.Popen([exe, "-f", cfg, "-db"], stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(HAPROXY_PORT)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


# ---------------------------------------------------------------- the report

def med(xs):
    return statistics.median(xs) if xs else float("nan")


class Report:
    """The table: pgbouncers, the anchor PgBouncer and their ratio, which the targets apply to,
    then the second PgBouncer (Debian's 1.18) and pgbouncers' ratio to it where it ran."""

    def __init__(self, anchor="PgBouncer", second=None):
        self.anchor, self.second = anchor, second
        self.rows = []
        self.notes = []

    def add(self, scenario, metric, ours, theirs, better, target=None, note="", second=None):
        ratio = ours / theirs if theirs else float("nan")
        if theirs is None:
            # The anchor could not run it (1.18 has no prepared statements in transaction pooling).
            target, note = None, (note + " (the anchor cannot run this)").strip()
        self.rows.append((scenario, metric, ours, theirs, ratio, better, target, note, second))

    def markdown(self):
        def num(x):
            return "" if x is None else f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"
        head = f"| scenario | metric | pgbouncers | {self.anchor} | ratio | target | met |"
        rule = "|---|---|---:|---:|---:|---|---|"
        if self.second:
            head += f" {self.second} | ratio |"
            rule += "---:|---:|"
        out = [head, rule]
        for scenario, metric, ours, theirs, ratio, better, target, note, second in self.rows:
            met = ""
            if target is not None:
                ok = ratio >= target if better == "higher" else ratio <= target
                met = "yes" if ok else "no"
                target = f"{'≥' if better == 'higher' else '≤'} {target}"
            line = f"| {scenario} | {metric} | {num(ours)} | {num(theirs)} | {ratio:.2f} | {target or ''} | {met} |"
            if self.second:
                line += (f" {num(second)} | {ours / second:.2f} |" if second else " | |")
            out.append(line + (f" {note}" if note else ""))
        out.extend(f"\n{n}" for n in self.notes)
        return "\n".join(out)


def throughput_bound(res):
    """What the tps target asks of the pooler when pooler, PostgreSQL and pgbench share the CPUs.

    With the host CPU-bound, tps is CPUs / (host CPU per transaction). Holding everything but the
    pooler at what it cost next to PgBouncer gives the best tps ratio any pooler could reach here
    (one that cost nothing), and the pooler CPU per transaction that 1.15x would need.
    """
    host = med([r["host_us_per_tx"] for r in res["PgBouncer"]])
    theirs = med([r["cpu_us_per_tx"] for r in res["PgBouncer"]])
    ours = med([r["cpu_us_per_tx"] for r in res["pgbouncers"]])
    busy = med([r["host_busy"] for r in res["PgBouncer"]])
    rest = host - theirs
    return (f"Throughput bound (-S -c 50): next to PgBouncer the host was {busy:.0%} busy and spent "
            f"{host:.1f} µs of CPU per transaction, {theirs:.1f} of them in PgBouncer ({theirs / host:.0%}). "
            f"A pooler that cost nothing would reach at most {host / rest:.2f}x PgBouncer's tps on this host; "
            f"at pgbouncers' {ours:.1f} µs the expectation is {host / (rest + ours):.2f}x, and 1.15x needs "
            f"≤ {host / 1.15 - rest:.1f} µs ({(host / 1.15 - rest) / theirs:.2f}x PgBouncer's CPU per transaction).")


def pairs_of(run, pairs, poolers):
    """Runs `run(pooler)` alternating over the poolers `pairs` times; results per pooler."""
    results = {p.name: [] for p in poolers}
    for _ in range(pairs):
        for p in poolers:
            results[p.name].append(run(p))
    return results


def proxy_scenario(a, report, raw, started):
    """The PROXY v2 header through HAProxy, against a direct connection to the same pooler."""
    plain = Pgbouncers()
    started.append(plain)
    direct_login = pairs_of(lambda p: measure(p, ["-S", "-C", "-c", "8", "-j", "2"], a.secs), a.pairs, [plain])
    plain.stop()
    started.clear()
    proxied = Pgbouncers(proxy=True)
    started.append(proxied)
    hap = Haproxy()
    try:
        via = pairs_of(lambda p: measure(p, ["-S", "-C", "-c", "8", "-j", "2"], a.secs, port=HAPROXY_PORT),
                       a.pairs, [proxied])
    finally:
        hap.stop()
    proxied.stop()
    started.clear()
    raw.append(("PROXY v2 via HAProxy", {"direct": direct_login["pgbouncers"], "haproxy": via["pgbouncers"]}))
    d = med([r["cpu_us_per_tx"] for r in direct_login["pgbouncers"]])
    v = med([r["cpu_us_per_tx"] for r in via["pgbouncers"]])
    report.add("login with PROXY v2 header (pgbouncers)", "CPU µs / login", v, d, "lower",
               note="(ratio: with the header / without)")


def workers_scenario(a, report, raw, started):
    """Two workers against two PgBouncer processes with so_reuseport, and each against its
    single-process self, all four interleaved."""
    pgb2, ours2 = PgBouncer(procs=2), Pgbouncers(workers=2)
    pgb1, ours1 = PgBouncer(port=PGB_PORT + 1), Pgbouncers(port=OURS_PORT + 1)
    four = [pgb2, ours2, pgb1, ours1]
    started += four
    res = pairs_of(lambda p: measure(p, ["-S", "-c", "50", "-j", "2"], a.secs), a.pairs, four)
    raw.append(("1 and 2 processes: pgbench -S -c 50", res))

    def m(name, key):
        return med([r[key] for r in res[name]])
    report.add("2 workers vs 2 PgBouncers (so_reuseport)", "tps", m("pgbouncers w2", "tps"),
               m("PgBouncer x2", "tps"), "higher", 1.0)
    report.add("2 workers vs 2 PgBouncers (so_reuseport)", "CPU ms / 1k tx", m("pgbouncers w2", "cpu_ms_per_1k"),
               m("PgBouncer x2", "cpu_ms_per_1k"), "lower")
    report.add("pgbouncers 2 workers vs 1 worker", "CPU ms / 1k tx", m("pgbouncers w2", "cpu_ms_per_1k"),
               m("pgbouncers", "cpu_ms_per_1k"), "lower", 1.0, note="(ratio: 2 workers / 1 worker)")
    report.add("PgBouncer 2 processes vs 1", "CPU ms / 1k tx", m("PgBouncer x2", "cpu_ms_per_1k"),
               m("PgBouncer", "cpu_ms_per_1k"), "lower", note="(ratio: 2 processes / 1, for reference)")
    for p in started:
        p.stop()
    started.clear()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a smoke run: short, one pair, few idle clients")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--secs", type=int, default=10)
    ap.add_argument("--idle", default="2000,10000")
    ap.add_argument("--callgrind", action="store_true", help="instructions per transaction under callgrind")
    ap.add_argument("--perf", action="store_true", help="a system-call profile of each pooler with perf")
    ap.add_argument("--only", default=",".join(GROUPS),
                    help=f"run only these scenario groups, comma-separated, of: {','.join(GROUPS)}")
    ap.add_argument("--pgbouncer", default=None,
                    help="the anchor PgBouncer binary (default: 1.25 from ../shared/bench/build-pgbouncer.sh "
                         f"at {PGBOUNCER_125} when it is there, else the Debian package's)")
    ap.add_argument("--pgbouncer2", default=None,
                    help="a second PgBouncer for a column of its own (default: Debian's, when the anchor is "
                         "another; 'none' for no second column)")
    ap.add_argument("--out", default=f"{DIR}/results.md")
    a = ap.parse_args()
    if a.quick:
        a.pairs, a.secs, a.idle = 1, 2, "100"
    idle_counts = [int(x) for x in a.idle.split(",") if x]
    only = [g for g in a.only.split(",") if g]
    unknown = [g for g in only if g not in GROUPS]
    if unknown:
        ap.error(f"--only: unknown group(s) {','.join(unknown)}; the groups are {','.join(GROUPS)}")

    def want(group):
        return group in only
    global PGBOUNCER, PGBOUNCER2
    PGBOUNCER = a.pgbouncer or (PGBOUNCER_125 if os.access(PGBOUNCER_125, os.X_OK) else "pgbouncer")
    debian = shutil.which("pgbouncer")
    PGBOUNCER2 = a.pgbouncer2 or (debian if debian and os.path.realpath(debian) != os.path.realpath(
        shutil.which(PGBOUNCER) or PGBOUNCER) else None)
    if PGBOUNCER2 == "none":
        PGBOUNCER2 = None
    pgbouncer_version = version_of(PGBOUNCER)[0]
    second_version = version_of(PGBOUNCER2)[0] if PGBOUNCER2 else None
    bindir = setup_postgres(a.quick)
    if want("tls"):
        make_certificate()
    report = Report(pgbouncer_version, second_version)
    raw = []
    started = []
    failures = []
    try:
        pgb, ours = PgBouncer(), Pgbouncers()
        started += [pgb, ours]
        both = [pgb, ours]
        second = PgBouncer(port=PGB_PORT + 3, binary=PGBOUNCER2, name="PgBouncer 2") if PGBOUNCER2 else None
        # The anchor, pgbouncers and the second PgBouncer, interleaved in that order.
        three = both + ([second] if second else [])
        if second:
            started.append(second)

        def scenario(label, args, poolers=both, sslmode=None, run=None):
            run = run or (lambda p: measure(p, args, a.secs, sslmode=sslmode))
            res = pairs_of(run, a.pairs, poolers)
            raw.append((label, res))
            for name, rs in res.items():
                failed = sum(r["failed"] for r in rs)
                if failed:
                    print(f"ERROR: {name} had {failed} failed transactions in {label}", file=sys.stderr)
                    failures.append(f"{name}: {label}")
            return res

        def compare(label, res, key, metric, better, target=None, note="", scale=1.0):
            """A row from the medians of one key, for pgbouncers, the anchor and the second PgBouncer."""
            def m(name):
                return med([r[key] for r in res[name]]) * scale if name in res else None
            report.add(label, metric, m("pgbouncers"), m("PgBouncer"), better, target, note, m("PgBouncer 2"))

        def cost_rows(label, res, cpu_target=0.75, tps_target=1.0, host_target=1.0):
            """Issue 18's rows for a throughput scenario: tps, the pooler's CPU and its split, the
            neighbours' CPU, the whole host's, and how often each side was woken per transaction."""
            if tps_target is not None:
                compare(label, res, "tps", "tps", "higher", tps_target)
            compare(label, res, "cpu_us_per_tx", "CPU µs / tx", "lower", cpu_target)
            for key, metric, target in (("user_us_per_tx", "user CPU µs / tx", None),
                                        ("sys_us_per_tx", "kernel CPU µs / tx", None),
                                        ("pg_us_per_tx", "PostgreSQL CPU µs / tx", None),
                                        ("pgbench_us_per_tx", "pgbench CPU µs / tx", None),
                                        ("host_us_per_tx", "whole host CPU µs / tx", host_target),
                                        ("pooler_wakeups_per_tx", "pooler wake-ups / tx", None),
                                        ("pg_wakeups_per_tx", "PostgreSQL wake-ups / tx", None),
                                        ("pgbench_wakeups_per_tx", "pgbench wake-ups / tx", None)):
                compare(label, res, key, metric, "lower", target)

        # 1 and 2: throughput and CPU per transaction; the simple protocol also through the
        # null relay, the floor every pooler's CPU per transaction is a multiple of.
        plain_select = None
        if want("select"):
            relay = NullRelay()
            started.append(relay)
            label = "pgbench -S -c 50"
            plain_select = res = scenario(label, ["-S", "-c", "50", "-j", "2"], three + [relay])
            floor = med([r["cpu_us_per_tx"] for r in res["null relay"]])
            mult = {n: med([r["cpu_us_per_tx"] for r in res[n]]) / floor for n in res if n != "null relay"}
            report.add(label, "CPU / tx as a multiple of the null relay's", mult["pgbouncers"], 1.0, "lower",
                       1.15, note=f"(the relay: {floor:.1f} µs / tx; the anchor's multiple: {mult['PgBouncer']:.2f}"
                       + (f", the second's: {mult['PgBouncer 2']:.2f}" if "PgBouncer 2" in mult else "") + ")")
            cost_rows(label, res)
            report.notes.append(throughput_bound(res))
            relay.stop()
            started.remove(relay)
            label = "pgbench -S -c 50 -M extended"
            cost_rows(label, scenario(label, ["-S", "-c", "50", "-j", "2", "-M", "extended"], three))

        if a.perf and want("select"):
            try:
                report_perf(report, both, a)
            except (Exception, SystemExit) as e:
                print(f"ERROR: perf profile failed: {e}", file=sys.stderr)
                report.notes.append(f"perf profile failed: {e}")

        # Named prepared statements in transaction pooling (PgBouncer 1.21+; not Debian's 1.18).
        if want("prepared"):
            label = "pgbench -S -c 50 -M prepared"
            cost_rows(label, scenario(label, ["-S", "-c", "50", "-j", "2", "-M", "prepared"],
                                      [p for p in three if not isinstance(p, PgBouncer) or p.prepared]))

        # Many clients on 20 server connections: 2,000 (200 in --quick) pgbench clients.
        if want("many"):
            n = "200" if a.quick else "2000"
            label = f"pgbench -S -c {n}"
            # Not the second PgBouncer (1.18): its 2,000 SCRAM logins at ~5 ms each fill
            # pgbench's whole -T window, which counts connection time.
            cost_rows(label, scenario(label, ["-S", "-c", n, "-j", "2"], both))

        # Latency under a fixed rate: 50 % and 90 % of the anchor's peak -S -c 50 tps, from
        # pgbench's per-transaction log (latency counted from each transaction's scheduled start).
        if want("rate"):
            peak = med([r["tps"] for r in plain_select["PgBouncer"]]) if plain_select else \
                measure(pgb, ["-S", "-c", "50", "-j", "2"], a.secs)["tps"]
            for share in (0.5, 0.9):
                rate = int(peak * share)
                label = f"pgbench -S -c 50 -R {rate} ({share:.0%} of the anchor's peak)"
                res = scenario(label, None, three, run=lambda p: rate_latency(p, rate, a.secs))
                compare(label, res, "p50_us", "p50 latency µs", "lower", 1.0)
                compare(label, res, "p99_us", "p99 latency µs", "lower", 1.0)
                compare(label, res, "cpu_us_per_tx", "CPU µs / tx", "lower")
                compare(label, res, "pgbench_wakeups_per_tx", "pgbench wake-ups / tx", "lower")

        # 3: latency added at one client, over a direct connection.
        class Direct(Pooler):
            name, port = "direct", PG_PORT

            def pids(self):
                return []
        if want("latency"):
            direct = pairs_of(lambda p: measure(p, ["-S", "-c", "1"], a.secs), a.pairs, [Direct()] + three)
            raw.append(("pgbench -S -c 1", direct))
            base = med([r["lat_ms"] for r in direct["direct"]])
            added = {n: med([r["lat_ms"] for r in direct[n]]) * 1000 - base * 1000 for n in direct if n != "direct"}
            report.add("pgbench -S -c 1", "added latency µs", added["pgbouncers"], added["PgBouncer"],
                       "lower", 1.0, note=f"(direct {base * 1000:.0f} µs)", second=added.get("PgBouncer 2"))

        # 4: SCRAM login storm: a new connection per transaction.
        plain_login = None
        if want("login"):
            plain_login = scenario("pgbench -S -C -c 8", ["-S", "-C", "-c", "8", "-j", "2"], three)
            compare("pgbench -S -C -c 8 (SCRAM logins)", plain_login, "cpu_us_per_tx", "CPU µs / login", "lower", 0.5)

        # 4b: the same over TLS (client_tls_sslmode = require on both, pgbench with sslmode=require),
        # against a second pair of poolers with the same certificate: throughput, then a login storm
        # where every connection makes a full TLS handshake (libpq resumes no sessions) and SCRAM.
        if want("tls"):
            tls_pair = [PgBouncer(port=PGB_PORT + 2, tls=True), Pgbouncers(port=OURS_PORT + 2, tls=True)]
            started += tls_pair
            sessions = {p.name: tls_session(p.port) for p in tls_pair}
            label = "TLS: pgbench -S -c 50"
            res = scenario(label, ["-S", "-c", "50", "-j", "2"], tls_pair, "require")
            report.add(label, "tps", med([r["tps"] for r in res["pgbouncers"]]),
                       med([r["tps"] for r in res["PgBouncer"]]), "higher")
            for key, metric, target in (("cpu_ms_per_1k", "CPU ms / 1k tx", 0.9),
                                        ("user_us_per_tx", "user CPU µs / tx", None),
                                        ("sys_us_per_tx", "kernel CPU µs / tx", None),
                                        ("host_us_per_tx", "whole host CPU µs / tx", None)):
                report.add(label, metric, med([r[key] for r in res["pgbouncers"]]),
                           med([r[key] for r in res["PgBouncer"]]), "lower", target)
            if plain_select:
                # What TLS adds to a transaction: the pooler's CPU per transaction with TLS minus without.
                d = {n: med([r["cpu_us_per_tx"] for r in res[n]]) - med([r["cpu_us_per_tx"] for r in plain_select[n]])
                     for n in ("pgbouncers", "PgBouncer")}
                report.add("TLS share of a transaction (TLS − plain, -S -c 50)", "CPU µs / tx", d["pgbouncers"],
                           d["PgBouncer"], "lower", note="(a difference of two medians: noisy)")
            label = "TLS: pgbench -S -C -c 8"
            res = scenario(label, ["-S", "-C", "-c", "8", "-j", "2"], tls_pair, "require")
            tls_login = {n: med([r["cpu_us_per_tx"] for r in res[n]]) for n in ("pgbouncers", "PgBouncer")}
            report.add(f"{label} (TLS + SCRAM logins)", "CPU µs / login", tls_login["pgbouncers"],
                       tls_login["PgBouncer"], "lower", 0.5)
            if plain_login:
                # What TLS adds to a login: the same storm's CPU with and without TLS, per pooler.
                plain = {n: med([r["cpu_us_per_tx"] for r in plain_login[n]]) for n in ("pgbouncers", "PgBouncer")}
                report.add("TLS share of a login (TLS − plain, -S -C -c 8)", "CPU µs / login",
                           tls_login["pgbouncers"] - plain["pgbouncers"], tls_login["PgBouncer"] - plain["PgBouncer"],
                           "lower", note="(a difference of two medians: noisy)")
            report.notes.append(
                "TLS scenarios: both poolers with client_tls_sslmode = require and the same ECDSA P-256 certificate, "
                "pgbench with sslmode=require; psql negotiated "
                + ", ".join(f"{n}: {v}" for n, v in sessions.items())
                + ". libpq's default channel_binding=prefer uses SCRAM-SHA-256-PLUS where the pooler offers it "
                "(pgbouncers does; PgBouncer does not).")
            # Idle TLS clients: rustls keeps a session and a 4 KiB record buffer per client
            # (its deframer shrinks to that when idle); the pooler's own buffers are lent.
            for n in idle_counts if want("idle") else []:
                mem = {p.name: idle_memory(p, n, tls=True) for p in tls_pair}
                raw.append((f"{n} idle TLS clients", mem))
                report.add(f"{n} idle TLS clients", "bytes / client", mem["pgbouncers"]["bytes_per_client"],
                           mem["PgBouncer"]["bytes_per_client"], "lower", 1.5)
            for p in tls_pair:
                p.stop()
                started.remove(p)

        # 5: memory per idle client, on fresh poolers: the ones above kept the memory the
        # -c 2000 scenario grew, which idle clients would reuse for free.
        if want("idle") and idle_counts:
            fresh = [PgBouncer(port=PGB_PORT + 4), Pgbouncers(port=OURS_PORT + 4)]
            if second:
                fresh.append(PgBouncer(port=PGB_PORT + 5, binary=PGBOUNCER2, name="PgBouncer 2"))
            started += fresh
            for n in idle_counts:
                mem = {p.name: idle_memory(p, n) for p in fresh}
                raw.append((f"{n} idle clients", mem))
                report.add(f"{n} idle clients", "bytes / client", mem["pgbouncers"]["bytes_per_client"],
                           mem["PgBouncer"]["bytes_per_client"], "lower", 1.0,
                           second=mem["PgBouncer 2"]["bytes_per_client"] if second else None)

        # 7: the PROXY v2 header through HAProxy, against a direct connection to the same pooler.
        for p in started:
            p.stop()
        started.clear()
        if want("proxy"):
            proxy_scenario(a, report, raw, started)

        # 6: two workers against two PgBouncer processes with so_reuseport, and each against
        # its single-process self, all four interleaved: this VM's speed drifts within a
        # sitting, so 1 and 2 processes must be measured side by side too.
        if want("workers"):
            workers_scenario(a, report, raw, started)

        if a.callgrind:
            # Instruction counts are extra: a failure here must not lose the table above.
            try:
                report_callgrind(report, a)
            except (Exception, SystemExit) as e:
                print(f"ERROR: callgrind run failed: {e}", file=sys.stderr)
                report.notes.append(f"callgrind run failed: {e}")
    finally:
        for p in started:
            p.stop()
        stop_postgres(bindir)

    machine = (f"{os.cpu_count()} CPUs, kernel {os.uname().release}, "
               f"{time.strftime('%Y-%m-%d %H:%M %Z')}, pairs={a.pairs}, {a.secs}s runs, anchor {pgbouncer_version}"
               + (f", second column {second_version}" if second_version else ""))
    text = f"Machine: {machine}\n\n{report.markdown()}\n"
    print(text)
    with open(a.out, "w") as f:
        f.write(text)
        f.write("\nRaw runs:\n")
        for label, res in raw:
            f.write(f"\n{label}:\n")
            for name, rs in res.items():
                f.write(f"  {name}: {rs}\n")
    print(f"(written to {a.out})")
    if failures:
        sys.exit(f"failed transactions in: {', '.join(failures)}")


def rate_latency(pooler, rate, secs):
    """`pgbench -S -c 50 -R rate` with a per-transaction log: the run's figures plus the p50 and
    p99 of the logged latencies (µs, from each transaction's scheduled start)."""
    prefix = f"{DIR}/latency-{pooler.name.replace(' ', '_')}"

    def logs():
        return [f"{DIR}/{f}" for f in os.listdir(DIR) if f"{DIR}/{f}".startswith(prefix + ".")]
    for f in logs():
        os.remove(f)
    r = measure(pooler, ["-S", "-c", "50", "-j", "2", "-R", str(rate), "--log", f"--log-prefix={prefix}"], secs)
    lat = []
    for f in logs():
        with open(f) as fh:
            # client_id transaction_no time script_no time_epoch time_us [schedule_lag]
            lat.extend(int(parts[2]) for parts in map(str.split, fh) if len(parts) > 2 and parts[2].isdigit())
        os.remove(f)
    if not lat:
        raise SystemExit(f"pgbench -R {rate} through {pooler.name} logged no transactions")
    lat.sort()
    r["p50_us"] = lat[len(lat) // 2]
    r["p99_us"] = lat[min(len(lat) - 1, len(lat) * 99 // 100)]
    return r


def perf_profile(pooler, a, args=("-S", "-c", "50", "-j", "2")):
    """Where one pooler's CPU goes under `pgbench -S -c 50`: `perf record -a -g` (cpu-clock, so it
    works without hardware counters) during a run, its samples grouped by the system call they fall
    in. Shares of the pooler's samples, turned into µs per transaction with the run's CPU figure."""
    data = f"{DIR}/perf-{pooler.name.replace(' ', '_')}.data"
    rec = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "2000", "-a", "-g", "-o", data,
                            "--", "sleep", str(max(a.secs - 2, 1))],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = measure(pooler, list(args), a.secs)
    rec.wait()
    out = subprocess.run(["perf", "script", "-i", data, "-F", "pid,ip,sym"], capture_output=True, text=True,
                         errors="replace").stdout
    pids = {str(p) for p in pooler.pids()}
    groups = {}
    total = 0

    def add(stack):
        nonlocal total
        total += 1
        call = next((f[len("__x64_sys_"):] for _, f in stack if f.startswith("__x64_sys_")), None)
        if call is None:
            key = "outside system calls: user space" if not stack or int(stack[0][0], 16) < 1 << 63 \
                else "outside system calls: kernel (scheduling, interrupts)"
        elif call == "sendto" and any(f == "net_rx_action" for _, f in stack):
            # Loopback delivers in the sender's context: the receiver's TCP input runs here.
            key = "sendto: the receiving side's TCP input" + (
                ", waking the receiver" if any(f == "sock_def_readable" for _, f in stack) else "")
        else:
            key = call
        groups[key] = groups.get(key, 0) + 1

    pid, stack = None, []
    for line in out.splitlines() + [""]:
        if not line.strip():
            if pid in pids:
                add(stack)
            pid, stack = None, []
        elif not line[0].isspace():
            pid = line.split()[0]
        else:
            parts = line.split()
            if len(parts) >= 2:
                stack.append((parts[0], parts[1].split("+")[0]))
    return r, {k: v / total for k, v in groups.items()} if total else {}, total


def report_perf(report, poolers, a):
    if not shutil.which("perf"):
        print("perf not installed: no profile", file=sys.stderr)
        return
    lines = ["Where the CPU goes (`perf record -a -g -e cpu-clock`, one `pgbench -S -c 50` run each), "
             "µs per transaction and share of the pooler's CPU:", "",
             "| | " + " | ".join(p.name for p in poolers) + " |", "|---|" + "---:|" * len(poolers)]
    profiles = [perf_profile(p, a) for p in poolers]
    keys = sorted({k for _, shares, _ in profiles for k in shares},
                  key=lambda k: -max(shares.get(k, 0) for _, shares, _ in profiles))
    for k in keys:
        cells = [f"{shares.get(k, 0) * r['cpu_us_per_tx']:.1f} ({shares.get(k, 0):.0%})" for r, shares, _ in profiles]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("| all (samples) | " + " | ".join(f"{r['cpu_us_per_tx']:.1f} ({n})" for r, _, n in profiles) + " |")
    report.notes.append("\n".join(lines))


def report_callgrind(report, a):
    """Instructions per transaction of one worker: stable across runs, for regressions.

    Two runs under callgrind, one with a warm-up only and one with the warm-up plus `n`
    transactions; the difference in the worker's instruction count, divided by `n`, is the
    cost of a transaction (plus the 4 logins of the second pgbench, with cached SCRAM keys).
    Server logins and the first SCRAM key derivation fall in the warm-up of both runs.
    """
    if not shutil.which("valgrind"):
        print("valgrind not installed: no instruction counts", file=sys.stderr)
        return
    # CALLGRIND_TX overrides, e.g. 4000 with --quick to compare two builds cheaply.
    n = int(os.environ.get("CALLGRIND_TX", 4000 if not a.quick else 400))

    def pgbench_tx(tx):
        subprocess.run(["pgbench", "-h", "127.0.0.1", "-p", str(OURS_PORT), "-U", "bench", "-n", "-S", "-c", "4",
                        "-t", str(tx // 4), "bench"], env=dict(os.environ, PGPASSWORD=PASSWORD),
                       capture_output=True, check=True)

    def worker_instructions(tx):
        for f in os.listdir(DIR):
            if f.startswith("callgrind.out."):
                os.remove(os.path.join(DIR, f))
        # Callgrind's default file name (callgrind.out.<pid>, in the working directory): the
        # workers rewrite their argv for ps titles, which clobbers a --callgrind-out-file string.
        p = Pgbouncers(cmd_prefix=["valgrind", "--tool=callgrind"], cwd=DIR)
        try:
            pgbench_tx(40)
            if tx:
                pgbench_tx(tx)
        finally:
            p.stop()
        best = 0
        for f in os.listdir(DIR):
            if f.startswith("callgrind.out."):
                txt = open(os.path.join(DIR, f)).read()
                m = re.search(r"^summary: (\d+)", txt, re.M) or re.search(r"^totals: (\d+)", txt, re.M)
                if m:
                    best = max(best, int(m.group(1)))
        if not best:
            raise SystemExit("callgrind wrote no counts")
        return best

    base = worker_instructions(0)
    loaded = worker_instructions(n)
    report.notes.append(f"callgrind: {(loaded - base) / n:.0f} instructions per transaction in the worker "
                        f"({n} pgbench -S transactions on 4 connections after a warm-up, their 4 logins "
                        f"with cached SCRAM keys included; warm-up alone: {base} instructions)")


if __name__ == "__main__":
    main()
