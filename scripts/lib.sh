# shellcheck shell=bash
# Shared shell helpers for scripts/*.sh: logging, installing missing Debian packages and Rust components.
#
# Source it (`source scripts/lib.sh`); it only defines functions and changes
# no shell options of its caller.

# ---- output -----------------------------------------------------------------

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

have() { command -v "$1" >/dev/null 2>&1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

# ---- PostgreSQL ---------------------------------------------------------------

# Prints the PostgreSQL server bin dir (the one with initdb), the same way the
# Rust harness finds it: $PG_BINDIR, `pg_config --bindir`, then the newest
# /usr/lib/postgresql/*/bin. Prints nothing and fails if there is none.
pg_bindir() {
    local dir
    if [ -n "${PG_BINDIR:-}" ] && [ -x "$PG_BINDIR/initdb" ]; then
        printf '%s\n' "$PG_BINDIR"
        return 0
    fi
    if have pg_config; then
        dir=$(pg_config --bindir 2>/dev/null || true)
        if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then
            printf '%s\n' "$dir"
            return 0
        fi
    fi
    dir=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null |
        sort -t/ -k5,5n | tail -n 1)
    if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then
        printf '%s\n' "$dir"
        return 0
    fi
    return 1
}

# True if every PostgreSQL program the tests use is there (server + client +
# pgbench, which Debian ships in the server package for some versions and in
# the client package for others: checking the file covers both).
pg_complete() {
    local dir tool
    dir=$(pg_bindir) || return 1
    for tool in initdb pg_ctl postgres psql pgbench; do
        [ -x "$dir/$tool" ] || return 1
    done
    # As root the server runs as this user.
    if is_root; then id postgres >/dev/null 2>&1 || return 1; fi
    return 0
}

# ---- Debian packages ------------------------------------------------------------

# True if a program is on PATH or in an sbin dir (non-root PATHs lack them).
have_prog() {
    have "$1" || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ] || [ -x "/usr/local/sbin/$1" ]
}

# apt-get install, refreshing the package lists only when needed: first try
# with the lists as they are; if that fails (no lists yet, or stale ones),
# `apt-get update` once and try again.
apt_install() {
    [ "$#" -gt 0 ] || return 0
    if ! is_root; then
        die "missing packages: $*; install them with: sudo apt-get install $*"
    fi
    have apt-get || die "missing packages: $*, and no apt-get to install them"
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -q --no-install-recommends
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    log "installing: $*"
    if ! "${apt[@]}" install "$@" </dev/null; then
        log "apt-get update"
        env DEBIAN_FRONTEND=noninteractive apt-get -q update </dev/null ||
            die "apt-get update failed"
        "${apt[@]}" install "$@" </dev/null || die "apt-get install $* failed"
    fi
}

# Stops and disables a system service that a package started on install.
# Containers often have neither a running systemd nor working init scripts,
# so every step may fail and that is fine.
stop_service() {
    local svc=$1
    if have systemctl && [ -d /run/systemd/system ]; then
        systemctl disable --now "$svc" >/dev/null 2>&1 || true
    fi
    if have service; then
        service "$svc" stop >/dev/null 2>&1 || true
    elif [ -x "/etc/init.d/$svc" ]; then
        "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
    fi
    if have update-rc.d; then
        update-rc.d "$svc" disable >/dev/null 2>&1 || true
    fi
}

# Installs what the test suite runs: PostgreSQL (server, client, pgbench),
# HAProxy, PgBouncer (as a reference in benchmarks) and python3. Services the
# packages start are stopped again: the tests start their own instances, and
# a system PgBouncer on 6432 / PostgreSQL on 5432 would only get in the way.
need_test_pkgs() {
    local pkgs=() started_pg=0 started_bouncer=0
    if ! pg_complete; then
        pkgs+=(postgresql postgresql-client postgresql-contrib)
        started_pg=1
    fi
    if ! have_prog haproxy; then pkgs+=(haproxy); fi
    if ! have_prog pgbouncer; then
        pkgs+=(pgbouncer)
        started_bouncer=1
    fi
    if ! have python3; then pkgs+=(python3); fi
    # The TLS tests make their throwaway CA and certificates with it.
    if ! have openssl; then pkgs+=(openssl); fi
    if ! have setpriv && ! have runuser; then pkgs+=(util-linux); fi
    if [ "${#pkgs[@]}" -eq 0 ]; then
        return 0
    fi
    apt_install "${pkgs[@]}"
    if [ "$started_bouncer" -eq 1 ]; then stop_service pgbouncer; fi
    if [ "$started_pg" -eq 1 ]; then stop_service postgresql; fi
    pg_complete || die "PostgreSQL is still incomplete after installing (need initdb, pg_ctl, postgres, psql, pgbench)"
    have_prog haproxy || die "haproxy still missing after installing"
    have_prog pgbouncer || die "pgbouncer still missing after installing"
    have python3 || die "python3 still missing after installing"
    have openssl || die "openssl still missing after installing"
}

# ---- client drivers (tests/clients.rs) ------------------------------------------

# Prints the pgJDBC jar tests/clients.rs will use, the same way it looks:
# $PGJDBC_JAR, Debian's /usr/share/java/postgresql.jar, then ~/.m2. Fails if
# there is none.
pgjdbc_jar() {
    local jar
    if [ -n "${PGJDBC_JAR:-}" ] && [ -f "$PGJDBC_JAR" ]; then
        printf '%s\n' "$PGJDBC_JAR"
        return 0
    fi
    if [ -f /usr/share/java/postgresql.jar ]; then
        printf '%s\n' /usr/share/java/postgresql.jar
        return 0
    fi
    jar=$(find "$HOME/.m2/repository/org/postgresql/postgresql" -name 'postgresql-*.jar' \
        2>/dev/null | sort -V | tail -n 1)
    [ -n "$jar" ] || return 1
    printf '%s\n' "$jar"
}

# Installs the drivers tests/clients.rs runs, only what is missing (so a
# second run takes a second): psycopg 3 and asyncpg with pip, node-postgres
# with `npm ci` from tests/clients/node's lock file, pgJDBC as Debian's
# libpostgresql-jdbc-java (Maven Central is not reachable from every machine
# that runs this; Debian's mirror is), and node, npm, java, pip themselves.
need_client_drivers() {
    local pkgs=() node_dir pip=(python3 -m pip install -q --disable-pip-version-check)
    node_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/clients/node"
    have python3 || die "python3 missing (need_test_pkgs installs it)"
    if ! have node; then pkgs+=(nodejs); fi
    if ! have npm; then pkgs+=(npm); fi
    if ! have java; then pkgs+=(default-jdk-headless); fi
    if ! pgjdbc_jar >/dev/null; then pkgs+=(libpostgresql-jdbc-java); fi
    if ! python3 -c 'import psycopg, asyncpg' 2>/dev/null &&
        ! python3 -m pip --version >/dev/null 2>&1; then
        pkgs+=(python3-pip)
    fi
    if [ "${#pkgs[@]}" -gt 0 ]; then apt_install "${pkgs[@]}"; fi
    have node || die "node still missing after installing"
    have npm || die "npm still missing after installing"
    have java || die "java still missing after installing"
    pgjdbc_jar >/dev/null || die "the pgJDBC jar is still missing after installing"

    if ! python3 -c 'import psycopg, asyncpg' 2>/dev/null; then
        log "pip install psycopg[binary] asyncpg"
        # A Debian-managed python3 refuses plain pip installs (PEP 668).
        "${pip[@]}" 'psycopg[binary]' asyncpg ||
            "${pip[@]}" --break-system-packages 'psycopg[binary]' asyncpg ||
            die "pip install psycopg[binary] asyncpg failed"
        python3 -c 'import psycopg, asyncpg' || die "psycopg/asyncpg still not importable"
    fi

    # npm ci writes node_modules/.package-lock.json: up to date when it is
    # not older than the lock file and pg loads.
    if ! [ "$node_dir/node_modules/.package-lock.json" -nt "$node_dir/package-lock.json" ] ||
        ! (cd "$node_dir" && node -e 'require("pg")') >/dev/null 2>&1; then
        log "npm ci in $node_dir"
        (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error) ||
            die "npm ci in $node_dir failed"
    fi
}

# ---- prometheus-pgbouncer-exporter (tests/exporter.rs) ----------------------------

# The version tests/exporter.rs expects (its metric families come from this one).
EXPORTER_VERSION=2.1.2

# Prints the venv tests/exporter.rs runs the exporter from (it looks in the same place).
exporter_venv() {
    printf '%s\n' "${XDG_CACHE_HOME:-$HOME/.cache}/pgbouncers-test/exporter-venv"
}

# True if the venv has the exporter at EXPORTER_VERSION and everything it imports.
exporter_ok() {
    local venv
    venv=$(exporter_venv)
    [ -x "$venv/bin/pgbouncer-exporter" ] || return 1
    "$venv/bin/python" - "$EXPORTER_VERSION" <<'EOF' >/dev/null 2>&1
import sys, importlib.metadata as m
import prometheus_pgbouncer_exporter.cli, prometheus_pgbouncer_exporter.collector
assert m.version("prometheus-pgbouncer-exporter") == sys.argv[1]
EOF
}

# Installs the prometheus-pgbouncer-exporter from PyPI into its own venv, only when it is
# missing (so a second run takes a fraction of a second), and python3-venv if venvs cannot
# be made. The package pins psycopg2==2.8.5, whose C code no longer builds on current
# Python (3.11: Py_TYPE is not an lvalue), so it goes in with --no-deps, beside
# psycopg2-binary (the same psycopg2 module, as a wheel) and its other dependencies at
# the versions it pins: prometheus_client 0.8.0, python-json-logger 0.1.11, PyYAML>=5.4.1.
need_exporter() {
    local venv pip
    exporter_ok && return 0
    have python3 || die "python3 missing (need_test_pkgs installs it)"
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        apt_install python3-venv
    fi
    venv=$(exporter_venv)
    log "installing prometheus-pgbouncer-exporter $EXPORTER_VERSION into $venv"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv" || die "python3 -m venv $venv failed"
    pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
    # Dependencies first: pip then has nothing to say about the psycopg2 pin.
    "${pip[@]}" --only-binary psycopg2-binary 'psycopg2-binary>=2.9,<3' \
        'prometheus_client==0.8.0' 'python-json-logger==0.1.11' 'PyYAML>=5.4.1' ||
        die "pip install of the exporter's dependencies failed"
    "${pip[@]}" --no-deps "prometheus-pgbouncer-exporter==$EXPORTER_VERSION" ||
        die "pip install prometheus-pgbouncer-exporter==$EXPORTER_VERSION failed"
    exporter_ok || die "prometheus-pgbouncer-exporter still not usable in $venv"
}

# ---- Rust -----------------------------------------------------------------------

# Makes sure cargo and the given rustup components (e.g. rustfmt clippy) exist.
need_rust_components() {
    have cargo || die "cargo not found: install a Rust toolchain (rustup) first"
    local comp cmd missing=()
    for comp in "$@"; do
        case "$comp" in
        rustfmt) cmd=(cargo fmt --version) ;;
        clippy) cmd=(cargo clippy --version) ;;
        *) cmd=(false) ;;
        esac
        if ! "${cmd[@]}" >/dev/null 2>&1; then missing+=("$comp"); fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    have rustup || die "missing Rust components ${missing[*]} and no rustup to add them"
    log "rustup component add ${missing[*]}"
    rustup component add "${missing[@]}" || die "rustup component add ${missing[*]} failed"
}
