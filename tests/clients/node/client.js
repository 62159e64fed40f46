// node-postgres through the pooler, run by tests/clients.rs: several
// concurrent connections with the driver's defaults (unnamed statements for
// parametrised queries, named ones for `{ name, text, values }`), checking
// every result.
//
// Usage: node client.js HOST PORT USER PASSWORD DB TAG NCLIENTS [--tls-ca=FILE]
//
// With --tls-ca (tests/tls_clients.rs), every connection asks for TLS,
// verifies the certificate and host name against FILE and checks that TLS is
// in use; without it, ssl: false as before.
//
// TAG names this run's tables (parallel runs share one PostgreSQL). Prints
// `prepared_names=...`, `backends=N`, then `OK node-postgres` and exits 0; on
// any failure prints the error and exits 1.
'use strict'

const fs = require('fs')
let pg
try {
  pg = require('pg')
} catch (e) {
  console.log(`node-postgres is not installed (${e.message}): run scripts/test.sh, or npm ci in tests/clients/node`)
  process.exit(1)
}

// Client time zones (alternating between connections), sent in the startup
// `options`, and how PostgreSQL renders INSTANT as text in each.
const ZONES = [
  ['Asia/Kolkata', '2024-01-02 08:34:05+05:30'],
  ['Asia/Tokyo', '2024-01-02 12:04:05+09'],
]
const INSTANT = new Date(Date.UTC(2024, 0, 2, 3, 4, 5))
const ROUNDS = 4
const REPEATS = 8
const MARK = 'node_prep_mark'
const NAMED_Q = 'SELECT $1::int + $2::int AS sum, $3::text AS t, $4::bytea AS b, ' +
  `$5::timestamptz AS ts, NULL::text AS n /* ${MARK} */`
const LOOKUP_Q = 'SELECT name FROM pg_prepared_statements WHERE strpos(statement, $1) > 0'

function check (cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`)
}

const textOf = (w, k) => `naïve café ☃ 日本語 ✓ ${w}-${k}`
const bytesOf = (w, k) => Buffer.concat([Buffer.from([0, 1, 2, 255, w & 255, k & 255]), Buffer.from('\0\\\'"end')])
const noteOf = (k) => (k % 2 ? null : `note ${k}`)
// Millisecond precision: that is what a JS Date holds.
const tsOf = (k) => new Date(INSTANT.getTime() + k * 1000 + 123)
const rowOf = (w, k) => [w * 1000 + k, w, textOf(w, k), noteOf(k), tsOf(k), bytesOf(w, k)]

class Run {
  constructor (argv) {
    ;[this.host, this.port, this.user, this.password, this.db, this.tag] = argv.slice(0, 6)
    this.port = Number(this.port)
    this.clients = Number(argv[6])
    // The `ssl` option: false, or a CA to verify the certificate and host name against.
    this.ssl = false
    for (const arg of argv.slice(7)) {
      if (!arg.startsWith('--tls-ca=')) throw new Error(`unknown argument ${arg}`)
      this.ssl = { ca: fs.readFileSync(arg.slice('--tls-ca='.length)), rejectUnauthorized: true }
    }
    this.table = `t_node_${this.tag}`
    this.pids = new Set()
    this.names = new Set()
  }

  async connect (w) {
    const client = new pg.Client({
      host: this.host,
      port: this.port,
      user: this.user,
      password: this.password,
      database: this.db,
      ssl: this.ssl,
      application_name: `node-${this.tag}-${w}`,
      statement_timeout: 30000,
      options: `-c TimeZone=${ZONES[w % ZONES.length][0]}`,
      connectionTimeoutMillis: 10000,
    })
    await client.connect()
    if (this.ssl) {
      // After the SSLRequest node-postgres swaps its socket for a TLSSocket.
      const stream = client.connection.stream
      check(stream.encrypted === true && stream.authorized === true, 'ssl set but TLS is not in use')
    }
    return client
  }

  async one (c, q, values) {
    const r = await c.query(q, values)
    check(r.rows.length === 1, `one row for ${q}`)
    return Object.values(r.rows[0])[0]
  }

  async lookup (c, mark) {
    const r = await c.query(LOOKUP_Q, [mark])
    check(r.rows.length > 0, `no named prepared statement on the server for ${mark}`)
    for (const row of r.rows) this.names.add(row.name)
  }

  async checkRows (c, w, lo, hi, ks) {
    const r = await c.query({
      name: `rows_${this.tag}`,
      text: `SELECT id, name, note, ts, data FROM ${this.table} WHERE worker = $1 AND id >= $2 AND id < $3 ORDER BY id`,
      values: [w, w * 1000 + lo, w * 1000 + hi],
    })
    check(r.rows.length === ks.length, `rows ${r.rows.length} != ${ks.length}`)
    ks.forEach((k, i) => {
      const row = r.rows[i]
      check(row.id === w * 1000 + k, `id ${row.id}`)
      check(row.name === textOf(w, k), `name ${row.name}`)
      check(row.note === noteOf(k), `note ${row.note}`)
      check(row.ts.getTime() === tsOf(k).getTime(), `ts ${row.ts.toISOString()}`)
      check(row.data.equals(bytesOf(w, k)), `data ${row.data.toString('hex')}`)
    })
  }

  async round (w, rnd, c) {
    const [zone, rendered] = ZONES[w % ZONES.length]
    const table = this.table
    this.pids.add(await this.one(c, 'SELECT pg_backend_pid()'))

    // Startup parameters: this client's own, whichever server it got.
    const tz = await this.one(c, 'SHOW TimeZone')
    check(tz === zone, `TimeZone is ${tz}, want ${zone}`)
    const app = await this.one(c, 'SHOW application_name')
    check(app === `node-${this.tag}-${w}`, `application_name is ${app}`)
    const stmtTimeout = await this.one(c, 'SHOW statement_timeout')
    check(stmtTimeout === '30s', `statement_timeout is ${stmtTimeout}`)
    const got = await this.one(c, 'SELECT $1::timestamptz::text', [INSTANT])
    check(got === rendered, `timestamptz rendered ${got}, want ${rendered}`)

    // Unnamed parametrised queries and a named one, repeated: node-postgres
    // sends Parse for `q1` once per connection, then only Bind/Execute.
    for (let i = 0; i < REPEATS; i++) {
      const a = w * 100 + i
      const ts = new Date(INSTANT.getTime() + i * 86400000)
      const values = [a, rnd, textOf(w, i), bytesOf(w, i), ts]
      for (const q of [{ text: NAMED_Q, values }, { name: 'q1', text: NAMED_Q, values }]) {
        const r = await c.query(q)
        const row = r.rows[0]
        check(row.sum === a + rnd, `sum ${row.sum}`)
        check(row.t === textOf(w, i), `text ${row.t}`)
        check(row.b.equals(bytesOf(w, i)), 'bytea')
        check(row.ts.getTime() === ts.getTime(), `ts ${row.ts}`)
        check(row.n === null, 'null')
      }
    }
    // In a transaction, the server holds q1 as a named statement.
    await c.query('BEGIN')
    const r = await c.query({ name: 'q1', text: NAMED_Q, values: [1, 2, 'x', Buffer.from('y'), INSTANT] })
    check(r.rows[0].sum === 3, 'q1 in a transaction')
    await this.lookup(c, MARK)
    await c.query('COMMIT')

    // A committed transaction of inserts (named) and a rolled-back one.
    const base = rnd * 20
    const ins = { name: 'ins', text: `INSERT INTO ${table} VALUES ($1, $2, $3, $4, $5, $6)` }
    const committed = []
    await c.query('BEGIN')
    for (let k = 0; k < 6; k++) {
      const res = await c.query({ ...ins, values: rowOf(w, base + k) })
      check(res.rowCount === 1, 'insert rowCount')
      committed.push(base + k)
    }
    await c.query('COMMIT')
    await c.query('BEGIN')
    for (let k = 6; k < 9; k++) await c.query({ ...ins, values: rowOf(w, base + k) })
    await c.query('ROLLBACK')
    await this.checkRows(c, w, base, base + 20, committed)

    // An error inside a transaction, then rollback and reuse.
    await c.query('BEGIN')
    await c.query({ ...ins, values: rowOf(w, base + 10) })
    let err = null
    try {
      await c.query('SELECT 1 / $1::int', [0])
    } catch (e) {
      err = e
    }
    check(err && err.code === '22012', `division by zero: ${err}`)
    err = null
    try {
      await c.query({ name: 'q1', text: NAMED_Q, values: [1, 1, '', Buffer.alloc(0), INSTANT] })
    } catch (e) {
      err = e
    }
    check(err && err.code === '25P02', `named query in a failed transaction: ${err}`)
    await c.query('ROLLBACK')
    check(await this.one(c, `SELECT count(*)::int FROM ${table} WHERE id = $1`, [w * 1000 + base + 10]) === 0,
      'row of the failed transaction is there')
    const after = await c.query({ name: 'q1', text: NAMED_Q, values: [40, 2, 'after', Buffer.alloc(0), INSTANT] })
    check(after.rows[0].sum === 42 && after.rows[0].t === 'after', 'q1 after the error')

    // An error from a named statement outside a transaction block.
    err = null
    try {
      await c.query({ name: 'q1', text: NAMED_Q, values: [2147483647, 1, '', Buffer.alloc(0), INSTANT] })
    } catch (e) {
      err = e
    }
    check(err && err.code === '22003', `integer overflow: ${err}`)
    const again = await c.query({ name: 'q1', text: NAMED_Q, values: [1, 1, '', Buffer.alloc(0), INSTANT] })
    check(again.rows[0].sum === 2, 'q1 after the overflow')

    // Multi-statement simple query in one transaction.
    const k12 = base + 12
    const multi = await c.query(`BEGIN; INSERT INTO ${table} VALUES (${w * 1000 + k12}, ${w}, ` +
      `'${textOf(w, k12)}', '${noteOf(k12)}', '${tsOf(k12).toISOString()}', ` +
      `'\\x${bytesOf(w, k12).toString('hex')}'); COMMIT`)
    check(Array.isArray(multi) && multi.length === 3, 'multi-statement results')
    committed.push(k12)
    await this.checkRows(c, w, base, base + 20, committed)
  }

  async worker (w, c) {
    try {
      for (let rnd = 0; rnd < ROUNDS; rnd++) await this.round(w, rnd, c)
    } catch (e) {
      // A failed client may sit in a transaction holding a server: let the
      // others go on, so one failure does not look like a hang.
      await c.end().catch(() => {})
      throw e
    }
    const n = await this.one(c, `SELECT count(*)::int FROM ${this.table} WHERE worker = $1`, [w])
    // 6 named inserts + 1 simple-query insert per round.
    check(n === ROUNDS * 7, `worker ${w} has ${n} rows`)
  }

  async main () {
    const admin = await this.connect(0)
    await admin.query(`DROP TABLE IF EXISTS ${this.table}`)
    await admin.query(`CREATE TABLE ${this.table} (id int PRIMARY KEY, worker int NOT NULL, ` +
      'name text NOT NULL, note text, ts timestamptz NOT NULL, data bytea NOT NULL)')
    await admin.end()
    // All connections are open at once: in transaction mode more clients
    // than servers.
    const conns = await Promise.all(Array.from({ length: this.clients }, (_, w) => this.connect(w)))
    const results = await Promise.allSettled(conns.map((c, w) => this.worker(w, c)))
    await Promise.allSettled(conns.map((c) => c.end()))
    const failed = results.filter((r) => r.status === 'rejected')
    results.forEach((r, w) => {
      if (r.status === 'rejected') console.log(`client ${w}: ${r.reason && r.reason.stack}`)
    })
    if (failed.length) throw new Error(`${failed.length} of ${this.clients} clients failed`)
    const drop = await this.connect(0)
    await drop.query(`DROP TABLE IF EXISTS ${this.table}`)
    await drop.end()
    console.log(`prepared_names=${[...this.names].sort().join(',')}`)
    console.log(`backends=${this.pids.size}`)
    console.log('OK node-postgres')
  }
}

if (process.argv.length < 9) {
  console.log('usage: node client.js HOST PORT USER PASSWORD DB TAG NCLIENTS')
  process.exit(2)
}
const timer = setTimeout(() => {
  console.log('FAILED node-postgres: timed out after 100 s')
  process.exit(1)
}, 100000)
new Run(process.argv.slice(2)).main().then(
  () => {
    clearTimeout(timer)
    process.exit(0)
  },
  (e) => {
    console.log(e && e.stack)
    console.log(`FAILED node-postgres: ${e}`)
    process.exit(1)
  })
