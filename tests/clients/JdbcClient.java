// pgJDBC through the pooler, run by tests/clients.rs: several concurrent
// connections with the driver's defaults (prepareThreshold 5, its own startup
// parameters), checking every result.
//
// Usage: java -cp postgresql.jar JdbcClient.java HOST PORT USER PASSWORD DB TAG NCLIENTS
//        [--tls-ca=FILE]
//
// With --tls-ca (tests/tls_clients.rs), every connection uses ssl=true,
// sslmode=verify-full and sslrootcert=FILE; without it, sslmode=disable as
// before.
//
// TAG names this run's tables (parallel runs share one PostgreSQL). Prints
// `prepared_names=...`, `backends=N`, then `OK jdbc` and exits 0; on any
// failure prints the error and exits 1.

import java.io.StringReader;
import java.io.StringWriter;
import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Savepoint;
import java.sql.Statement;
import java.sql.Types;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Objects;
import java.util.Properties;
import java.util.Set;
import java.util.TimeZone;
import java.util.TreeSet;
import java.util.concurrent.ConcurrentSkipListSet;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.postgresql.PGConnection;
import org.postgresql.copy.CopyManager;

public class JdbcClient {
    // Client time zones (alternating between connections) and how
    // PostgreSQL renders INSTANT as text in each. pgJDBC sends the JVM's
    // default zone as the TimeZone startup parameter.
    static final String[][] ZONES = {
        {"Asia/Kolkata", "2024-01-02 08:34:05+05:30"},
        {"Asia/Tokyo", "2024-01-02 12:04:05+09"},
    };
    static final OffsetDateTime INSTANT = OffsetDateTime.of(2024, 1, 2, 3, 4, 5, 0, ZoneOffset.UTC);
    static final int ROUNDS = 4;
    // More than prepareThreshold (5): pgJDBC switches to a named statement.
    static final int REPEATS = 8;
    static final String MARK = "jdbc_prep_mark";
    static final String PREP_Q = "SELECT ?::int + ?::int AS sum, ?::text AS t, ?::bytea AS b, "
            + "?::timestamptz AS ts, NULL::text AS n /* " + MARK + " */";
    static final String BATCH_MARK = "jdbc_batch_mark";
    static final String LOOKUP_Q =
            "SELECT name FROM pg_prepared_statements WHERE strpos(statement, ?) > 0";

    final String url;
    final String user;
    final String password;
    final String tag;
    final String table;
    final int clients;
    /// The root certificate for sslmode=verify-full, or null for no TLS.
    final String tlsCa;
    final Set<Integer> pids = new ConcurrentSkipListSet<>();
    final Set<String> names = new ConcurrentSkipListSet<>();
    final Set<String> extraFloatDigits = new ConcurrentSkipListSet<>();

    JdbcClient(String[] args) {
        url = "jdbc:postgresql://" + args[0] + ":" + args[1] + "/" + args[4];
        user = args[2];
        password = args[3];
        tag = args[5];
        clients = Integer.parseInt(args[6]);
        String ca = null;
        for (int i = 7; i < args.length; i++) {
            if (!args[i].startsWith("--tls-ca=")) {
                throw new IllegalArgumentException("unknown argument " + args[i]);
            }
            ca = args[i].substring("--tls-ca=".length());
        }
        tlsCa = ca;
        table = "t_jdbc_" + tag;
    }

    static void check(boolean cond, String what) {
        if (!cond) {
            throw new AssertionError(what);
        }
    }

    static String textOf(int w, int k) {
        return "naïve café ☃ 日本語 ✓ " + w + "-" + k;
    }

    static byte[] bytesOf(int w, int k) {
        byte[] tail = "\u0000\\'\"end".getBytes(StandardCharsets.UTF_8);
        byte[] b = new byte[6 + tail.length];
        b[0] = 0;
        b[1] = 1;
        b[2] = 2;
        b[3] = (byte) 255;
        b[4] = (byte) w;
        b[5] = (byte) k;
        System.arraycopy(tail, 0, b, 6, tail.length);
        return b;
    }

    static String noteOf(int k) {
        return k % 2 == 1 ? null : "note " + k;
    }

    static OffsetDateTime tsOf(int k) {
        return INSTANT.plusSeconds(k).plusNanos(123456000L);
    }

    /// Opens a connection whose TimeZone startup parameter is `zone`.
    synchronized Connection connect(String zone) throws SQLException {
        Properties props = new Properties();
        props.setProperty("user", user);
        props.setProperty("password", password);
        if (tlsCa == null) {
            props.setProperty("sslmode", "disable");
        } else {
            props.setProperty("ssl", "true");
            props.setProperty("sslmode", "verify-full");
            props.setProperty("sslrootcert", tlsCa);
        }
        props.setProperty("connectTimeout", "10");
        TimeZone saved = TimeZone.getDefault();
        TimeZone.setDefault(TimeZone.getTimeZone(zone));
        try {
            return DriverManager.getConnection(url, props);
        } finally {
            TimeZone.setDefault(saved);
        }
    }

    static String one(Connection conn, String sql) throws SQLException {
        try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(sql)) {
            check(rs.next(), "no row for " + sql);
            return rs.getString(1);
        }
    }

    void insert(PreparedStatement ps, int w, int k) throws SQLException {
        ps.setInt(1, w * 1000 + k);
        ps.setInt(2, w);
        ps.setString(3, textOf(w, k));
        if (noteOf(k) == null) {
            ps.setNull(4, Types.VARCHAR);
        } else {
            ps.setString(4, noteOf(k));
        }
        ps.setObject(5, tsOf(k));
        ps.setBytes(6, bytesOf(w, k));
    }

    /// Checks that the rows of worker w with ids [w*1000+lo, w*1000+hi) are
    /// exactly the keys in ks.
    void checkRows(Connection conn, int w, int lo, int hi, List<Integer> ks) throws SQLException {
        try (PreparedStatement ps = conn.prepareStatement("SELECT id, name, note, ts, data FROM "
                + table + " WHERE worker = ? AND id >= ? AND id < ? ORDER BY id")) {
            ps.setInt(1, w);
            ps.setInt(2, w * 1000 + lo);
            ps.setInt(3, w * 1000 + hi);
            try (ResultSet rs = ps.executeQuery()) {
                for (int k : ks) {
                    check(rs.next(), "missing row " + k);
                    check(rs.getInt(1) == w * 1000 + k, "id " + rs.getInt(1));
                    check(textOf(w, k).equals(rs.getString(2)), "name " + rs.getString(2));
                    check(Objects.equals(noteOf(k), rs.getString(3)), "note " + rs.getString(3));
                    OffsetDateTime ts = rs.getObject(4, OffsetDateTime.class);
                    check(ts.isEqual(tsOf(k)), "ts " + ts);
                    check(Arrays.equals(bytesOf(w, k), rs.getBytes(5)), "data of " + k);
                }
                check(!rs.next(), "extra row");
            }
        }
    }

    void lookupNames(Connection conn, String mark) throws SQLException {
        List<String> found = new ArrayList<>();
        try (PreparedStatement ps = conn.prepareStatement(LOOKUP_Q)) {
            ps.setString(1, mark);
            try (ResultSet rs = ps.executeQuery()) {
                while (rs.next()) {
                    found.add(rs.getString(1));
                }
            }
        }
        check(!found.isEmpty(), "no named prepared statement on the server for " + mark);
        names.addAll(found);
    }

    void round(int w, int rnd, Connection conn) throws Exception {
        String zone = ZONES[w % ZONES.length][0];
        String rendered = ZONES[w % ZONES.length][1];
        conn.setAutoCommit(true);
        pids.add(Integer.parseInt(one(conn, "SELECT pg_backend_pid()")));

        // pgJDBC's own startup parameters, on whichever server we got.
        String tz = one(conn, "SHOW TimeZone");
        check(zone.equals(tz), "TimeZone is " + tz + ", want " + zone);
        String app = one(conn, "SHOW application_name");
        check("PostgreSQL JDBC Driver".equals(app), "application_name is " + app);
        // pgJDBC sends extra_float_digits=2 at startup, then SET 3 (a
        // setting the server does not report, so a pooler cannot follow it
        // to other servers): either shows the startup value was applied (the
        // server's default is 1).
        String efd = one(conn, "SHOW extra_float_digits");
        check("2".equals(efd) || "3".equals(efd), "extra_float_digits is " + efd);
        extraFloatDigits.add(efd);
        String ds = one(conn, "SHOW DateStyle");
        check(ds.startsWith("ISO"), "DateStyle is " + ds);
        String enc = one(conn, "SHOW client_encoding");
        check("UTF8".equals(enc), "client_encoding is " + enc);
        try (PreparedStatement ps = conn.prepareStatement("SELECT ?::timestamptz::text")) {
            ps.setObject(1, INSTANT);
            try (ResultSet rs = ps.executeQuery()) {
                rs.next();
                check(rendered.equals(rs.getString(1)), "rendered " + rs.getString(1));
            }
        }

        // One PreparedStatement reused past prepareThreshold.
        try (PreparedStatement ps = conn.prepareStatement(PREP_Q)) {
            for (int i = 0; i < REPEATS; i++) {
                int a = w * 100 + i;
                OffsetDateTime ts = INSTANT.plusDays(i).plusNanos(7000);
                ps.setInt(1, a);
                ps.setInt(2, rnd);
                ps.setString(3, textOf(w, i));
                ps.setBytes(4, bytesOf(w, i));
                ps.setObject(5, ts);
                try (ResultSet rs = ps.executeQuery()) {
                    check(rs.next(), "no row");
                    check(rs.getInt(1) == a + rnd, "sum " + rs.getInt(1));
                    check(textOf(w, i).equals(rs.getString(2)), "text " + rs.getString(2));
                    check(Arrays.equals(bytesOf(w, i), rs.getBytes(3)), "bytea");
                    check(rs.getObject(4, OffsetDateTime.class).isEqual(ts), "ts");
                    check(rs.getString(5) == null && rs.wasNull(), "null");
                }
            }
            // In a transaction, the server runs it as a named statement.
            conn.setAutoCommit(false);
            ps.setInt(1, 1);
            ps.setInt(2, 2);
            ps.setString(3, "x");
            ps.setBytes(4, new byte[] {1});
            ps.setObject(5, INSTANT);
            try (ResultSet rs = ps.executeQuery()) {
                check(rs.next() && rs.getInt(1) == 3, "named statement in a transaction");
            }
            lookupNames(conn, MARK);
            conn.commit();
        }

        // A committed batch of inserts, past the threshold too.
        int base = rnd * 20;
        String ins = "INSERT INTO " + table + " VALUES (?, ?, ?, ?, ?, ?) /* " + BATCH_MARK + " */";
        List<Integer> committed = new ArrayList<>();
        try (PreparedStatement ps = conn.prepareStatement(ins)) {
            for (int k = 0; k < 7; k++) {
                insert(ps, w, base + k);
                ps.addBatch();
                committed.add(base + k);
            }
            int[] counts = ps.executeBatch();
            check(counts.length == 7, "batch counts " + counts.length);
            for (int c : counts) {
                check(c == 1 || c == Statement.SUCCESS_NO_INFO, "batch count " + c);
            }
            lookupNames(conn, BATCH_MARK);
            conn.commit();

            // A rolled-back batch.
            for (int k = 7; k < 10; k++) {
                insert(ps, w, base + k);
                ps.addBatch();
            }
            ps.executeBatch();
            conn.rollback();
        }
        conn.setAutoCommit(true);
        checkRows(conn, w, base, base + 20, committed);

        // An error inside a transaction, then rollback and reuse.
        conn.setAutoCommit(false);
        try (PreparedStatement ps = conn.prepareStatement(ins)) {
            insert(ps, w, base + 10);
            ps.executeUpdate();
        }
        try (PreparedStatement ps = conn.prepareStatement("SELECT 1 / ?")) {
            ps.setInt(1, 0);
            ps.executeQuery();
            throw new AssertionError("division by zero did not fail");
        } catch (SQLException e) {
            check("22012".equals(e.getSQLState()), "sqlstate " + e.getSQLState());
        }
        try {
            one(conn, "SELECT 1");
            throw new AssertionError("a query in a failed transaction did not fail");
        } catch (SQLException e) {
            check("25P02".equals(e.getSQLState()), "sqlstate " + e.getSQLState());
        }
        conn.rollback();
        check("0".equals(one(conn, "SELECT count(*) FROM " + table + " WHERE id = "
                + (w * 1000 + base + 10))), "row of the failed transaction is there");
        conn.commit();

        // A savepoint: the error is undone, the transaction goes on.
        try (PreparedStatement ps = conn.prepareStatement(ins)) {
            insert(ps, w, base + 11);
            ps.executeUpdate();
            Savepoint sp = conn.setSavepoint();
            try {
                insert(ps, w, base + 11); // duplicate key
                ps.executeUpdate();
                throw new AssertionError("duplicate key did not fail");
            } catch (SQLException e) {
                check("23505".equals(e.getSQLState()), "sqlstate " + e.getSQLState());
            }
            conn.rollback(sp);
            insert(ps, w, base + 12);
            ps.executeUpdate();
            conn.commit();
            committed.add(base + 11);
            committed.add(base + 12);
        }
        conn.setAutoCommit(true);

        // COPY in and out with CopyManager.
        CopyManager copy = conn.unwrap(PGConnection.class).getCopyAPI();
        StringBuilder csv = new StringBuilder();
        for (int k = 13; k < 16; k++) {
            int key = base + k;
            csv.append(w * 1000 + key).append(',').append(w).append(",\"").append(textOf(w, key))
                    .append("\",").append(noteOf(key) == null ? "" : noteOf(key)).append(',')
                    .append(tsOf(key)).append(",\\x");
            for (byte b : bytesOf(w, key)) {
                csv.append(String.format("%02x", b & 0xff));
            }
            csv.append('\n');
            committed.add(key);
        }
        long n = copy.copyIn("COPY " + table + " (id, worker, name, note, ts, data) FROM STDIN "
                + "(FORMAT csv)", new StringReader(csv.toString()));
        check(n == 3, "copyIn count " + n);
        StringWriter out = new StringWriter();
        copy.copyOut("COPY (SELECT id, name FROM " + table + " WHERE worker = " + w + " AND id >= "
                + (w * 1000 + base + 13) + " AND id < " + (w * 1000 + base + 16)
                + " ORDER BY id) TO STDOUT (FORMAT csv)", out);
        StringBuilder want = new StringBuilder();
        for (int k = 13; k < 16; k++) {
            want.append(w * 1000 + base + k).append(',').append(textOf(w, base + k)).append('\n');
        }
        check(want.toString().equals(out.toString()), "copyOut " + out);
        checkRows(conn, w, base, base + 20, committed);
    }

    void worker(int w, Connection conn) throws Exception {
        try {
            for (int rnd = 0; rnd < ROUNDS; rnd++) {
                round(w, rnd, conn);
            }
        } catch (Exception | AssertionError e) {
            // A failed client may sit in a transaction holding a server: let
            // the others go on, so one failure does not look like a hang.
            conn.close();
            throw e;
        }
        conn.setAutoCommit(true);
        // 7 batch + 2 savepoint + 3 COPY rows per round.
        String n = one(conn, "SELECT count(*) FROM " + table + " WHERE worker = " + w);
        check(Integer.parseInt(n) == ROUNDS * 12, "worker " + w + " has " + n + " rows");
    }

    void run() throws Exception {
        try (Connection admin = connect("UTC"); Statement st = admin.createStatement()) {
            st.execute("DROP TABLE IF EXISTS " + table);
            st.execute("CREATE TABLE " + table + " (id int PRIMARY KEY, worker int NOT NULL, "
                    + "name text NOT NULL, note text, ts timestamptz NOT NULL, data bytea NOT NULL)");
        }
        // All connections are open at once: in transaction mode more clients
        // than servers.
        List<Connection> conns = new ArrayList<>();
        for (int w = 0; w < clients; w++) {
            conns.add(connect(ZONES[w % ZONES.length][0]));
        }
        ExecutorService pool = Executors.newFixedThreadPool(clients);
        List<Future<?>> futures = new ArrayList<>();
        for (int w = 0; w < clients; w++) {
            final int id = w;
            final Connection c = conns.get(w);
            futures.add(pool.submit(() -> {
                worker(id, c);
                return null;
            }));
        }
        int failed = 0;
        for (int w = 0; w < clients; w++) {
            try {
                futures.get(w).get(100, TimeUnit.SECONDS);
            } catch (Exception e) {
                failed++;
                System.out.println("client " + w + ": " + e);
                e.printStackTrace(System.out);
            }
        }
        pool.shutdownNow();
        for (Connection c : conns) {
            c.close();
        }
        if (failed > 0) {
            throw new AssertionError(failed + " of " + clients + " clients failed");
        }
        try (Connection admin = connect("UTC"); Statement st = admin.createStatement()) {
            st.execute("DROP TABLE IF EXISTS " + table);
        }
        System.out.println("prepared_names=" + String.join(",", new TreeSet<>(names)));
        System.out.println("backends=" + pids.size());
        System.out.println("extra_float_digits seen: " + extraFloatDigits);
        System.out.println("OK jdbc");
    }

    public static void main(String[] args) {
        if (args.length < 7) {
            System.out.println("usage: JdbcClient HOST PORT USER PASSWORD DB TAG NCLIENTS");
            System.exit(2);
        }
        try {
            new JdbcClient(args).run();
            System.exit(0);
        } catch (Throwable e) {
            e.printStackTrace(System.out);
            System.out.println("FAILED jdbc: " + e);
            System.exit(1);
        }
    }
}
