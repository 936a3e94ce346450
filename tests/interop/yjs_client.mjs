#!/usr/bin/env node
// Real-Yjs interop client for crdtcoord.
//
// Uses the stock `y-websocket` WebsocketProvider (with the `ws` package as the
// WebSocket implementation) to talk to a y-websocket compatible server at
// `<url>/<room>`.
//
// Protocol with the parent process:
//   stdout: only protocol lines:
//     normal mode:  `ready` (connected + synced), `edited` (edits done and
//                   flushed), then one JSON line per `dump` command.
//     garbage mode: `ready`, then one JSON line per garbage attempt.
//   stdin (normal mode): line-based commands `dump`, `quit` (EOF == quit).
//   stderr: diagnostics. Exit code 0 on success, non-zero on error:
//     1 unexpected error, 2 bad usage, 3 timeout,
//     4 server closed the connection permanently (close code 4400-4499).
//
// Usage:
//   node yjs_client.mjs --url ws://127.0.0.1:PORT/v1/yjs --room NAME
//     [--token T] [--name CLIENTNAME] [--edits N] [--seed S] [--timeout SEC]
//     [--expect-clients K] [--mode normal|garbage] [--garbage-wait SEC]

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import * as readline from 'node:readline'

// Keep stdout clean for the control protocol: libraries may console.log.
console.log = (...args) => console.error(...args)

const EXIT_ERROR = 1
const EXIT_USAGE = 2
const EXIT_TIMEOUT = 3
const EXIT_CLOSED = 4

class UsageError extends Error {}
class TimeoutError extends Error {}
class ClosedError extends Error {}

// ---------------------------------------------------------------- arguments

const FLAGS = {
  url: { required: true },
  room: { required: true },
  token: { default: null },
  name: { default: 'client' },
  edits: { default: '20', int: true },
  seed: { default: '1' },
  timeout: { default: '30', num: true },
  'expect-clients': { default: null, int: true },
  mode: { default: 'normal' },
  'garbage-wait': { default: '3', num: true }
}

function parseArgs (argv) {
  const out = {}
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    if (arg === '-h' || arg === '--help') {
      throw new UsageError('help')
    }
    if (!arg.startsWith('--')) throw new UsageError(`unexpected argument: ${arg}`)
    const key = arg.slice(2)
    if (!(key in FLAGS)) throw new UsageError(`unknown flag: ${arg}`)
    if (i + 1 >= argv.length) throw new UsageError(`missing value for ${arg}`)
    out[key] = argv[++i]
  }
  for (const [key, spec] of Object.entries(FLAGS)) {
    if (out[key] === undefined) {
      if (spec.required) throw new UsageError(`--${key} is required`)
      out[key] = spec.default
    }
    if (out[key] !== null && (spec.int || spec.num)) {
      const v = Number(out[key])
      if (!Number.isFinite(v) || v < 0 || (spec.int && !Number.isInteger(v))) {
        throw new UsageError(`--${key} must be a non-negative ${spec.int ? 'integer' : 'number'}`)
      }
      out[key] = v
    }
  }
  if (!['normal', 'garbage'].includes(out.mode)) {
    throw new UsageError('--mode must be normal or garbage')
  }
  if (!/^wss?:\/\//.test(out.url)) throw new UsageError('--url must be ws:// or wss://')
  return out
}

// ---------------------------------------------------------------- helpers

// xmur3 string hash -> mulberry32 PRNG (deterministic for a given seed+name)
function makeRng (seedText) {
  let h = 1779033703 ^ seedText.length
  for (let i = 0; i < seedText.length; i++) {
    h = Math.imul(h ^ seedText.charCodeAt(i), 3432918353)
    h = (h << 13) | (h >>> 19)
  }
  h = Math.imul(h ^ (h >>> 16), 2246822507)
  h = Math.imul(h ^ (h >>> 13), 3266489909)
  let a = (h ^= h >>> 16) >>> 0
  const rng = () => {
    a = (a + 0x6D2B79F5) | 0
    let t = Math.imul(a ^ (a >>> 15), 1 | a)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  rng.int = (n) => Math.floor(rng() * n) // 0 <= x < n
  rng.pick = (arr) => arr[rng.int(arr.length)]
  return rng
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

function emit (line) {
  process.stdout.write(line + '\n')
}

function log (...args) {
  console.error(`[yjs_client ${ARGS ? ARGS.name : ''}]`, ...args)
}

/** Poll `pred` every `interval` ms until true; reject after `timeoutS`. */
async function waitFor (pred, timeoutS, what, interval = 10) {
  const deadline = Date.now() + timeoutS * 1000
  while (!pred()) {
    if (FATAL) throw FATAL
    if (Date.now() > deadline) throw new TimeoutError(`timed out after ${timeoutS}s waiting for ${what}`)
    await sleep(interval)
  }
  if (FATAL) throw FATAL
}

function toBase64 (u8) {
  return Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength).toString('base64')
}

function writeVarUint (bytes, n) {
  while (n > 0x7f) {
    bytes.push(0x80 | (n & 0x7f))
    n = Math.floor(n / 128)
  }
  bytes.push(n)
}

/** y-protocols frame: varUint(type) [varUint(subtype)] varUint8Array(payload) */
function frame (type, subtype, payload) {
  const head = []
  writeVarUint(head, type)
  if (subtype !== null) writeVarUint(head, subtype)
  if (payload !== null) writeVarUint(head, payload.length)
  return Buffer.concat([Buffer.from(head), Buffer.from(payload || [])])
}

// Strings with non-ASCII (BMP only: no surrogate pairs, since random
// positions in a Y.Text are UTF-16 offsets and could split a pair).
const TEXT_POOL = ['a', 'bc', 'xyz', ' ', 'é', '☕', 'é☕', 'naïve', 'Zoë', '日本', 'ß', '\n', 'ok', '€1']

let ARGS = null
let FATAL = null // set by provider 'closed' (permanent close)
// In garbage mode, exceptions thrown inside the provider's message handler
// (e.g. the server relayed a malformed awareness frame back to us) are
// recorded and reported instead of killing the process.
let PROVIDER_ERRORS = null

// ---------------------------------------------------------------- provider

function makeProvider (args, doc) {
  const params = {}
  if (args.token !== null) params.token = args.token
  const provider = new WebsocketProvider(args.url, args.room, doc, {
    WebSocketPolyfill: WebSocket,
    params,
    // Node 20 has a global BroadcastChannel: without this, two providers in
    // one process would sync with each other, bypassing the server.
    disableBc: true
  })
  provider.awareness.setLocalStateField('user', { name: args.name })
  provider.on('status', ({ status }) => log('status', status))
  provider.on('connection-close', (event) => {
    if (event) log(`connection closed by server: code=${event.code} reason=${JSON.stringify(String(event.reason || ''))}`)
  })
  provider.on('connection-error', (event) => log('connection error:', event && event.message ? event.message : String(event)))
  provider.on('closed', ({ code, reason }) => {
    const info = JSON.stringify({ closed: { code, reason: String(reason || '') } })
    log('server closed the connection permanently (no reconnect):', info)
    FATAL = new ClosedError(info)
  })
  // A freshly seen remote peer may have joined after our last awareness
  // broadcast; re-announce so it learns about us without waiting 15 s.
  // (This is ordinary client behaviour; it does not need server support.)
  provider.awareness.on('change', ({ added }, origin) => {
    if (origin === 'local') return
    if (added.some((id) => id !== doc.clientID) && provider.awareness.getLocalState() !== null) {
      provider.awareness.setLocalState(provider.awareness.getLocalState())
    }
  })
  return provider
}

function connectedAndSynced (provider) {
  return provider.wsconnected && provider.synced && provider.ws !== null
}

function flushed (provider) {
  return connectedAndSynced(provider) && provider.ws.readyState === WebSocket.OPEN &&
    provider.ws.bufferedAmount === 0
}

async function destroyProvider (provider) {
  const ws = provider.ws
  provider.destroy()
  if (ws && ws.readyState !== WebSocket.CLOSED) {
    await Promise.race([
      new Promise((resolve) => ws.once('close', resolve)),
      sleep(1000)
    ])
  }
}

// ---------------------------------------------------------------- normal mode

async function doEdits (args, doc, rng) {
  const text = doc.getText('text')
  const map = doc.getMap('map')
  const name = args.name
  const n = args.edits
  const nestedAt = n > 0 ? rng.int(n) : -1
  const sharedAt = n > 0 ? rng.int(n) : -1
  let nested = null
  for (let i = 0; i < n; i++) {
    await sleep(rng.int(15)) // 0..14 ms, interleaves with the other clients
    if (i === nestedAt || i === sharedAt) {
      // guaranteed once each (both may land on the same edit)
      if (i === nestedAt) {
        doc.transact(() => {
          nested = new Y.Map()
          nested.set('owner', name)
          nested.set('created-at-edit', i)
          map.set(`nested-${name}`, nested)
        })
      }
      if (i === sharedAt) map.set('shared', `${name}-${i}`)
      continue
    }
    const r = rng()
    if (r < 0.45) {
      const pos = rng.int(text.length + 1)
      text.insert(pos, rng.pick(TEXT_POOL) + rng.pick(TEXT_POOL))
    } else if (r < 0.6 && text.length > 0) {
      const pos = rng.int(text.length)
      const len = Math.min(1 + rng.int(3), text.length - pos)
      text.delete(pos, len)
    } else if (r < 0.8) {
      const values = [i, i + 0.5, `${name}é☕${i}`, true, null, [i, 'x'], { k: i, s: 'ß' }]
      map.set(`${name}-${i}`, rng.pick(values))
    } else if (r < 0.9) {
      map.set('shared', `${name}-${i}`)
    } else if (nested !== null) {
      nested.set(`k${rng.int(4)}`, `${name}-${i}`)
    } else {
      // several ops in one transaction -> one multi-struct update
      doc.transact(() => {
        text.insert(rng.int(text.length + 1), `[${name}]`)
        map.set(`${name}-${i}`, i)
      })
    }
  }
}

function dump (provider, doc) {
  return JSON.stringify({
    text: doc.getText('text').toString(),
    map: doc.getMap('map').toJSON(),
    sv: toBase64(Y.encodeStateVector(doc)),
    clientID: doc.clientID,
    name: ARGS.name,
    synced: provider.synced
  })
}

async function runNormal (args) {
  const doc = new Y.Doc()
  const rng = makeRng(`${args.seed}:${args.name}`)
  const provider = makeProvider(args, doc)

  await waitFor(() => connectedAndSynced(provider), args.timeout, 'connect + sync')
  emit('ready')

  if (args['expect-clients'] !== null) {
    const k = args['expect-clients']
    await waitFor(() => provider.awareness.getStates().size >= k, args.timeout,
      `${k} clients in awareness (have ${provider.awareness.getStates().size})`)
  }

  await doEdits(args, doc, rng)
  // All local updates are sent synchronously from doc 'update' while the
  // socket is open; edits made while disconnected are re-sent by the sync
  // step1/step2 exchange after reconnect. So: wait for connected+synced and
  // an empty send buffer.
  await waitFor(() => flushed(provider), args.timeout, 'local updates to be flushed')
  emit('edited')

  // control loop
  const rl = readline.createInterface({ input: process.stdin, terminal: false })
  let quitting = false
  const quit = async () => {
    if (quitting) return
    quitting = true
    rl.close()
    await destroyProvider(provider)
    doc.destroy()
    process.exit(FATAL ? EXIT_CLOSED : 0)
  }
  rl.on('line', (line) => {
    const cmd = line.trim()
    if (cmd === 'dump') emit(dump(provider, doc))
    else if (cmd === 'quit') quit()
    else if (cmd !== '') log('unknown command:', JSON.stringify(cmd))
  })
  rl.on('close', () => quit())
}

// ---------------------------------------------------------------- garbage mode

function garbageCases (args, rng) {
  const randomBytes = (n) => Buffer.from(Array.from({ length: n }, () => rng.int(256)))

  const src = new Y.Doc()
  src.getText('text').insert(0, 'v2 payload é☕')
  src.getMap('map').set('v2', 'should not be applied')
  const v1 = Y.encodeStateAsUpdate(src)
  const v2 = Y.encodeStateAsUpdateV2(src)
  const v1Msg = frame(0, 2, v1)

  return [
    { name: 'random-bytes', data: randomBytes(64) },
    { name: 'empty-frame', data: Buffer.alloc(0) },
    { name: 'sync-update-v2-payload', data: frame(0, 2, v2) },
    { name: 'sync-step2-v2-payload', data: frame(0, 1, v2) },
    { name: 'truncated-sync-update', data: v1Msg.subarray(0, Math.max(3, Math.floor(v1Msg.length / 2))) },
    { name: 'truncated-header', data: Buffer.from([0x00]) },
    { name: 'sync-update-random-payload', data: frame(0, 2, randomBytes(40)) },
    { name: 'sync-step1-garbage-sv', data: frame(0, 0, Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])) },
    { name: 'unknown-sync-subtype', data: frame(0, 7, Buffer.from([0, 0])) },
    { name: 'unknown-message-type', data: frame(99, null, Buffer.from([1, 2, 3])) },
    { name: 'overlong-varuint', data: Buffer.from(Array(12).fill(0xff).concat([0x01])) },
    { name: 'awareness-garbage', data: frame(1, null, randomBytes(20)) },
    { name: 'auth-from-client', data: frame(2, 0, Buffer.from('hi')) },
    { name: 'text-frame', data: 'hello, this is a text frame', text: true }
  ]
}

async function garbageAttempt (args, tc, wsUrl) {
  const result = {
    attempt: tc.name,
    bytes: tc.text ? null : tc.data.length,
    hex: tc.text ? null : Buffer.from(tc.data).subarray(0, 32).toString('hex'),
    opened: false,
    closed: false,
    code: null,
    reason: null,
    messages_before_close: 0,
    error: null
  }
  const ws = new WebSocket(wsUrl)
  ws.binaryType = 'nodebuffer'
  ws.on('message', () => { result.messages_before_close++ })
  ws.on('error', (err) => { result.error = String(err && err.message ? err.message : err) })
  const closed = new Promise((resolve) => ws.once('close', (code, reason) => {
    result.closed = true
    result.code = code
    result.reason = reason.toString('utf8')
    resolve()
  }))
  const opened = new Promise((resolve) => ws.once('open', () => { result.opened = true; resolve() }))
  await Promise.race([opened, closed, sleep(args.timeout * 1000)])
  if (result.opened && !result.closed) {
    // Let the server's initial step1 (and anything else) arrive first.
    await sleep(50)
    ws.send(tc.data, { binary: !tc.text })
    await Promise.race([closed, sleep(args['garbage-wait'] * 1000)])
  }
  if (!result.closed) {
    // Server kept the socket open; that is an observation, not an error.
    ws.terminate()
  }
  return result
}

async function runGarbage (args) {
  const doc = new Y.Doc()
  const rng = makeRng(`${args.seed}:${args.name}:garbage`)
  const provider = makeProvider(args, doc)
  await waitFor(() => connectedAndSynced(provider), args.timeout, 'connect + sync')
  emit('ready')
  PROVIDER_ERRORS = []
  let disconnects = 0
  provider.on('connection-close', () => { disconnects++ })

  const wsUrl = provider.url // same URL (incl. ?token=) the provider uses
  for (const tc of garbageCases(args, rng)) {
    const result = await garbageAttempt(args, tc, wsUrl)
    // Is the well-behaved provider on its own connection still fine?
    result.provider_connected = provider.wsconnected && provider.synced
    result.provider_disconnects = disconnects
    result.provider_errors = PROVIDER_ERRORS.splice(0)
    emit(JSON.stringify(result))
  }
  await destroyProvider(provider)
  doc.destroy()
  process.exit(0)
}

// ---------------------------------------------------------------- main

function fail (err) {
  let code = EXIT_ERROR
  if (err instanceof UsageError) code = EXIT_USAGE
  else if (err instanceof TimeoutError) code = EXIT_TIMEOUT
  else if (err instanceof ClosedError) code = EXIT_CLOSED
  if (err instanceof UsageError && err.message === 'help') {
    console.error('usage: node yjs_client.mjs --url ws://HOST:PORT/v1/yjs --room NAME [--token T] ' +
      '[--name N] [--edits N] [--seed S] [--timeout SEC] [--expect-clients K] ' +
      '[--mode normal|garbage] [--garbage-wait SEC]')
    process.exit(EXIT_USAGE)
  }
  const expected = err instanceof UsageError || err instanceof TimeoutError || err instanceof ClosedError
  const text = expected ? err.message : (err && err.stack ? err.stack : String(err))
  console.error(`[yjs_client ${ARGS ? ARGS.name : ''}] error: ${text}`)
  process.exit(code)
}

process.on('uncaughtException', (err) => {
  if (PROVIDER_ERRORS !== null) {
    log('exception in provider (recorded):', err && err.message)
    PROVIDER_ERRORS.push(String(err && err.message ? err.message : err))
    return
  }
  fail(err)
})
process.on('unhandledRejection', fail)

try {
  ARGS = parseArgs(process.argv.slice(2))
} catch (err) {
  fail(err)
}
const main = ARGS.mode === 'garbage' ? runGarbage : runNormal
main(ARGS).catch(fail)
