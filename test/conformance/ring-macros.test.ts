// Conformance: protocol/ring.ts against Xen's own xen/io/ring.h macros (Debian libxen-dev).
//
// test/conformance/c/ring-conformance.c runs a blkif front ring and back ring with ring.h's
// macros (RING_PUSH_{REQUESTS,RESPONSES}_AND_CHECK_NOTIFY, RING_FINAL_CHECK_FOR_{REQUESTS,
// RESPONSES}, RING_HAS_UNCONSUMED_*, RING_*_OVERFLOW, RING_GET_*) over seeded scripts that
// start at several indices including just below 2^32, so the indices wrap; our ring runs the
// same scripts and must print the same line for every step: the same notify and work-to-do
// decisions, the same slots, the same indices. It also checks __RING_SIZE for many entry sizes
// and orders 0..4, and the header SHARED_RING_INIT leaves.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  backRingAttach,
  finalCheckForRequests,
  finalCheckForResponses,
  freeRequests,
  frontRingAttach,
  nextRequestOffset,
  nextRequestSlot,
  nextResponseOffset,
  nextResponseSlot,
  pushRequestsAndCheckNotify,
  pushResponsesAndCheckNotify,
  reqEvent,
  reqProd,
  requestConsOverflow,
  requestProdOverflow,
  responseProdOverflow,
  ringEntries,
  RingError,
  rspEvent,
  rspProd,
  sringInit,
  unconsumedRequests,
  unconsumedResponses,
  type BackRing,
  type FrontRing,
  type Sring,
} from '../../protocol/ring.ts';
import { ringEntrySize } from '../../protocol/blkif.ts';
import { compileC, runC } from '../support/cc.ts';

const SEED = 0x71e6c0de;
const SCRIPTS = 48;
const STEPS = 250;
const ENTRY = ringEntrySize('x86_64'); // the C side uses blkif.h's native ring

function program(): string {
  return compileC({ name: 'ring-conformance', sources: ['test/conformance/c/ring-conformance.c'] });
}

test('ring sizes (__RING_SIZE) for many entry sizes and orders 0..4, and SHARED_RING_INIT', (t) => {
  const lines = runC(program(), ['sizes']).trim().split('\n');
  let matched = 0;
  for (const line of lines) {
    const [kind, ...rest] = line.split(' ');
    if (kind === 'init') {
      const page = new Uint8Array(4096).fill(0xaa);
      sringInit(page, ENTRY);
      assert.equal(Buffer.from(page.subarray(0, 64)).toString('hex'), rest[0], 'header after SHARED_RING_INIT');
      assert.ok(page.subarray(64).every((b) => b === 0xaa), 'sringInit touches only the header');
      matched++;
      continue;
    }
    const [entry, order, size] = rest.map(Number) as [number, number, number];
    const bytes = 4096 << order;
    if (size === 0) {
      // ring.h yields an unusable 0-entry ring; we refuse the geometry.
      assert.throws(() => ringEntries(bytes, entry), RingError, line);
    } else {
      assert.equal(ringEntries(bytes, entry), size, line);
    }
    matched++;
  }
  assert.ok(matched > 100);
  const msg = `ring sizes: ${matched} __RING_SIZE/SHARED_RING_INIT results matched ring.h`;
  t.diagnostic(msg);
  console.log(msg);
});

/** Our ring, driven by the same commands as the C program, printing the same lines. */
class Model {
  private bytes = new Uint8Array(0);
  private view = new DataView(this.bytes.buffer);
  private s!: Sring;
  f!: FrontRing;
  b!: BackRing;

  exec(line: string): string {
    const [cmd, x = '0', y = '0'] = line.split(' ');
    const a = Number(x);
    let r = '';
    switch (cmd) {
      case 'init': {
        this.bytes = new Uint8Array(4096 << a);
        this.view = new DataView(this.bytes.buffer);
        this.s = sringInit(this.bytes, ENTRY);
        // Move the shared indices to `start` as the C side does, with plain stores at ring.h's offsets.
        const start = Number(y);
        for (const [off, v] of [[0, start], [8, start], [4, start + 1], [12, start + 1]] as const) this.view.setUint32(off, v >>> 0, true);
        this.f = frontRingAttach(this.s, start);
        this.b = backRingAttach(this.s);
        r = ` size=${this.s.size}`;
        break;
      }
      case 'fq': {
        let last = -1;
        for (let i = 0; i < a; i++) last = nextRequestOffset(this.f);
        r = ` free=${freeRequests(this.f)} full=${freeRequests(this.f) === 0 ? 1 : 0} last=${last}`;
        break;
      }
      case 'fp':
        r = ` notify=${pushRequestsAndCheckNotify(this.f) ? 1 : 0}`;
        break;
      case 'bc': {
        const avail = unconsumedRequests(this.b);
        let took = 0;
        let last = -1;
        while (took < a && unconsumedRequests(this.b) !== 0) {
          if (requestConsOverflow(this.b, this.b.reqCons)) break;
          last = nextRequestSlot(this.b);
          took++;
        }
        r = ` avail=${avail} took=${took} last=${last}`;
        break;
      }
      case 'bf':
        r = ` work=${finalCheckForRequests(this.b) ? 1 : 0}`;
        break;
      case 'br': {
        let last = -1;
        for (let i = 0; i < a; i++) last = nextResponseOffset(this.b);
        r = ` last=${last}`;
        break;
      }
      case 'bp':
        r = ` notify=${pushResponsesAndCheckNotify(this.b) ? 1 : 0}`;
        break;
      case 'fc': {
        const avail = unconsumedResponses(this.f);
        let took = 0;
        while (took < a && unconsumedResponses(this.f) !== 0) {
          nextResponseSlot(this.f);
          took++;
        }
        r = ` avail=${avail} took=${took}`;
        break;
      }
      case 'ff':
        r = ` work=${finalCheckForResponses(this.f) ? 1 : 0}`;
        break;
      case 'xr':
        this.view.setUint32(0, a, true);
        r = ` overflow=${requestProdOverflow(this.b, a) ? 1 : 0} avail=${unconsumedRequests(this.b)}`;
        break;
      case 'xs':
        this.view.setUint32(8, a, true);
        r = ` overflow=${responseProdOverflow(this.f, a) ? 1 : 0} avail=${unconsumedResponses(this.f)}`;
        break;
      case 'xc':
        r = ` overflow=${requestConsOverflow(this.b, a) ? 1 : 0}`;
        break;
      case 'xe':
        this.view.setUint32(4, a, true);
        break;
      case 'xf':
        this.view.setUint32(12, a, true);
        break;
      default:
        throw new Error(`unknown command ${line}`);
    }
    const s = this.s;
    return (
      `${line} ->${r} | ${reqProd(s)} ${reqEvent(s)} ${rspProd(s)} ${rspEvent(s)} | ` +
      `${this.f.reqProdPvt} ${this.f.rspCons} | ${this.b.rspProdPvt} ${this.b.reqCons}`
    );
  }

  get size(): number {
    return this.s.size;
  }
}

/** mulberry32: a small seeded generator, so the scripts are the same on every run. */
function prng(seed: number): (n: number) => number {
  let a = seed >>> 0;
  return (n) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let z = a;
    z = Math.imul(z ^ (z >>> 15), z | 1);
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
    return (((z ^ (z >>> 14)) >>> 0) % n) >>> 0;
  };
}

/**
 * A script a well-behaved front and back could run (never queueing past the free slots, never
 * answering more than consumed), with peers moving event indices, and for some scripts a rogue
 * tail where one side publishes an impossible producer index.
 */
function generate(rnd: (n: number) => number, k: number, m: Model): { script: string[]; out: string[]; wrapped: boolean } {
  const starts = [0, 0xfffffff0, 0xffffffe7, 0xffffffff, 0x7ffffff0, 0x80000000 - 3];
  const start = k < starts.length * 2 ? starts[k % starts.length]! : rnd(0x100000000);
  const order = k % 3 === 0 ? rnd(5) : 0;
  const script: string[] = [];
  const out: string[] = [];
  const run = (c: string): void => {
    script.push(c);
    out.push(m.exec(c));
  };
  run(`init ${order} ${start}`);
  const size = m.size;
  for (let i = 0; i < STEPS; i++) {
    const f = m.f;
    const b = m.b;
    const pick = rnd(100);
    if (pick < 20) run(`fq ${rnd(freeRequests(f) + 1)}`);
    else if (pick < 32) run('fp');
    else if (pick < 47) run(`bc ${rnd(size + 2)}`);
    else if (pick < 55) run('bf');
    else if (pick < 68) run(`br ${rnd(((b.reqCons - b.rspProdPvt) >>> 0) + 1)}`);
    else if (pick < 78) run('bp');
    else if (pick < 88) run(`fc ${rnd(size + 2)}`);
    else if (pick < 95) run('ff');
    else {
      // A peer picks its own event index (e.g. "notify me after a batch"): near the producer,
      // behind it, or anywhere.
      const near = pick < 98 ? (b.reqCons + rnd(2 * size) - size) >>> 0 : rnd(0x100000000);
      run(`${pick % 2 ? 'xe' : 'xf'} ${pick < 98 && pick % 2 === 0 ? (f.rspCons + rnd(2 * size) - size) >>> 0 : near}`);
    }
  }
  // Exactly at the ring size, one either side, or anywhere.
  const edge = [-1, 0, 1, rnd(0x100000000)][(k >> 2) % 4]!;
  if (k % 4 === 1) {
    // Rogue frontend: req_prod beyond what the ring can hold (or just within it).
    run(`xc ${(m.b.rspProdPvt + size + edge) >>> 0}`);
    run(`xr ${(m.b.rspProdPvt + size + edge) >>> 0}`);
    run(`bc ${2 * size}`);
    run('bf');
  } else if (k % 4 === 2) {
    // A buggy backend answers more than it consumed: ring.h's unsigned arithmetic still bounds it.
    run(`br ${((m.b.reqCons - m.b.rspProdPvt) >>> 0) + 1 + rnd(3)}`);
    run('bp');
    run(`bc ${2 * size}`);
    run('bf');
    run(`fc ${2 * size}`);
    run('ff');
  } else if (k % 4 === 3) {
    // Rogue backend: rsp_prod beyond what the frontend has outstanding.
    run(`xs ${(m.f.rspCons + size + edge) >>> 0}`);
    run('ff');
  }
  // Did the request producer cross 2^32 (a high start, a low index published later)?
  const wrapped = start >= 0xfffff000 && out.some((l) => Number(l.split(' | ')[1]!.split(' ')[0]) < 0x1000);
  return { script, out, wrapped };
}

test(`notify and work-to-do decisions match ring.h macros on seeded scripts with u32 wrap (seed ${SEED.toString(16)})`, (t) => {
  const rnd = prng(SEED);
  const m = new Model();
  const script: string[] = [];
  const ours: string[] = [];
  let wrapped = 0;
  for (let k = 0; k < SCRIPTS; k++) {
    const g = generate(rnd, k, m);
    script.push(...g.script);
    ours.push(...g.out);
    if (g.wrapped) wrapped++;
  }
  const theirs = runC(program(), ['script'], script.join('\n') + '\n').trimEnd().split('\n');
  assert.equal(theirs.length, ours.length, 'one line per command');
  let decisions = 0;
  for (let i = 0; i < ours.length; i++) {
    assert.equal(ours[i], theirs[i], `step ${i}: ${script[i]}`);
    if (/ (notify|work|overflow)=/.test(ours[i]!)) decisions++;
  }
  assert.ok(wrapped >= 4, `scripts carry the indices across 2^32 (${wrapped})`);
  assert.ok(ours.filter((l) => l.includes('notify=1')).length > 50 && ours.filter((l) => l.includes('notify=0')).length > 50, 'both decisions occur');
  assert.ok(ours.some((l) => / overflow=1 /.test(l)) && ours.some((l) => / overflow=0 /.test(l)), 'overflow both detected and not');
  const msg = `ring scripts: ${ours.length} steps matched ring.h macros (${decisions} notify/work/overflow decisions, ${SCRIPTS} scripts, ${wrapped} crossing 2^32)`;
  t.diagnostic(msg);
  console.log(msg);
});
