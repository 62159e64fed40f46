#!/usr/bin/env python3
"""Writes the committed seed corpora under fuzz/corpus/<target>/.

Real traffic comes from recordings made with record_proxy.py between PostgreSQL 15 and
psql, pgbench (simple, extended, prepared) and pgJDBC 42.5.5, SCRAM-SHA-256 with password
"pencil" (see CAPTURES below); everything else is built here from the protocol
documentation and the repository's example files.

    python3 fuzz/record_proxy.py 25433 <pg port> /tmp/cap &   # then run clients via 25433
    python3 fuzz/make_corpus.py /tmp/cap "<rolpassword of the user>"

Without a capture directory only the hand-made seeds are (re)written. The proxy_header
corpus predates this script and is left alone.
"""

import base64
import hashlib
import hmac
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SEP = b"\xff"

# Recording number -> what made it.
CAPTURES = {
    "000": "psql_select",  # sslmode=prefer, application_name=psql
    "001": "psql_options",  # PGOPTIONS with -c and --, select 1/0
    "002": "psql_session",  # SET, DO with NOTICE, BEGIN/error/ROLLBACK, \d
    "004": "pgbench_simple",
    "006": "pgbench_extended",
    "008": "pgbench_prepared",
    "009": "psql_wrong_password",
    "010": "pgjdbc",  # prepareThreshold default: named S_1 after 5 runs, DEALLOCATE/DISCARD ALL
    "012": "psql_cancel",
}

SSL_REQUEST = 80877103
CANCEL_REQUEST = 80877102
GSSENC_REQUEST = 80877104


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def msg(tag, body=b""):
    return tag + struct.pack(">I", len(body) + 4) + body


def first_packet(code, body=b""):
    return struct.pack(">II", len(body) + 8, code) + body


def startup(params, minor=0):
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params) + b"\0"
    return first_packet((3 << 16) | minor, body)


def split_client(b):
    """(first packets, [(tag, bytes)]) of a client's recording."""
    firsts, i = [], 0
    while i + 8 <= len(b):
        n, code = struct.unpack(">II", b[i : i + 8])
        firsts.append(b[i : i + n])
        i += n
        if code != SSL_REQUEST:
            break
    return firsts, split_messages(b[i:])


def split_messages(b):
    out, i = [], 0
    while i + 5 <= len(b):
        n = struct.unpack(">I", b[i + 1 : i + 5])[0]
        out.append((b[i : i + 1], b[i : i + 1 + n]))
        i += 1 + n
    return out


def after_login(msgs, tag):
    """The messages after the last login message with `tag` (client 'p', server 'Z')."""
    idx = max((k for k, (t, _) in enumerate(msgs) if t == tag), default=-1)
    return msgs[idx + 1 :]


def body(m):
    return m[5:]


EXPECT = {b"P": 0, b"B": 1, b"E": 4, b"C": 5, b"S": 6, b"Q": 7, b"F": 7}


def expect_code(m):
    t = m[:1]
    if t == b"D":
        return 2 if body(m)[:1] == b"S" else 3
    return EXPECT.get(t)


def scram_keys(password, salt, iterations):
    salted = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
    ck = hmac.new(salted, b"Client Key", "sha256").digest()
    sk = hmac.new(salted, b"Server Key", "sha256").digest()
    return ck, sk


def scram_secret(password, salt, iterations):
    ck, sk = scram_keys(password, salt, iterations)
    b64 = lambda x: base64.b64encode(x).decode()
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(hashlib.sha256(ck).digest())}:{b64(sk)}"


def from_captures(capdir, rolpassword):
    streams = {}
    for num, name in CAPTURES.items():
        c = os.path.join(capdir, num + ".c2s")
        if not os.path.exists(c):
            continue
        cb = open(c, "rb").read()
        sb = open(os.path.join(capdir, num + ".s2c"), "rb").read()
        firsts, cmsgs = split_client(cb)
        ssl = any(struct.unpack(">I", f[4:8])[0] == SSL_REQUEST for f in firsts)
        smsgs = split_messages(sb[1:] if ssl else sb)
        streams[name] = (cb, firsts, cmsgs, smsgs)

    # startup: every first packet as sent, and the login buffer a read might hold.
    for name, (cb, firsts, cmsgs, _) in streams.items():
        for k, f in enumerate(firsts):
            write("startup", f"{name}_{k}", f)
        if cmsgs:
            write("startup", f"{name}_with_sasl", firsts[-1] + cmsgs[0][1])

    for name, (_, _, cmsgs, smsgs) in streams.items():
        if not cmsgs:
            continue
        cstream = b"".join(m for _, m in cmsgs)
        sstream = b"".join(m for _, m in smsgs)
        # frame: first byte picks max (4: 64, 5: 8192, 7: unlimited).
        write("frame", f"{name}_client", b"\x07" + cstream)
        write("frame", f"{name}_server", b"\x05" + sstream)
        for t, m in smsgs:
            if t in (b"E", b"N"):
                write("fields", f"{name}_{t.decode()}_{hashlib.sha1(m).hexdigest()[:8]}", body(m))
        for t, m in cmsgs:
            if t == b"B":
                write("fields", f"{name}_bind", body(m))
                break

    # ParameterStatus bodies from one login.
    if "psql_select" in streams:
        for k, (t, m) in enumerate(streams["psql_select"][3]):
            if t == b"S":
                write("fields", f"parameter_status_{k}", body(m))

    # relay_client: [mode, chunk seed] + what the client sends once logged in.
    relay_client = [
        ("pgbench_simple", 1, 0),
        ("pgbench_extended", 1, 7),
        ("pgbench_prepared", 0, 1),
        ("pgbench_prepared", 2, 200),
        ("pgjdbc", 2, 13),
        ("pgjdbc", 1, 0),  # ends in NamedParse
        ("psql_session", 3 + 2, 42),  # Rewrite with max_packet 2048
        ("psql_options", 9 + 1, 3),  # Refuse with max_packet 9: Bad
    ]
    for name, mode, seed in relay_client:
        if name in streams:
            tail = after_login(streams[name][2], b"p")
            write("relay_client", f"{name}_m{mode}_s{seed}", bytes([mode, seed]) + b"".join(m for _, m in tail))

    # relay_server: [flags, seed, expected, queue len] + queue + the server's answers.
    for name, flags, seed in [
        ("pgbench_simple", 0, 0),
        ("pgbench_extended", 4, 9),
        ("pgbench_prepared", 4, 1),
        ("pgjdbc", 4, 77),
        ("psql_session", 0, 5),
    ]:
        if name not in streams:
            continue
        cb, firsts, cmsgs, smsgs = streams[name]
        answers = b"".join(m for _, m in after_login(smsgs, b"Z"))
        requests = [m for _, m in after_login(cmsgs, b"p")]
        queue = [c for c in (expect_code(m) for m in requests) if c is not None][:16]
        owed = sum(1 for m in requests if m[:1] in b"QSF") % 8
        head = bytes([flags, seed, owed, len(queue) if flags & 4 else 0])
        q = bytes(queue) if flags & 4 else b""
        write("relay_server", f"{name}_f{flags}_s{seed}", head + q + answers)

    # scram: the recorded exchange of psql against PostgreSQL.
    if "psql_select" in streams and rolpassword:
        cmsgs, smsgs = streams["psql_select"][2], streams["psql_select"][3]
        init = body(cmsgs[0][1])
        mech_end = init.index(b"\0")
        client_first = init[mech_end + 5 :]
        client_final = body(cmsgs[1][1])
        sasl = [body(m) for t, m in smsgs if t == b"R"]
        server_first = sasl[1][4:]
        server_final = sasl[2][4:]
        client_nonce = client_first.split(b"r=", 1)[1]
        combined = server_first.split(b",")[0][2:]
        server_nonce = combined[len(client_nonce) :]
        write("scram_server", "psql_real", SEP.join([b"\0", rolpassword.encode(), server_nonce, client_first, client_final]))
        write("scram_server", "psql_real_mock", SEP.join([b"\1", rolpassword.encode(), server_nonce, client_first, client_final]))
        salt = base64.b64decode(server_first.split(b",")[1][2:])
        ck, sk = scram_keys(b"pencil", salt, 4096)
        creds = base64.b64encode(ck + sk)
        write("scram_client", "psql_real_keys", SEP.join([b"\1", creds, client_nonce, server_first, server_final]))
        write("scram_client", "psql_real_password_4096", SEP.join([b"\0", b"pencil", client_nonce, server_first, server_final]))
        write("scram_secret", "postgres_rolpassword", rolpassword)
        if "psql_wrong_password" in streams:
            cm, sm = streams["psql_wrong_password"][2], streams["psql_wrong_password"][3]
            wrong_first = body(cm[0][1])[mech_end + 5 :]
            wrong_final = body(cm[1][1])
            wsf = [body(m) for t, m in sm if t == b"R"][1][4:]
            wcn = wrong_first.split(b"r=", 1)[1]
            wsn = wsf.split(b",")[0][2 + len(wcn) :]
            write("scram_server", "psql_wrong_password", SEP.join([b"\0", rolpassword.encode(), wsn, wrong_first, wrong_final]))


def handmade():
    # ---- startup
    write("startup", "ssl_request", first_packet(SSL_REQUEST))
    write("startup", "gssenc_request", first_packet(GSSENC_REQUEST))
    write("startup", "cancel_3_0", first_packet(CANCEL_REQUEST, struct.pack(">I", 4242) + b"\x01\x02\x03\x04"))
    write("startup", "cancel_3_2_long_key", first_packet(CANCEL_REQUEST, struct.pack(">I", 4242) + bytes(range(32))))
    write("startup", "libpq_3_2", startup([("user", "app"), ("database", "app"), ("_pq_.protocol_managed_params", "x"), ("application_name", "psql")], minor=2))
    write("startup", "pgjdbc_42", startup([
        ("user", "app"), ("database", "app"), ("client_encoding", "UTF8"), ("DateStyle", "ISO"),
        ("TimeZone", "Europe/Paris"), ("extra_float_digits", "2"), ("application_name", "PostgreSQL JDBC Driver"),
    ]))
    write("startup", "bad_version_2", first_packet(2 << 16, b"user\0app\0\0"))
    write("startup", "too_long", struct.pack(">I", 10001))

    # ---- fields
    write("fields", "error_full", b"SERROR\0VERROR\0C42P01\0Mrelation \"nope\" does not exist\0Fparse_relation.c\0L1392\0RparserOpenTable\0\0")
    write("fields", "fatal_auth", b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"app\"\0\0")
    write("fields", "discard_all", b"DISCARD ALL\0")
    write("fields", "deallocate_prepare_all", b" deallocate prepare ALL ;\0")
    write("fields", "bind_named", b"\0S_1\0\0\0\0\x01\0\0\0\x011\0\x01\0\x01")

    # ---- relay_client: hand-made pipelines around the names the pooler cares about.
    pipeline = b"".join([
        msg(b"P", b"s1\0select $1\0\0\x01\0\0\0\x17"),
        msg(b"B", b"\0s1\0\0\x01\0\0\0\x01\0\0\0\x011\0\x01\0\x01"),
        msg(b"D", b"P\0"),
        msg(b"E", b"\0\0\0\0\0"),
        msg(b"C", b"Ss1\0"),
        msg(b"S"),
        msg(b"Q", b"DEALLOCATE ALL\0"),
        msg(b"F", b"\0\0\x04\xd2\0\0\0\0\0\0"),
        msg(b"d", b"copy data"),
        msg(b"H"),
        msg(b"X"),
    ])
    for mode in (0, 1, 2):
        write("relay_client", f"named_pipeline_m{mode}", bytes([mode, 5]) + pipeline)
    write("relay_client", "bad_length", bytes([0, 0]) + b"Q\0\0\0\x02")

    # ---- relay_server: the pooler's own queries and answers it makes or hides.
    own = msg(b"C", b"SET\0") + msg(b"S", b"TimeZone\0UTC\0") + msg(b"Z", b"I")
    after = msg(b"T", b"\0\x01a\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0") + msg(b"D", b"\0\x01\0\0\0\x011") + msg(b"C", b"SELECT 1\0") + msg(b"Z", b"I")
    write("relay_server", "own_set_then_query", bytes([1, 3, 1, 0]) + own + after)
    # queue: Execute, MadeParse, HiddenParse, Bind, Sync (codes from expect_from).
    made = msg(b"D", b"\0\0") + msg(b"C", b"SELECT 1\0") + msg(b"1") + msg(b"2") + msg(b"Z", b"I")
    write("relay_server", "made_and_hidden", bytes([4, 2, 1, 5, 4, 8, 11, 1, 6]) + made)
    # queue: Prepare, HiddenClose, MadeParse, Execute, Sync; an error skips to the Sync.
    err = msg(b"E", b"SERROR\0C42601\0Msyntax error\0\0") + msg(b"Z", b"I")
    write("relay_server", "error_skips_to_sync", bytes([4, 1, 1, 5, 10, 12, 8, 4, 6]) + err)
    # queue: Sync, Sync, Query: ReadyForQuery messages split by the reads.
    zs = msg(b"Z", b"I") + msg(b"Z", b"T") + msg(b"C", b"BEGIN\0") + msg(b"Z", b"T")
    write("relay_server", "three_ready", bytes([4, 3, 3, 3, 6, 6, 7]) + zs)

    # ---- scram: RFC 7677 section 3.
    rfc_salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    rfc_secret = scram_secret(b"pencil", rfc_salt, 4096)
    rfc_first = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    rfc_final = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
    rfc_server_nonce = b"%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    write("scram_server", "rfc7677", SEP.join([b"\0", rfc_secret.encode(), rfc_server_nonce, rfc_first, rfc_final]))
    write("scram_server", "rfc7677_y_flag_extension", SEP.join([b"\0", rfc_secret.encode(), rfc_server_nonce, b"y,,n=user,r=rOprNGfwEbeRWgbNEkqO,x=ext", b"c=eSws,r=x,p=AAAA"]))
    write("scram_server", "channel_binding", SEP.join([b"\0", b"", b"", b"p=tls-server-end-point,,n=,r=abc", b""]))
    write("scram_server", "round_trip", SEP.join([b"\2", "pencil\u00a0\u2163".encode(), b"0123456789abcdef", b"clientnonce", b"servernonce"]))
    write("scram_secret", "rfc7677", rfc_secret)
    write("scram_secret", "one_iteration", scram_secret(b"x", b"salt", 1))
    write("scram_secret", "md5", "md5" + hashlib.md5(b"pencilapp").hexdigest())
    write("scram_secret", "md5_upper", "MD5" + hashlib.md5(b"pencilapp").hexdigest().upper())
    write("scram_secret", "bad_count", "SCRAM-SHA-256$0:c2FsdA==$AAAA:BBBB")

    # scram_client with a cheap count, so password mode runs and the final verifies.
    salt = b"0123456789abcdef"
    cn, sn = b"clientnonce", b"servernonce"
    server_first = b"r=" + cn + sn + b",s=" + base64.b64encode(salt) + b",i=16"
    ck, sk = scram_keys(b"pencil", salt, 16)
    auth = b"n=,r=" + cn + b"," + server_first + b",c=biws,r=" + cn + sn
    server_final = b"v=" + base64.b64encode(hmac.new(sk, auth, "sha256").digest())
    write("scram_client", "password_16", SEP.join([b"\0", b"pencil", cn, server_first, server_final]))
    write("scram_client", "server_error", SEP.join([b"\0", b"pencil", cn, server_first, b"e=invalid-proof"]))
    write("scram_client", "too_many_iterations", SEP.join([b"\0", b"pencil", cn, b"r=" + cn + sn + b",s=c2FsdA==,i=2000000", b""]))
    write("scram_client", "extensions", SEP.join([b"\1", b"", cn, server_first + b",x=1", server_final + b",y=2"]))

    # ---- userlist
    write("userlist", "etc_userlist", open(os.path.join(REPO, "etc", "userlist.txt"), "rb").read())
    write("userlist", "kinds", "\r\n".join([
        '; comment', '# another', '',
        '"app" "change-me"',
        '"md5user" "md5' + hashlib.md5(b"pencilmd5user").hexdigest() + '"',
        '"scram" "' + scram_secret(b"pencil", b"0123456789abcdef", 4096) + '" trailing ignored',
        '  "quo""ted"\t"pa""ss"',
        '"app" "dup wins"',
        '"bad" "SCRAM-SHA-256$4096:nope"',
        '"badmd5" "md5' + "A" * 32 + '"',
    ]) + "\n")
    write("userlist", "errors", '"unterminated\n')

    # ---- hba
    write("hba", "pg_sample", '''# TYPE  DATABASE        USER            ADDRESS                 METHOD
local   all             postgres                                peer
local   all             all                                     peer
host    all             all             127.0.0.1/32            scram-sha-256
host    all             all             ::1/128                 scram-sha-256
host    replication     all             127.0.0.1/32            scram-sha-256
hostssl app,"My Db"     app,"Odd ""User""" 10.0.0.0 255.0.0.0  md5 clientcert=verify-ca
hostnossl sameuser      all             192.168.0.0/16          password
host    all             all             0.0.0.0/0               reject
''')
    write("hba", "unsupported_group", "host all +admins 0.0.0.0/0 reject\n")
    write("hba", "continuation", 'host all all \\\n  all trust # comment \\\n still comment\nhost "all" all 2001:db8::/32 cert\n')
    write("hba", "pgbouncer_style", "local all all trust\nhost all admin 0.0.0.0/0 md5\nhost all all all scram-sha-256\n")

    # ---- control (as control.rs encodes them)
    def opt(s):
        return b"\0" if s is None else b"\1" + bytes([len(s)]) + s

    def long(b):
        return struct.pack(">I", 0xFFFFFFFF) if b is None else struct.pack(">I", len(b)) + b

    row = struct.pack(">H", 3) + long(b"app") + long(None) + long(b"42")
    cmds = {
        "reload": b"\1", "pause_db": b"\2" + opt(b"app"), "resume_all": b"\3" + opt(None),
        "shutdown": b"\4", "cancel": b"\5" + struct.pack(">II", 7, 99),
        "collect": b"\6" + struct.pack(">I", 5) + b"\2",
        "rows": b"\7" + struct.pack(">I", 5) + b"\1" + long(row + row),
        "admin_done": b"\x08" + struct.pack(">I", 5) + long(b"worker 1 did not answer") + long(b"\1"),
        "kill": b"\x09" + opt(b"app"), "kill_client": b"\x0a" + struct.pack(">II", 5, 17),
    }
    for name, m in cmds.items():
        write("control", "command_" + name, b"\0" + m)
    reports = {
        "cancel": b"\1" + struct.pack(">II", 7, 99),
        "admin_set": b"\2" + struct.pack(">I", 3) + b"\x08" + opt(b"default_pool_size") + opt(b"20"),
        "admin_collect": b"\2" + struct.pack(">I", 3) + b"\1\3",
        "rows_last": b"\3" + struct.pack(">I", 3) + b"\1" + long(row),
    }
    for name, m in reports.items():
        write("control", "report_" + name, b"\1" + m)
    write("control", "snapshot", b"\2" + long(b"listen_port: 6432\n") + long(b'"app" "pw"\n') + long(None))
    write("control", "rows", b"\3" + row + struct.pack(">H", 0))

    # ---- admin console
    for k, q in enumerate([
        "SHOW POOLS;", "show help", "SELECT stats", "SET default_pool_size = 20;",
        "set server_reset_query to 'DISCARD ALL; SELECT ''x'''", "PAUSE app", 'RESUME "My Db"',
        "KILL_CLIENT 42", "RECONNECT", "WAIT_CLOSE app ;", "SHUTDOWN", "DISABLE app", "show\tservers\n",
    ]):
        write("admin_parse", f"cmd_{k:02d}", q)

    # ---- config
    write("config", "etc_example", open(os.path.join(REPO, "etc", "pgbouncers.yaml"), "rb").read())
    write("config", "minimal", "listen_port: 6432\ndatabases:\n  app: host=127.0.0.1 port=5432 dbname=app\n")
    write("config", "flow", "{listen_addr: '*', pool_mode: transaction, max_prepared_statements: 100, databases: {'*': {host: localhost}}, users: {bob: {pool_mode: session}}}\n")
    write("config", "empty", "---\n")

    # ---- params (the startup options parameter)
    for k, o in enumerate([
        "-c search_path=public -c statement_timeout=5s --work-mem=8MB",
        "-c geqo=off",
        "-csearch_path=a\\ b,c",
        "--application-name=x\\\\y -c DateStyle=ISO,\\ DMY",
        "-c",
        "-c TimeZone=UTC -c timezone=Europe/Paris",
    ]):
        write("params", f"options_{k}", o)


if __name__ == "__main__":
    handmade()
    if len(sys.argv) > 1:
        from_captures(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "")
