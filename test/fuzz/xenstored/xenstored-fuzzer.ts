// Fuzzer: hostile clients against the in-memory xenstored (issue 8 part 3).
//
// The server runs in a child process (server-child.ts) with one socket for dom0 and one per
// fuzz domain. Each batch opens 4..14 concurrent connections, privileged and not (some as
// domains that other fuzzers release), plus up to 19 that connect and vanish, and gives each a
// behaviour: rounds of random and malformed requests (generate.ts), then a clean close, an
// abrupt close mid-frame, a header over XENSTORE_PAYLOAD_MAX (a WRITE just before it must still
// take effect), a frame whose len lies; or first a watch storm, a client that stops reading
// while it floods, a directory too big for DIRECTORY paged through DIRECTORY_PART, or a domain
// writing past its node quota. Every reply is checked as it arrives (fuzz-client.ts). After
// each batch: the server process is alive and logged no internal error; once the batch's
// connections are gone, the server holds no connection, watch, transaction or transaction copy
// of theirs and its tree and per-domain node counts are consistent; a well-behaved client gets
// known answers (health.ts); memory after a full GC and the node count stay under fixed bounds.
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { XsOp, xsOpName } from '../../../protocol/xs-wire.ts';
import { Rng, budgetLeft, deriveSeed, type Finding, type FuzzOptions, type FuzzResult, type Fuzzer } from '../fuzzer.ts';
import { FuzzClient } from './fuzz-client.ts';
import {
  FUZZ_DOMIDS, HEALTH_DOMID, LIFECYCLE_DOMIDS, desyncFrame, frameBytes, nextRequest, oversizeFrame, type Frame, type GenContext,
} from './generate.ts';
import { HealthClient, checkHealth, prepareStore } from './health.ts';
import { ServerProcess, type ServerStats } from './server-process.ts';

const NAME = 'xenstored';
/** Generous deadlines: these detect hangs on a loaded machine, they measure nothing. */
const REPLY_TIMEOUT_MS = 30_000;
const DROP_TIMEOUT_MS = 10_000;
/** Bounds on the server after a full GC. The store the fuzzers can build is bounded (generate.ts). */
const MAX_HEAP_BYTES = 256 << 20;
const MAX_RSS_BYTES = 768 << 20;
const MAX_NODES = 40_000;

type Behaviour = 'clean' | 'abrupt' | 'oversize' | 'desync' | 'watch-storm' | 'slow-reader' | 'wide' | 'quota';
const BEHAVIOURS: readonly (readonly [number, Behaviour])[] = [
  [46, 'clean'], [16, 'abrupt'], [10, 'oversize'], [8, 'desync'], [8, 'watch-storm'], [3, 'slow-reader'], [4, 'wide'], [3, 'quota'],
];
/** Children of a 'wide' directory: 420 names of 10 bytes, so DIRECTORY's reply would pass XENSTORE_PAYLOAD_MAX. */
const WIDE_CHILDREN = Array.from({ length: 420 }, (_, i) => `child-${String(i).padStart(4, '0')}`);

const latin1 = (s: string): Uint8Array => Uint8Array.from(s, (c) => c.charCodeAt(0) & 0xff);

function requests(rng: Rng, ctx: GenContext, n: number): Frame[] {
  return Array.from({ length: n }, () => nextRequest(rng, ctx));
}

/** Plays one connection's part in a batch; oracle violations land in `client.problems`. */
async function play(client: FuzzClient, behaviour: Behaviour, rng: Rng, slot: number, socketOf: (domid: number) => string): Promise<void> {
  await client.open();
  const ctx: GenContext = { privileged: client.privileged, domid: client.domid, openTx: client.openTx, watches: client.watches, nextReqId: 1 };
  const settle = async (): Promise<void> => {
    if (!(await client.idle(REPLY_TIMEOUT_MS))) client.flag(`${client.pending} requests unanswered after ${REPLY_TIMEOUT_MS} ms`);
  };

  if (behaviour === 'watch-storm') {
    // More watches than an unprivileged domain may have (128), on paths others write.
    const frames: Frame[] = [];
    for (let i = 0; i < 140; i++) {
      const p = rng.pick(client.privileged ? ['/', '/fuzz', '/local', 'fuzz', '@introduceDomain'] : ['f', '/local/domain', `/local/domain/${client.domid}`, '/']);
      const token = `storm${i}`;
      const reqId = ctx.nextReqId++;
      const payload = latin1(`${p}\0${token}\0`);
      frames.push({ kind: 'request', type: XsOp.WATCH, reqId, txId: 0, bytes: frameBytes(XsOp.WATCH, reqId, 0, payload), label: `WATCH ${p} ${token}`, watchToken: token });
    }
    await client.send(frames, rng);
    await settle();
  }
  if (behaviour === 'slow-reader' && !client.privileged) {
    // Stop reading while asking for ~4.5 MB of replies: the server must drop us (its unread
    // limit) or answer everything, and stay bounded either way.
    await client.send([nextWriteBig(ctx)], rng);
    await settle();
    client.pauseReading();
    for (let i = 0; i < 12 && !client.closed; i++) {
      const frames: Frame[] = [];
      for (let j = 0; j < 200; j++) {
        const reqId = ctx.nextReqId++;
        frames.push({ kind: 'request', type: XsOp.READ, reqId, txId: 0, bytes: frameBytes(XsOp.READ, reqId, 0, latin1('big\0')), label: 'READ big' });
      }
      await client.send(frames, rng);
      await new Promise((r) => setTimeout(r, 5));
    }
    await new Promise((r) => setTimeout(r, 200));
    client.resumeReading();
    if (!client.closed) await settle();
  }

  if (behaviour === 'wide' && client.privileged) await wide(client, ctx, rng, slot);
  if (behaviour === 'quota' && !client.privileged) {
    // More nodes than the domain may own (1000): ENOSPC, not growth.
    const frames: Frame[] = [];
    for (let i = 0; i < 1100; i++) {
      const reqId = ctx.nextReqId++;
      frames.push({ kind: 'request', type: XsOp.WRITE, reqId, txId: 0, bytes: frameBytes(XsOp.WRITE, reqId, 0, latin1(`q/n${i}\0x`)), label: `WRITE q/n${i}` });
    }
    await client.send(frames, rng);
    await settle();
  }

  for (let round = 1 + rng.int(5); round > 0 && !client.closed; round--) {
    await client.send(requests(rng, ctx, 1 + rng.int(25)), rng);
    await settle();
  }

  switch (behaviour) {
    case 'oversize': {
      // Some requests, then the bad header, in one write: the server must hang up. A dom0
      // client also writes a marker just before the bad header: xenstored handles each message
      // as soon as it is complete (xenstored_core.c handle_input reads one header, then its
      // payload, then process_message), so the write takes effect however the bytes were cut
      // into reads; only the replies still queued may be lost with the connection.
      const marker = client.privileged ? { path: `/fuzz-marker/s${slot}`, value: `${client.name} ${rng.u32()}` } : undefined;
      const frames = [...requests(rng, ctx, rng.int(4))];
      if (marker) frames.push(request(ctx, XsOp.WRITE, `${marker.path}\0${marker.value}`));
      frames.push(oversizeFrame(rng, ctx));
      await client.send(frames, rng);
      if (!(await client.closedWithin(DROP_TIMEOUT_MS))) client.flag(`server kept the connection ${DROP_TIMEOUT_MS} ms after a header over XENSTORE_PAYLOAD_MAX`);
      if (marker) {
        const check = await HealthClient.connect(socketOf(0), 0, REPLY_TIMEOUT_MS);
        try {
          const r = await check.request(XsOp.READ, `${marker.path}\0`, 0, REPLY_TIMEOUT_MS);
          if (r.type !== XsOp.READ || r.payload !== marker.value) {
            client.flag(`a WRITE completed just before a header over XENSTORE_PAYLOAD_MAX was lost: ${marker.path} reads ${JSON.stringify(r.payload)} (type ${r.type}), want ${JSON.stringify(marker.value)}`);
          }
        } finally {
          check.close();
        }
      }
      break;
    }
    case 'desync':
      await client.send([desyncFrame(rng, ctx), ...requests(rng, ctx, rng.int(6))], rng);
      await new Promise((r) => setTimeout(r, 20));
      break;
    case 'abrupt': {
      // Pipelined requests and then part of one more frame, and gone.
      const more = requests(rng, ctx, rng.int(10));
      const tail = nextRequest(rng, ctx).bytes;
      await client.send(more, rng);
      client.writeRaw(tail.subarray(0, 1 + rng.int(tail.length - 1)));
      break;
    }
    default:
      break;
  }
  client.destroy();
}

function request(ctx: GenContext, type: number, payload: string, onReply?: Frame['onReply']): Frame {
  const reqId = ctx.nextReqId++;
  return {
    kind: 'request', type, reqId, txId: 0, bytes: frameBytes(type, reqId, 0, latin1(payload)),
    label: `${xsOpName(type)} ${JSON.stringify(payload.slice(0, 40))}`, ...(onReply ? { onReply } : {}),
  };
}

/**
 * A directory too big for one DIRECTORY reply: xenstored must answer E2BIG (send_reply), and
 * DIRECTORY_PART pages (`<generation>\0` + whole names from the offset + a final `\0` on the last
 * page, xenstored_core.c send_directory_part) must add up to exactly the children written.
 * Nobody else names /fuzz-wide, so the answer is known.
 */
async function wide(client: FuzzClient, ctx: GenContext, rng: Rng, slot: number): Promise<void> {
  const dir = `/fuzz-wide/s${slot}`;
  const ask = async (type: number, payload: string): Promise<{ type: number; payload: string } | undefined> => {
    let got: { type: number; payload: string } | undefined;
    await client.send([request(ctx, type, payload, (t, p) => { got = { type: t, payload: p }; })], rng);
    if (!(await client.idle(REPLY_TIMEOUT_MS))) client.flag(`no reply to ${type} ${payload} within ${REPLY_TIMEOUT_MS} ms`);
    return got;
  };
  await ask(XsOp.RM, `${dir}\0`);
  await client.send(WIDE_CHILDREN.map((c) => request(ctx, XsOp.WRITE, `${dir}/${c}\0${c}`)), rng);
  if (!(await client.idle(REPLY_TIMEOUT_MS))) client.flag(`WRITEs under ${dir} unanswered after ${REPLY_TIMEOUT_MS} ms`);
  const whole = await ask(XsOp.DIRECTORY, `${dir}\0`);
  if (whole && !(whole.type === XsOp.ERROR && whole.payload === 'E2BIG\0')) {
    client.flag(`DIRECTORY of ${WIDE_CHILDREN.length} children (${WIDE_CHILDREN.length * 11} bytes) gave type ${whole.type} ${JSON.stringify(whole.payload.slice(0, 40))}, not E2BIG`);
  }
  const names: string[] = [];
  let generation: string | undefined;
  for (let off = 0, pages = 0; pages < 50; pages++) {
    const r = await ask(XsOp.DIRECTORY_PART, `${dir}\0${off}\0`);
    if (r === undefined || r.type !== XsOp.DIRECTORY_PART) {
      client.flag(`DIRECTORY_PART ${dir} offset ${off} failed: ${JSON.stringify(r)}`);
      return;
    }
    const nul = r.payload.indexOf('\0');
    const gen = r.payload.slice(0, nul);
    if (generation !== undefined && gen !== generation) client.flag(`DIRECTORY_PART generation changed from ${generation} to ${gen} with no write`);
    generation = gen;
    const data = r.payload.slice(nul + 1);
    const last = data === '\0' || data.endsWith('\0\0');
    const chunk = last ? data.slice(0, -1) : data;
    if (chunk.length === 0 && !last) {
      client.flag(`DIRECTORY_PART ${dir} offset ${off}: empty page that is not the last`);
      return;
    }
    names.push(...chunk.split('\0').slice(0, -1));
    off += chunk.length;
    if (last) break;
  }
  const want = WIDE_CHILDREN.join(',');
  if (names.join(',') !== want) {
    client.flag(`DIRECTORY_PART pages of ${dir} gave ${names.length} names (${names.slice(0, 3).join(',')}...), want the ${WIDE_CHILDREN.length} written`);
  }
}

function nextWriteBig(ctx: GenContext): Frame {
  const reqId = ctx.nextReqId++;
  const payload = latin1(`big\0${'B'.repeat(2000)}`);
  return { kind: 'request', type: XsOp.WRITE, reqId, txId: 0, bytes: frameBytes(XsOp.WRITE, reqId, 0, payload), label: 'WRITE big' };
}

/** Connects, writes `bytes` (maybe none), and hangs up at once. */
function flash(path: string, bytes: Uint8Array): Promise<void> {
  return new Promise((resolve) => {
    const sock = net.createConnection(path, () => {
      if (bytes.length > 0) sock.write(bytes);
      sock.destroy();
    });
    sock.on('error', () => {});
    sock.on('close', () => resolve());
  });
}

/** Waits until the server holds only the admin connection and nothing of the batch's. */
async function settledStats(server: ServerProcess): Promise<{ stats: ServerStats | undefined; settled: boolean }> {
  const deadline = Date.now() + DROP_TIMEOUT_MS;
  let stats: ServerStats | undefined;
  for (;;) {
    stats = await server.stats();
    if (stats === undefined) return { stats, settled: false };
    if (stats.connections === 1 && stats.watches === 0 && stats.transactions === 0) return { stats, settled: true };
    if (Date.now() > deadline) return { stats, settled: false };
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** `xenstoredFuzzer` fuzzes the in-memory xenstored over its Unix sockets; one iteration is one frame sent. */
export const xenstoredFuzzer: Fuzzer = {
  name: NAME,
  description: 'random and malformed xs_wire messages from many concurrent dom0/domU connections against the in-memory xenstored',
  async run(opts: FuzzOptions): Promise<FuzzResult> {
    const started = Date.now();
    const findings: Finding[] = [];
    const counters: Record<string, number> = {
      batches: 0, connections: 0, messages: 0, replies: 0, errors: 0, events: 0, 'expected-drops': 0,
      'unanswered-before-drop': 0, 'slow-readers-dropped': 0, 'flash-connections': 0, 'health-requests': 0, 'max-heap-mb': 0, 'max-rss-mb': 0, 'max-nodes': 0,
    };
    const dir = mkdtempSync(join(tmpdir(), 'xenblk-fuzz-xs-'));
    const server = await ServerProcess.start(dir, [0, ...FUZZ_DOMIDS, ...LIFECYCLE_DOMIDS, HEALTH_DOMID]);
    let admin: HealthClient | undefined;
    let seenInternal = 0;
    // The budget is checked between batches, so this many iterations replays up to the batch that found it.
    let messagesBeforeBatch = 0;
    const find = (batchSeed: number, summary: string, detail?: string): void => {
      findings.push({
        fuzzer: NAME, seed: batchSeed, summary,
        reproduce: `npm run fuzz -- --only ${NAME} --seed ${opts.seed} --iterations ${messagesBeforeBatch + 1}`,
        ...(detail !== undefined ? { detail } : {}),
      });
      opts.log(`${NAME}: FINDING (batch seed ${batchSeed}): ${summary}`);
    };
    try {
      admin = await HealthClient.connect(server.socket(0), 0, REPLY_TIMEOUT_MS);
      for (let batch = 0; budgetLeft(opts, started, counters.messages!); batch++) {
        const batchSeed = deriveSeed(opts.seed, batch);
        messagesBeforeBatch = counters.messages!;
        const rng = new Rng(batchSeed);
        await prepareStore(admin, REPLY_TIMEOUT_MS);

        const n = 4 + rng.int(11);
        const plays: Promise<void>[] = [];
        const clients: FuzzClient[] = [];
        for (let i = 0; i < n; i++) {
          const privileged = rng.chance(0.35);
          const released = !privileged && rng.chance(0.15);
          const domid = privileged ? 0 : released ? rng.pick(LIFECYCLE_DOMIDS) : rng.pick(FUZZ_DOMIDS);
          const behaviour = rng.weighted(BEHAVIOURS);
          const client = new FuzzClient(server.socket(domid), domid, `batch ${batch} conn ${i} (domid ${domid}, ${behaviour})`);
          client.mayBeReleased = released;
          clients.push(client);
          plays.push(play(client, behaviour, new Rng(deriveSeed(batchSeed, i + 1)), i, (d) => server.socket(d)).catch((e: unknown) => {
            client.flag(`client failed: ${e instanceof Error ? e.message : String(e)}`);
            client.destroy();
          }));
        }
        // Connection churn beside them: connect and vanish, maybe after a few bytes of a header.
        const flashes = rng.int(20);
        for (let i = 0; i < flashes; i++) {
          const domid = rng.pick([0, ...FUZZ_DOMIDS]);
          const bytes = rng.bytes(rng.int(16));
          plays.push(flash(server.socket(domid), bytes));
        }
        counters['flash-connections']! += flashes;
        await Promise.all(plays);
        counters.batches!++;
        for (const c of clients) {
          counters.connections!++;
          counters.messages! += c.counters.sent;
          counters.replies! += c.counters.replies;
          counters.errors! += c.counters.errors;
          counters.events! += c.counters.events;
          if (c.expectDrop && c.closedBy === 'server') counters['expected-drops']!++;
          if (c.mayBeDropped && c.closedBy === 'server') counters['slow-readers-dropped']!++;
          counters['unanswered-before-drop']! += c.lostBeforeDrop;
          for (const [e, k] of c.errorNames) counters[e] = (counters[e] ?? 0) + k;
          for (const note of c.notes) opts.log(`${NAME}: note: ${c.name}: ${note}`);
          if (c.problems.length > 0) {
            find(batchSeed, `${c.name}: ${c.problems[0]}${c.problems.length > 1 ? ` (+${c.problems.length - 1} more)` : ''}`,
              [...c.problems.map((p) => `problem: ${p}`), `--- transcript (last ${Math.min(c.transcript.length, 400)} lines) ---`, ...c.transcript].join('\n'));
          }
        }

        if (!server.alive) {
          find(batchSeed, `server process exited (code ${server.exit?.code}, signal ${server.exit?.signal})`, server.stderr);
          break;
        }
        if (server.internalErrors.length > seenInternal) {
          const lines = server.internalErrors.slice(seenInternal);
          seenInternal = server.internalErrors.length;
          find(batchSeed, `server logged ${lines.length} internal error(s): ${lines[0]!.slice(0, 300)}`, lines.join('\n'));
        }
        const { stats, settled } = await settledStats(server);
        if (stats === undefined) {
          find(batchSeed, 'server stopped answering its stats channel', server.stderr);
          break;
        }
        if (!settled) {
          find(batchSeed, `after the batch's connections closed the server still holds ${stats.connections - 1} of them, ${stats.watches} watches, ${stats.transactions} transactions`);
        } else if (stats.transactionCopies !== 0) {
          find(batchSeed, `no transaction is open, yet the store holds ${stats.transactionCopies} transaction copies`);
        }
        if (stats.integrity.length > 0) {
          find(batchSeed, `store inconsistent after the batch: ${stats.integrity[0]}${stats.integrity.length > 1 ? ` (+${stats.integrity.length - 1} more)` : ''}`, stats.integrity.join('\n'));
          break;
        }
        counters['max-heap-mb'] = Math.max(counters['max-heap-mb']!, Math.round(stats.heapUsed / 2 ** 20));
        counters['max-rss-mb'] = Math.max(counters['max-rss-mb']!, Math.round(stats.rss / 2 ** 20));
        counters['max-nodes'] = Math.max(counters['max-nodes']!, stats.nodes);
        if (stats.heapUsed > MAX_HEAP_BYTES || stats.rss > MAX_RSS_BYTES || stats.nodes > MAX_NODES) {
          find(batchSeed, `server memory unbounded: heap ${stats.heapUsed} B, rss ${stats.rss} B, ${stats.nodes} nodes (bounds ${MAX_HEAP_BYTES}, ${MAX_RSS_BYTES}, ${MAX_NODES})`);
          break;
        }
        try {
          counters['health-requests']! += await checkHealth(admin, (d) => server.socket(d), batch, REPLY_TIMEOUT_MS);
        } catch (e) {
          find(batchSeed, `health check after the batch failed: ${e instanceof Error ? e.message : String(e)}`, server.stderr);
          break;
        }
        opts.log(`${NAME}: batch ${batch}: ${n} connections, ${counters.messages} messages so far, heap ${Math.round(stats.heapUsed / 2 ** 20)} MB, ${stats.nodes} nodes`);
      }
    } finally {
      admin?.close();
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    }
    return { iterations: counters.messages!, unit: 'messages', findings, counters };
  },
};
