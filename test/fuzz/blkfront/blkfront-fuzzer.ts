// Fuzzer: a malicious backend against xenblk's blkfront (issue 8 part 2), in process.
//
// Each session is a fresh world: the memory platform, an in-process xenstored, a vbd created as
// a toolstack does (test/support/blkfront-fixture.ts), the hostile backend (hostile-backend.ts)
// and a Blkfront attached to it. Three kinds of session:
//   io       the handshake goes through; a workload of reads, writes, flushes and discards on
//            disjoint regions meets a backend that delays, reorders, fails, never answers,
//            answers after the frontend gave up (with poisoned pages), flips its state to
//            garbage or Closed and back (the frontend must reconnect and re-issue), or breaks
//            the ring protocol once (duplicate / out-of-range / stale-generation / idle-slot ids,
//            wrong operation, rsp_prod far ahead or behind, rsp_prod over unwritten slots);
//   garbage  garbage in the keys the backend writes before InitWait or with Connected;
//   stuck    a backend that stays silent, stays in InitWait, or sits in a garbage state.
// Oracles: no exception escapes; attach either connects or fails with a BlkfrontError (EPROTO
// naming one of the garbage keys, ETIMEDOUT, ABORT_ERR); every operation settles; a resolved
// read holds exactly the disk's data and a resolved write is on the disk; an operation aborted
// while pending rejects with ABORT_ERR and its buffer is never written again; error statuses
// give EIO/EOPNOTSUPP (a flush answered EOPNOTSUPP completes: the disk writes through); a
// protocol break disables the device (EPROTO for everything pending and later) and nothing else
// does; after disconnect nothing stays granted, mapped or bound.
import { createMemoryPlatform } from '../../support/memory-host.ts';
import { createVbd, memoryXenstore, newCore } from '../../support/blkfront-fixture.ts';
import { Blkfront } from '../../../lib/blkfront/device.ts';
import { BlkfrontError } from '../../../lib/blkfront/errors.ts';
import { BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR } from '../../../protocol/blkif.ts';
import { Rng, budgetLeft, deriveSeed, type Finding, type FuzzOptions, type FuzzResult, type Fuzzer } from '../fuzzer.ts';
import { BREAK_KINDS, HostileBackend } from './hostile-backend.ts';
import type { Action, HostileConfig, SeenRequest, StateScript } from './hostile-backend.ts';

const NAME = 'blkfront';
const FRONT = 1;
const BACK = 0;
const XVDB = 51728;
const DISK_BYTES = 16 << 20;
/** Hang detectors on a loaded machine, not measurements. */
const SESSION_DEADLINE_MS = 30_000;
const MAX_FINDINGS = 20;

export type SessionKind = 'io' | 'garbage' | 'stuck';
type Profile = 'honest' | 'errors' | 'silent' | 'late' | 'break' | 'flap' | 'mixed';
type Fate = 'honest' | 'slow' | 'error' | 'never' | 'late';

const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

/** Keys a backend writes, and garbage for them (some of it acceptable: the frontend may take it). */
const PROBE_GARBAGE: Record<string, string[]> = {
  'max-ring-page-order': ['abc', '-1', '99', '4294967296', '', ' 2 ', '1e3', '0x2', '18446744073709551616', '3.5'],
  'multi-queue-max-queues': ['0', '1000000', 'x', '-4', '', '4294967295', '99999999999999999'],
  'feature-persistent': ['2', 'yes', '-1', ''],
};
const CONNECT_GARBAGE: Record<string, string[]> = {
  sectors: ['abc', '-1', '0', '99999999999999999999', '1e9', '', '18014398509481984', '32768.5'],
  'sector-size': ['0', '513', '8192', 'abc', '256', '1024', '4096', '-512', ''],
  'physical-sector-size': ['256', '3000', 'x', '65536', '0'],
  info: ['x', '4294967296', '-1', '7', ''],
  'feature-flush-cache': ['2', 'x', '-1', ''],
  'feature-discard': ['on', '2', ''],
  'discard-granularity': ['x', '-1', '4294967296'],
  'feature-max-indirect-segments': ['-5', '9999999', 'abc', '5000', '12', '4294967296', ''],
};
const GARBAGE_STATES = ['99', 'abc', '', '3', '5', '6', '7', '8', '4', '-1', ' 2', '0', '1'];

interface OpRec {
  readonly n: number;
  readonly kind: 'read' | 'write' | 'flush' | 'discard' | 'bad';
  /** Logical sectors. */
  readonly sector: number;
  readonly count: number;
  /** 512-byte region [start, end) no other operation touches. */
  readonly start512: number;
  readonly end512: number;
  readonly buf: Buffer | undefined;
  readonly fate: Fate;
  readonly ac: AbortController;
  readonly issuedTurn: number;
  /** Status given to the erroring request (fate 'error'). */
  errorStatus: number | undefined;
  /** Settled: 'ok', or the error. */
  result: { ok: true } | { ok: false; error: unknown } | undefined;
  abortedWhilePending: boolean;
  abortSnapshot: Buffer | undefined;
  /** The buffer when the operation was rejected: it must never change afterwards. */
  rejectSnapshot: Buffer | undefined;
  /** The protocol was broken while this operation was pending. */
  pendingAtBreak: boolean;
  pendingAtFlap: boolean;
  /** What the backend decided for each request of this operation (diagnostics). */
  readonly actions: string[];
}

export interface SessionResult {
  readonly problems: string[];
  readonly counters: Record<string, number>;
}

function code(e: unknown): string {
  return e instanceof BlkfrontError ? e.code : `non-BlkfrontError ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`;
}

function hostileConfig(rng: Rng, script: StateScript): HostileConfig {
  return {
    script,
    probeKeys: {},
    connectKeys: {},
    garbageState: rng.pick(GARBAGE_STATES),
    maxIndirect: rng.pick([0, 8, 16, 32, 256]),
    maxRingPageOrder: rng.pick([0, 0, 1, 2, 4]),
    maxQueues: rng.pick([1, 1, 2, 4]),
    persistent: rng.chance(0.5),
    flush: rng.chance(0.7),
    discard: rng.chance(0.6),
    discardSecure: rng.chance(0.5),
    sectorSize: 512,
  };
}

/** `blkfrontSession(seed, kind)` runs one session (a finding's reproduction); problems are oracle violations. */
export async function blkfrontSession(seed: number, kind: SessionKind): Promise<SessionResult> {
  const rng = new Rng(seed);
  const problems: string[] = [];
  const counters: Record<string, number> = {};
  const count = (k: string, n = 1): void => { counters[k] = (counters[k] ?? 0) + n; };
  const platform = createMemoryPlatform({ ramPages: 4096 });
  const core = newCore(FRONT);
  const xs0 = memoryXenstore(core, 0);
  const xsb = memoryXenstore(core, 0);
  const host = platform.host(FRONT, memoryXenstore(core, FRONT));
  const paths = await createVbd(xs0, FRONT, BACK, XVDB);
  const disk = Buffer.from(rng.bytes(4096));
  const diskBuf = Buffer.alloc(DISK_BYTES);
  for (let o = 0; o < DISK_BYTES; o += 4096) disk.copy(diskBuf, o);
  const script: StateScript = kind === 'stuck' ? rng.pick(['silent', 'stuck-initwait', 'garbage-state'] as const) : 'normal';
  const cfg = hostileConfig(rng, script);
  const garbageKeys: string[] = [];
  if (kind === 'garbage') {
    const table = rng.chance(0.4) ? PROBE_GARBAGE : CONNECT_GARBAGE;
    const target = table === PROBE_GARBAGE ? cfg.probeKeys : cfg.connectKeys;
    for (let i = 1 + rng.int(2); i > 0; i--) {
      const key = rng.pick(Object.keys(table));
      target[key] = rng.pick(table[key]!);
      garbageKeys.push(`${paths.backendPath}/${key}`);
    }
  }
  const backend = new HostileBackend(xsb, platform, BACK, FRONT, paths.frontendPath, paths.backendPath, diskBuf, cfg, () => rng.next());
  let front: Blkfront | undefined;
  const events: string[] = [];
  try {
    await backend.start();
    // Attach: stuck backends must be given up on (a timeout, or the caller's signal).
    const attachAbort = new AbortController();
    const connectTimeoutMs = kind === 'stuck' ? 30 + rng.int(200) : 10_000;
    let abortTimer: NodeJS.Timeout | undefined;
    if (kind === 'stuck' && rng.chance(0.4)) abortTimer = setTimeout(() => attachAbort.abort(new Error('fuzzer gave up')), rng.int(100));
    const t0 = Date.now();
    try {
      front = await Blkfront.attach(host, 'xvdb', {
        connectTimeoutMs, closeTimeoutMs: 300, signal: attachAbort.signal,
        maxQueues: 1 + rng.int(2), maxRingPageOrder: rng.pick([0, 1, 2]), maxIndirectSegments: rng.pick([0, 16, 32, 64]),
        persistent: rng.chance(0.5), maxPersistentPages: 64, abi: rng.chance(0.2) ? 'x86_32' : 'x86_64',
      });
    } catch (e) {
      count(`attach-${code(e)}`);
      if (!(e instanceof BlkfrontError)) problems.push(`attach threw ${code(e)}: ${e instanceof Error ? e.stack : ''}`);
      else if (kind === 'io') problems.push(`attach to a well-behaved backend failed: ${e.code} ${e.message}`);
      else if (kind === 'stuck' && e.code !== 'ETIMEDOUT' && e.code !== 'ABORT_ERR') problems.push(`attach to a stuck backend (${script} ${JSON.stringify(cfg.garbageState)}) failed with ${e.code} (${e.message}), not ETIMEDOUT or ABORT_ERR`);
      else if (kind === 'garbage' && !(e.code === 'EPROTO' && (garbageKeys.includes(String(e.field)) || related(garbageKeys, String(e.field))))) {
        problems.push(`attach with garbage ${garbageKeys.map((k) => `${k.split('/').pop()}=${JSON.stringify(cfg.probeKeys[k.split('/').pop()!] ?? cfg.connectKeys[k.split('/').pop()!])}`).join(', ')} failed with ${e.code} field ${e.field}: ${e.message}`);
      }
      const took = Date.now() - t0;
      if (kind === 'stuck' && took > connectTimeoutMs + 10_000) problems.push(`attach took ${took} ms to give up on a stuck backend (connectTimeoutMs ${connectTimeoutMs})`);
    } finally {
      clearTimeout(abortTimer);
    }
    if (front !== undefined) {
      count('attached');
      if (kind === 'stuck') problems.push(`attach succeeded against a stuck backend (${script} ${JSON.stringify(cfg.garbageState)})`);
      const f = front;
      for (const ev of ['disabled', 'unplugged', 'reconnecting', 'reconnected', 'resize'] as const) f.on(ev, () => events.push(ev));
      f.on('warning', () => events.push('warning'));
      const info = await f.getInfo();
      if (!(Number.isSafeInteger(info.sectors) && info.sectors >= 0 && [512, 1024, 2048, 4096].includes(info.sectorSize))) {
        problems.push(`getInfo after garbage is not sane: ${JSON.stringify({ sectors: info.sectors, sectorSize: info.sectorSize })}`);
      }
      await workload(rng, f, backend, diskBuf, info.sectors, info.sectorSize, !info.readWrite, kind === 'io' ? pickProfile(rng) : 'honest', problems, count, events);
    }
  } catch (e) {
    problems.push(`session failed: ${e instanceof Error ? e.stack ?? e.message : String(e)}`);
  } finally {
    const t0 = Date.now();
    await front?.disconnect();
    if (Date.now() - t0 > SESSION_DEADLINE_MS) problems.push(`disconnect took ${Date.now() - t0} ms`);
    await backend.stop();
    const u = platform.usage(FRONT);
    if (u.grants !== 0 || u.ports !== 0 || u.mappings !== 0) {
      problems.push(`after disconnect the frontend holds ${u.grants} grants, ${u.ports} ports, ${u.mappings} mappings (pending revocations ${front?.stats().pendingRevocations ?? '-'})`);
    }
    problems.push(...backend.problems.map((p) => `backend saw: ${p}`));
    await host.close();
    await xs0.close();
    await xsb.close();
  }
  return { problems, counters };
}

/** A key whose (valid) value the garbage in `keys` makes inconsistent: physical-sector-size below a garbage sector-size. */
function related(keys: readonly string[], field: string): boolean {
  return field.endsWith('/physical-sector-size') && keys.some((k) => k.endsWith('/sector-size'));
}

function pickProfile(rng: Rng): Profile {
  return rng.weighted([[25, 'honest'], [15, 'errors'], [12, 'silent'], [12, 'late'], [14, 'break'], [10, 'flap'], [12, 'mixed']] as const);
}

/** Drives operations on disjoint regions against the backend's policy and checks each outcome. */
async function workload(
  rng: Rng, f: Blkfront, backend: HostileBackend, disk: Buffer, sectors: number, sectorSize: number, readOnly: boolean, profile: Profile,
  problems: string[], count: (k: string, n?: number) => void, events: string[],
): Promise<void> {
  const per = sectorSize / 512;
  const diskSectors = Math.min(sectors, disk.length / sectorSize);
  const ops: OpRec[] = [];
  const byRegion: OpRec[] = [];
  let nextSector = rng.int(8);
  let turnNo = 0;
  let broke = false;
  const total = 8 + rng.int(30);
  const breakAt = profile === 'break' ? rng.int(total) : -1;
  const flapAt = profile === 'flap' ? rng.int(total) : -1;
  const maxInFlight = 1 + rng.int(8);
  count(`profile-${profile}`);
  // XENBLK_FUZZ_DEBUG=1 narrates a session being reproduced (blkfrontSession(seed, kind)).
  if (process.env.XENBLK_FUZZ_DEBUG) console.log(`profile ${profile} total ${total} breakAt ${breakAt} flapAt ${flapAt}`);

  backend.policy = (r: SeenRequest): Action => {
    // A flush carries no range: it is the oldest flush still pending (flushes go out one at a
    // time, after everything before them was answered).
    const isFlush = r.dataOp === BLKIF_OP_FLUSH_DISKCACHE || r.dataOp === BLKIF_OP_WRITE_BARRIER;
    const op = isFlush ? ops.find((o) => o.kind === 'flush' && o.result === undefined) : byRegion.find((o) => r.sector >= o.start512 && r.sector < o.end512);
    const fate: Fate = op?.fate ?? 'honest';
    const a = decide(fate, op);
    op?.actions.push(`${a.kind}@${turnNo}:${r.sector}+${r.nsect}`);
    return a;
  };
  const decide = (fate: Fate, op: OpRec | undefined): Action => {
    switch (fate) {
      case 'slow': return { kind: 'answer', turns: 3 + rng.int(20) };
      case 'never': return { kind: 'never' };
      case 'late': return { kind: 'late' };
      case 'error': {
        if (op !== undefined && op.errorStatus === undefined) {
          op.errorStatus = rng.pick([BLKIF_RSP_ERROR, BLKIF_RSP_ERROR, BLKIF_RSP_EOPNOTSUPP, 7, -3, 32767, -32768, 1]);
          return { kind: 'status', status: op.errorStatus, turns: rng.int(3) };
        }
        return { kind: 'answer', turns: rng.int(3) };
      }
      default: return { kind: 'answer', turns: rng.chance(0.5) ? 0 : rng.int(4) };
    }
  };

  const fateFor = (): Fate => {
    switch (profile) {
      case 'honest': return rng.chance(0.3) ? 'slow' : 'honest';
      case 'errors': return rng.chance(0.4) ? 'error' : 'honest';
      case 'silent': return rng.chance(0.4) ? 'never' : 'honest';
      case 'late': return rng.chance(0.4) ? 'late' : 'honest';
      case 'mixed': return rng.pick(['honest', 'slow', 'error', 'never', 'late'] as const);
      default: return rng.chance(0.2) ? 'slow' : 'honest';
    }
  };

  const issue = (n: number): void => {
    const fate = fateFor();
    const w = rng.int(100);
    const kind: OpRec['kind'] = w < 40 ? 'read' : w < 75 ? 'write' : w < 85 ? 'flush' : w < 95 ? 'discard' : 'bad';
    const cnt = 1 + rng.int(rng.chance(0.2) ? 64 : 12);
    let sector = nextSector;
    if (kind !== 'flush' && kind !== 'bad' && sector + cnt > diskSectors) sector = -1;
    const ac = new AbortController();
    const ranged = sector >= 0 && kind !== 'flush' && kind !== 'bad';
    const rec: OpRec = {
      n, kind, sector, count: cnt, start512: ranged ? sector * per : -1, end512: ranged ? (sector + cnt) * per : -1,
      buf: kind === 'read' ? Buffer.alloc(cnt * sectorSize, 0xa5) : kind === 'write' ? Buffer.from(rng.bytes(cnt * sectorSize)) : undefined,
      fate: kind === 'flush' || kind === 'bad' ? (fate === 'late' || fate === 'never' ? fate : 'honest') : fate,
      ac, issuedTurn: turnNo, errorStatus: undefined, result: undefined, abortedWhilePending: false, abortSnapshot: undefined,
      rejectSnapshot: undefined, pendingAtBreak: false, pendingAtFlap: false, actions: [],
    };
    if (ranged) {
      nextSector = sector + cnt + rng.int(4);
      byRegion.push(rec);
    }
    ops.push(rec);
    // Some operations carry a real timeout signal instead of the fuzzer's controller.
    const signal = rec.fate === 'never' && rng.chance(0.3) ? AbortSignal.any([ac.signal, AbortSignal.timeout(5 + rng.int(40))]) : ac.signal;
    let p: Promise<void>;
    try {
      switch (kind) {
        case 'read': p = sector < 0 ? f.read(diskSectors, rec.buf!, { signal }) : f.read(sector, rec.buf!, { signal }); break;
        case 'write': p = sector < 0 ? f.write(diskSectors, rec.buf!, { signal }) : f.write(sector, rec.buf!, { signal }); break;
        case 'flush': p = f.flush({ signal }); break;
        case 'discard': p = sector < 0 ? f.discard(diskSectors, cnt, { signal }) : f.discard(sector, cnt, { signal, secure: rng.chance(0.2) }); break;
        default: p = rng.chance(0.5) ? f.read(-1, Buffer.alloc(sectorSize), { signal }) : f.write(0, Buffer.alloc(sectorSize + 1), { signal });
      }
    } catch (e) {
      problems.push(`op ${n} (${kind}) threw synchronously: ${code(e)}`);
      rec.result = { ok: false, error: e };
      return;
    }
    p.then(() => { rec.result = { ok: true }; }, (e: unknown) => {
      rec.result = { ok: false, error: e };
      if (rec.buf !== undefined) rec.rejectSnapshot = Buffer.from(rec.buf);
    });
  };

  const deadline = Date.now() + SESSION_DEADLINE_MS;
  /** Late answers let through a few turns after their operation was given up. */
  const lateReleases: { at: number; start: number; n: number }[] = [];
  let issued = 0;
  let spins = 0;
  while (issued < total || ops.some((o) => o.result === undefined)) {
    const pending = ops.filter((o) => o.result === undefined);
    if (issued < total && pending.length < maxInFlight) {
      if (issued === breakAt && !broke) {
        broke = true;
        backend.pendingBreak = rng.pick(BREAK_KINDS);
        for (const o of pending) o.pendingAtBreak = true;
        count('breaks');
      }
      if (issued === flapAt) {
        for (const o of pending) o.pendingAtFlap = true;
        const v = rng.pick(['99', 'abc', '6', '5', '1', '2', '7', '']);
        count('flaps');
        void backend.writeState(v);
      }
      issue(issued++);
    }
    await turn();
    turnNo++;
    for (const l of lateReleases) if (l.at === turnNo) backend.releaseLate(l.start, l.n);
    // Give up on operations the backend will not answer in time (or at random), as a caller would.
    for (const o of pending) {
      if (o.result !== undefined || o.ac.signal.aborted) continue;
      const age = turnNo - o.issuedTurn;
      // Operations stuck behind unanswered ones (a flush waits for everything before it, a
      // full ring for a free slot) are given up on too, after a while.
      const giveUp = (o.fate === 'never' || o.fate === 'late') ? age > 20 + rng.int(20) : age > 300 || rng.chance(0.002);
      if (giveUp) {
        o.abortedWhilePending = true;
        o.abortSnapshot = o.buf !== undefined ? Buffer.from(o.buf) : undefined;
        o.ac.abort(new Error(`fuzzer gave op ${o.n} up`));
        count('aborts');
        if (o.fate === 'late') lateReleases.push({ at: turnNo + rng.int(5), start: o.start512, n: o.end512 - o.start512 });
      }
    }
    if (++spins % 128 === 0 && Date.now() > deadline) {
      problems.push(`operations never settled: ${ops.filter((o) => o.result === undefined).map((o) => `#${o.n} ${o.kind} ${o.fate}${o.abortedWhilePending ? ' (aborted)' : ''}`).join(', ')}`);
      break;
    }
  }
  // Late answers and anything the backend still sends now land while we watch.
  for (let t = 0; t < 20; t++) {
    await turn();
    turnNo++;
    for (const l of lateReleases) if (l.at === turnNo) backend.releaseLate(l.start, l.n);
  }
  count('ops', ops.length);
  check(ops, disk, sectorSize, readOnly, broke ? backend.broke : undefined, flapAt >= 0, problems, count, events);
}

function check(
  ops: readonly OpRec[], disk: Buffer, sectorSize: number, readOnly: boolean, broke: string | undefined, flapped: boolean,
  problems: string[], count: (k: string, n?: number) => void, events: readonly string[],
): void {
  const disabled = events.includes('disabled');
  if (broke !== undefined && !disabled) problems.push(`the backend broke the protocol (${broke}) and the device was not disabled (events: ${events.join(',') || 'none'})`);
  if (broke === undefined && disabled) problems.push(`the device was disabled without a protocol break (events: ${events.join(',')})`);
  if (events.includes('unplugged')) problems.push('the device reported unplugged, but nobody unplugged it');
  if (flapped && !disabled && !events.includes('reconnected') && events.includes('reconnecting')) problems.push(`the backend flapped its state and the frontend never reconnected (events: ${events.join(',')})`);
  for (const o of ops) {
    const what = `op #${o.n} ${o.kind} ${o.sector}+${o.count} (${o.fate}${o.errorStatus !== undefined ? ` status ${o.errorStatus}` : ''}; backend: ${o.actions.join(' ') || 'never saw it'})`;
    const r = o.result;
    if (r === undefined) continue;
    if (r.ok) count('ok');
    else count(`err-${code(r.error)}`);
    if (!r.ok && !(r.error instanceof BlkfrontError)) {
      problems.push(`${what} rejected with ${code(r.error)}`);
      continue;
    }
    const c = r.ok ? 'ok' : (r.error as BlkfrontError).code;
    // A buffer given up on is never written again.
    if (o.abortedWhilePending && o.abortSnapshot !== undefined && !o.buf!.equals(o.abortSnapshot)) {
      problems.push(`${what}: its buffer changed after the operation was aborted`);
    } else if (o.rejectSnapshot !== undefined && !o.buf!.equals(o.rejectSnapshot)) {
      problems.push(`${what}: its buffer changed after the operation was rejected`);
    }
    const allowed = expectedCodes(o, broke !== undefined, disabled);
    if (readOnly && (o.kind === 'write' || o.kind === 'discard')) allowed.push('EROFS');
    if (!allowed.includes(c)) {
      problems.push(`${what} ended ${c}${r.ok ? '' : ` (${(r.error as Error).message})`}, want ${allowed.join(' or ')}`);
      continue;
    }
    if (o.kind === 'read' && o.buf !== undefined && o.sector >= 0) {
      const want = disk.subarray(o.sector * sectorSize, (o.sector + o.count) * sectorSize);
      if (r.ok) {
        if (!o.buf.equals(want)) problems.push(`${what} resolved with data that is not the disk's (first difference at byte ${firstDiff(o.buf, want)})`);
      } else {
        // A failed read leaves each sector either untouched or the disk's.
        for (let s = 0; s < o.count; s++) {
          const got = o.buf.subarray(s * sectorSize, (s + 1) * sectorSize);
          const d = want.subarray(s * sectorSize, (s + 1) * sectorSize);
          if (!got.equals(d) && !got.every((b) => b === 0xa5)) {
            problems.push(`${what} failed (${c}) but sector ${s} of its buffer holds neither the disk's data nor what was there`);
            break;
          }
        }
      }
    }
    if (o.kind === 'write' && r.ok && o.sector >= 0) {
      const got = disk.subarray(o.sector * sectorSize, (o.sector + o.count) * sectorSize);
      if (!got.equals(o.buf!)) problems.push(`${what} resolved but the disk does not hold its data (first difference at byte ${firstDiff(got, o.buf!)})`);
    }
    if (o.kind === 'discard' && r.ok && o.sector >= 0) {
      const got = disk.subarray(o.sector * sectorSize, (o.sector + o.count) * sectorSize);
      if (!got.every((b) => b === 0)) problems.push(`${what} resolved but the range is not zero on the disk`);
    }
  }
}

/** What an operation may end with, given its fate and what happened to the device. */
function expectedCodes(o: OpRec, broke: boolean, disabled: boolean): string[] {
  const out = new Set<string>();
  if (o.kind === 'bad' || o.sector < 0) return ['EINVAL', 'EOPNOTSUPP', 'EROFS', ...(broke || disabled ? ['EPROTO'] : [])];
  // A flush may complete without a request (no flush feature: the disk writes through, or the
  // backend answered EOPNOTSUPP once); requests of flushes cannot be told apart by range, so
  // any blkif outcome is accepted, and aborts as for every operation.
  if (o.kind === 'flush') return ['ok', 'EIO', 'EOPNOTSUPP', 'ABORT_ERR', ...(broke || disabled ? ['EPROTO'] : [])];
  if (o.abortedWhilePending) out.add('ABORT_ERR');
  else if (o.fate === 'never' || o.fate === 'late') out.add('ABORT_ERR'); // its own timeout signal
  if (broke || disabled) {
    // Once the protocol is broken, whatever was pending fails with EPROTO; what completed
    // before it stands.
    out.add('EPROTO');
    out.add('ok');
    out.add('EIO');
    out.add('EOPNOTSUPP');
    return [...out];
  }
  if (o.abortedWhilePending) return [...out];
  if (o.kind === 'discard') out.add('EOPNOTSUPP'); // the backend did not offer it
  switch (o.fate) {
    case 'error':
      if (o.errorStatus === undefined) out.add('ok');
      else if (o.errorStatus === BLKIF_RSP_EOPNOTSUPP) out.add('EOPNOTSUPP');
      else out.add('EIO');
      if (o.pendingAtFlap) out.add('ok');
      break;
    case 'never':
    case 'late':
      break;
    default:
      out.add('ok');
  }
  return [...out];
}

function firstDiff(a: Buffer, b: Buffer): number {
  let i = 0;
  while (i < a.length && a[i] === b[i]) i++;
  return i;
}

/** `blkfrontFuzzer` fuzzes Blkfront against a hostile backend; one iteration is one session (attach, I/O, disconnect). */
export const blkfrontFuzzer: Fuzzer = {
  name: NAME,
  description: 'malicious backend (bad/duplicate/stale ids, wrong ops, rsp_prod jumps, error statuses, silence, late answers, garbage keys and states) against blkfront',
  async run(opts: FuzzOptions): Promise<FuzzResult> {
    const started = Date.now();
    const findings: Finding[] = [];
    const counters: Record<string, number> = { sessions: 0, 'sessions-io': 0, 'sessions-garbage': 0, 'sessions-stuck': 0 };
    const uncaught: string[] = [];
    const onUncaught = (e: unknown): void => { uncaught.push(`uncaught exception: ${e instanceof Error ? e.stack ?? e.message : String(e)}`); };
    const onRejection = (e: unknown): void => { uncaught.push(`unhandled rejection: ${e instanceof Error ? e.stack ?? e.message : String(e)}`); };
    process.on('uncaughtException', onUncaught);
    process.on('unhandledRejection', onRejection);
    try {
      for (let i = 0; budgetLeft(opts, started, counters.sessions!) && findings.length < MAX_FINDINGS; i++) {
        const seed = deriveSeed(opts.seed, i);
        const kind = new Rng(seed ^ 0x1234567).weighted([[70, 'io'], [20, 'garbage'], [10, 'stuck']] as const);
        const r = await blkfrontSession(seed, kind);
        await turn();
        r.problems.push(...uncaught.splice(0));
        counters.sessions!++;
        counters[`sessions-${kind}`]!++;
        for (const [k, v] of Object.entries(r.counters)) counters[k] = (counters[k] ?? 0) + v;
        if (r.problems.length > 0) {
          findings.push({
            fuzzer: NAME, seed, summary: `${kind} session: ${r.problems[0]!.slice(0, 400)}${r.problems.length > 1 ? ` (+${r.problems.length - 1} more)` : ''}`,
            reproduce: `npm run fuzz -- --only ${NAME} --seed ${opts.seed} --iterations ${i + 1}`,
            detail: r.problems.join('\n'),
          });
          opts.log(`${NAME}: FINDING (session ${i}, seed ${seed}): ${r.problems[0]!.slice(0, 300)}`);
        }
        if (counters.sessions! % 200 === 0) opts.log(`${NAME}: ${counters.sessions} sessions, ${counters.ops ?? 0} operations`);
      }
    } finally {
      await turn();
      process.off('uncaughtException', onUncaught);
      process.off('unhandledRejection', onRejection);
    }
    return { iterations: counters.sessions!, unit: 'sessions', findings, counters };
  },
};

