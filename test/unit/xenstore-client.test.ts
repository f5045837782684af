// The client over a scripted transport: multiplexing by req_id, events arriving before an
// unrelated reply, a peer breaking xs_wire.h, connection loss, transaction retry limits and
// the DIRECTORY_PART fallback, without any server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { XenstoreClient } from '../../xenstore/client.ts';
import { XenstoreError } from '../../xenstore/errors.ts';
import type { TransportSink, XenstoreTransport } from '../../xenstore/transport.ts';
import { XsMessageReader, XsOp, encodeMessage, type XsMessage } from '../../protocol/xs-wire.ts';

const enc = new TextEncoder();
const dec = new TextDecoder();

/** A transport whose "server" is a function from request to reply messages. */
class FakeTransport implements XenstoreTransport {
  readonly description = 'fake';
  sink: TransportSink | undefined;
  readonly sent: XsMessage[] = [];
  private readonly reader = new XsMessageReader();
  constructor(private readonly serve: (m: XsMessage, t: FakeTransport) => void) {}
  start(sink: TransportSink): void {
    this.sink = sink;
  }
  send(bytes: Uint8Array): void {
    for (const m of this.reader.feed(bytes)) {
      this.sent.push(m);
      queueMicrotask(() => this.serve(m, this));
    }
  }
  push(m: XsMessage): void {
    this.sink?.data(encodeMessage(m));
  }
  reply(req: XsMessage, text: string, type = req.type): void {
    this.push({ type, reqId: req.reqId, txId: req.txId, payload: enc.encode(text) });
  }
  async close(): Promise<void> {
    this.sink?.end();
  }
}

function isErr(code: string, op?: string) {
  return (e: unknown): boolean => e instanceof XenstoreError && e.code === code && (op === undefined || e.op === op);
}

test('replies are matched by req_id and events delivered while requests are in flight', async () => {
  let held: XsMessage | undefined;
  const t = new FakeTransport((m, tr) => {
    if (m.type === XsOp.WATCH) {
      // The event arrives before the WATCH reply, and before the reply to a held READ.
      tr.push({ type: XsOp.WATCH_EVENT, reqId: 0, txId: 0, payload: enc.encode('/w\0tok\0') });
      tr.reply(m, 'OK\0');
    } else if (m.type === XsOp.READ && dec.decode(m.payload) === '/slow\0') {
      held = m;
    } else if (m.type === XsOp.READ) {
      tr.reply(m, 'fast');
      if (held) tr.reply(held, 'slow');
    }
  });
  const c = new XenstoreClient(t);
  const slow = c.read('/slow');
  const w = c.watch('/w', 'tok');
  const it = w[Symbol.asyncIterator]();
  assert.deepEqual((await it.next()).value, { path: '/w', token: 'tok' });
  assert.equal(await c.read('/fast'), 'fast');
  assert.equal(await slow, 'slow');
  assert.notEqual(t.sent[0]!.reqId, t.sent[1]!.reqId);
  await c.close();
  assert.equal((await it.next()).done, true, 'close() ends watches without error');
});

test('XS_ERROR becomes XenstoreError with op and path; a broken peer is EPROTO and ends the connection', async () => {
  const t = new FakeTransport((m, tr) => {
    if (m.type === XsOp.READ) tr.reply(m, 'ENOENT\0', XsOp.ERROR);
    if (m.type === XsOp.DIRECTORY) tr.reply(m, 'x\0', XsOp.WRITE); // wrong reply type
    if (m.type === XsOp.MKDIR) tr.push({ type: XsOp.MKDIR, reqId: 999, txId: 0, payload: enc.encode('OK\0') }); // unknown req_id
  });
  const c = new XenstoreClient(t);
  await assert.rejects(c.read('/a/b'), (e: unknown) => isErr('ENOENT', 'READ')(e) && (e as XenstoreError).path === '/a/b');
  assert.equal(await c.tryRead('/a/b'), undefined);
  await assert.rejects(c.directory('/d'), isErr('EPROTO', 'DIRECTORY'));
  const w = c.watch('/w', 't');
  const pending = c.mkdir('/m');
  await assert.rejects(pending, isErr('ECONNRESET'));
  await assert.rejects(w[Symbol.asyncIterator]().next(), isErr('EPROTO'));
  await assert.rejects(c.read('/after'), isErr('ECONNRESET', 'READ'));
});

test('connection loss rejects every pending request and ends watches with an error', async () => {
  const t = new FakeTransport(() => {});
  const c = new XenstoreClient(t);
  const a = c.read('/a');
  const b = c.write('/b', 'x');
  const w = c.watch('/w');
  t.sink!.end(new Error('socket reset'));
  await assert.rejects(a, isErr('ECONNRESET', 'READ'));
  await assert.rejects(b, isErr('ECONNRESET', 'WRITE'));
  await assert.rejects(w[Symbol.asyncIterator]().next(), isErr('ECONNRESET'));
});

test('transaction() retries EAGAIN with backoff and gives up after maxAttempts', async () => {
  let starts = 0;
  let ends = 0;
  const t = new FakeTransport((m, tr) => {
    if (m.type === XsOp.TRANSACTION_START) tr.reply(m, `${++starts}\0`);
    else if (m.type === XsOp.TRANSACTION_END) {
      ends++;
      tr.reply(m, 'EAGAIN\0', XsOp.ERROR);
    } else tr.reply(m, 'OK\0');
  });
  const c = new XenstoreClient(t, { backoffMs: 0, maxBackoffMs: 0 });
  let bodies = 0;
  await assert.rejects(c.transaction(async (tx) => {
    bodies++;
    await tx.write('/x', '1');
  }, { maxAttempts: 4 }), (e: unknown) => isErr('EAGAIN', 'TRANSACTION_END')(e) && /after 4 attempts/.test((e as Error).message));
  assert.equal(bodies, 4);
  assert.equal(ends, 4);
  // Writes inside carried the transaction id.
  assert.deepEqual(t.sent.filter((m) => m.type === XsOp.WRITE).map((m) => m.txId), [1, 2, 3, 4]);
  await c.close();
});

test('a directory too large for one reply is read with DIRECTORY_PART, restarting when it changes', async () => {
  const names = Array.from({ length: 5 }, (_, i) => `n${i}`);
  const blob = names.map((n) => `${n}\0`).join('');
  let gen = 7;
  let calls = 0;
  const t = new FakeTransport((m, tr) => {
    if (m.type === XsOp.DIRECTORY) return tr.reply(m, 'E2BIG\0', XsOp.ERROR);
    const [, off] = dec.decode(m.payload).split('\0');
    calls++;
    if (calls === 2) gen++; // the directory changed between parts: start over
    const o = Number(off);
    // Serve two names per part; the last part carries the extra NUL.
    const rest = blob.slice(o);
    const part = rest.split('\0').slice(0, 2).map((n) => `${n}\0`).join('');
    const last = o + part.length >= blob.length;
    tr.reply(m, `${gen}\0${o >= blob.length ? '\0' : part + (last ? '\0' : '')}`);
  });
  const c = new XenstoreClient(t);
  assert.deepEqual(await c.directory('/big'), names);
  assert.ok(calls > 3);
  await c.close();
});

test('watch tokens are unique per connection; requests over XENSTORE_PAYLOAD_MAX are refused locally', async () => {
  const t = new FakeTransport((m, tr) => tr.reply(m, 'OK\0'));
  const c = new XenstoreClient(t);
  const a = c.watch('/a', 'same');
  const b = c.watch('/b', 'same');
  await assert.rejects(b[Symbol.asyncIterator]().next(), isErr('EEXIST', 'WATCH'));
  await a.close();
  await assert.rejects(c.write('/big', 'x'.repeat(5000)), isErr('E2BIG', 'WRITE'));
  assert.ok(!t.sent.some((m) => m.type === XsOp.WRITE));
  await c.close();
});

test('the client runs over an in-process xenstored (no sockets)', async () => {
  const { XenstoredCore } = await import('../../xenstore/server/core.ts');
  const { inProcessTransport } = await import('../../xenstore/server/in-process-transport.ts');
  const core = new XenstoredCore();
  const c = new XenstoreClient(inProcessTransport(core, 0));
  await c.write('/a/b', 'v');
  assert.equal(await c.read('/a/b'), 'v');
  const w = c.watch('/a');
  const it = w[Symbol.asyncIterator]();
  assert.equal((await it.next()).value!.path, '/a');
  await c.rm('/a/b');
  assert.equal((await it.next()).value!.path, '/a/b');
  core.introduceDomain(3);
  const d3 = new XenstoreClient(inProcessTransport(core, 3));
  await assert.rejects(d3.read('/a'), isErr('EACCES', 'READ'));
  core.releaseDomain(3);
  await assert.rejects(d3.read('/a'), isErr('ECONNRESET'));
  await c.close();
  await d3.close();
});
