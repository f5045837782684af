// Conformance: our blkif ring (protocol/ring.ts, protocol/blkif.ts) against a peer built on Xen's
// own ring.h/blkif.h macros (test/conformance/c/sim-peer.c), live, across the simulated Xen host:
// the C program is a separate domain that reaches our shared page only through the simulator's
// grant table and our process only through its event channels. It is the backend of our front
// ring, then the frontend of our back ring, for 100,000 requests each, with every index starting
// just below 2^32 so the free-running u32 indices wrap. Every request must be answered exactly once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { startSim } from '../../lib/sim/start.ts';
import { attachSim } from '../../lib/sim/attach.ts';
import {
  backRingAttach, finalCheckForRequests, finalCheckForResponses, freeRequests, frontRingAttach, nextRequestOffset,
  nextRequestSlot, nextResponseOffset, nextResponseSlot, pushRequestsAndCheckNotify, pushResponsesAndCheckNotify,
  reqProd, rspProd, sringAttach, sringInit, unconsumedRequests, unconsumedResponses,
} from '../../protocol/ring.ts';
import {
  BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, decodeRequest, decodeResponse, encodeRequest,
  encodeResponse, newBlkifRequest, newBlkifResponse, ringEntrySize,
} from '../../protocol/blkif.ts';
import { compileC } from '../support/cc.ts';

const COUNT = 100_000;
const START = 0xffffffff - 1000; // every index wraps past 2^32 after ~1000 requests
const ENTRY = ringEntrySize('x86_64');
const ID_HI = 0xc0ffee;

const expectedStatus = (sector: number): number => (sector % 5 === 0 ? BLKIF_RSP_ERROR : BLKIF_RSP_OKAY);

function peer(): string {
  return compileC({ name: 'sim-peer', sources: ['test/conformance/c/sim-peer.c'] });
}

async function withSim(t: { after: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'xenblk-cpeer-'));
  const sim = await startSim({ dir });
  t.after(async () => {
    await sim.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

function runPeer(args: string[]): { proc: ReturnType<typeof spawn>; lines: AsyncIterableIterator<string>; exit: Promise<number | null>; stderr: () => string } {
  const proc = spawn(peer(), args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let err = '';
  proc.stderr!.on('data', (b: Buffer) => { err += b.toString(); });
  const exit = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const lines = readline.createInterface({ input: proc.stdout! })[Symbol.asyncIterator]();
  return { proc, lines, exit, stderr: () => err };
}

async function nextLine(p: ReturnType<typeof runPeer>): Promise<string> {
  const r = await p.lines.next();
  if (r.done) throw new Error(`the C peer ended early (exit ${await p.exit}): ${p.stderr()}`);
  return r.value;
}

test('a C backend on ring.h serves our front ring: 100,000 requests, indices wrapping, each answered once', { timeout: 180_000 }, async (t) => {
  const dir = await withSim(t);
  const host = await attachSim({ dir, domid: 1 });
  t.after(() => host.close());
  const BACK = 0; // the C program joins dom0, as a backend in dom0 would
  const pages = host.sharer.share(BACK, 1, true);
  const s = sringInit(pages.buffer, ENTRY);
  Atomics.store(s.idx, 0, START); // req_prod
  Atomics.store(s.idx, 1, (START + 1) >>> 0); // req_event
  Atomics.store(s.idx, 2, START); // rsp_prod
  Atomics.store(s.idx, 3, (START + 1) >>> 0); // rsp_event
  const f = frontRingAttach(s, START);
  const ch = host.evtchn.allocUnbound(BACK);
  const p = runPeer(['back', dir, String(BACK), '1', String(pages.refs[0]), String(ch.localPort), String(COUNT)]);

  const req = newBlkifRequest();
  const rsp = newBlkifResponse();
  const answered = new Uint8Array(COUNT);
  let sent = 0;
  let done = 0;
  let problems = 0;
  const produce = (): void => {
    while (sent < COUNT && freeRequests(f) > 0) {
      req.operation = sent & 1 ? BLKIF_OP_WRITE : BLKIF_OP_READ;
      req.nrSegments = 1;
      req.idLo = sent;
      req.idHi = ID_HI;
      req.sectorNumber = sent * 3;
      req.segGref[0] = pages.refs[0]!;
      req.segFirst[0] = 0;
      req.segLast[0] = 7;
      encodeRequest('x86_64', s.bytes, nextRequestOffset(f), req);
      sent++;
    }
    if (pushRequestsAndCheckNotify(f)) ch.notify();
  };
  await new Promise<void>((resolve, reject) => {
    p.exit.then((code) => { if (done < COUNT) reject(new Error(`C backend exited ${code}: ${p.stderr()}`)); }, reject);
    ch.onEvent(() => {
      for (;;) {
        while (unconsumedResponses(f) > 0) {
          decodeResponse('x86_64', s.bytes, nextResponseSlot(f), rsp);
          const i = rsp.idLo;
          if (rsp.idHi !== ID_HI || i >= sent || answered[i] === 1) { problems++; continue; }
          answered[i] = 1;
          done++;
          if (rsp.operation !== (i & 1 ? BLKIF_OP_WRITE : BLKIF_OP_READ) || rsp.status !== expectedStatus(i * 3)) problems++;
        }
        if (done === COUNT) { resolve(); return; }
        produce();
        if (!finalCheckForResponses(f)) return;
      }
    });
    produce();
  });
  const line = await nextLine(p);
  p.proc.stdin!.end('done\n');
  assert.equal(await p.exit, 0, p.stderr());
  assert.equal(problems, 0, 'duplicate, unknown or wrong responses');
  assert.equal(done, COUNT);
  const end = (START + COUNT) >>> 0;
  assert.equal(line, `served ${COUNT} req_cons ${end} rsp_prod ${end}`);
  assert.equal(reqProd(s), end);
  assert.ok(end < START, 'the indices wrapped past 2^32');
  const msg = `C backend answered ${COUNT} requests exactly once; indices ${START} -> ${end} (wrapped)`;
  t.diagnostic(msg);
  console.log(msg);
  host.sharer.endAccess(pages);
});

test('a C frontend on ring.h drives our back ring: 100,000 requests, indices wrapping, each answered once', { timeout: 180_000 }, async (t) => {
  const dir = await withSim(t);
  const host = await attachSim({ dir, domid: 0 });
  t.after(() => host.close());
  const FRONT = 3;
  const p = runPeer(['front', dir, String(FRONT), '0', String(COUNT), String(START)]);
  const hello = /^ring-ref (\d+) port (\d+)$/.exec(await nextLine(p));
  assert.ok(hello, 'the C frontend announces its ring-ref and port');
  const m = host.mapper.map(FRONT, [Number(hello[1])], true);
  const s = sringAttach(m.buffer, ENTRY);
  assert.equal(rspProd(s), START);
  const b = backRingAttach(s);
  const ch = host.evtchn.bindInterdomain(FRONT, Number(hello[2]));

  const req = newBlkifRequest();
  const rsp = newBlkifResponse();
  const seen = new Uint8Array(COUNT);
  let served = 0;
  let problems = 0;
  const serve = (): void => {
    for (;;) {
      let n = unconsumedRequests(b);
      while (n-- > 0) {
        const err = decodeRequest('x86_64', s.bytes, nextRequestSlot(b), req, 0);
        const i = req.idLo;
        if (err !== undefined || req.idHi !== ID_HI || i >= COUNT || seen[i] === 1) problems++;
        else seen[i] = 1;
        rsp.idLo = req.idLo;
        rsp.idHi = req.idHi;
        rsp.operation = req.operation;
        rsp.status = expectedStatus(req.sectorNumber);
        encodeResponse('x86_64', s.bytes, nextResponseOffset(b), rsp);
        served++;
      }
      if (pushResponsesAndCheckNotify(b)) ch.notify();
      if (!finalCheckForRequests(b)) return;
    }
  };
  ch.onEvent(serve);
  p.proc.stdin!.write('go\n');
  const line = await nextLine(p);
  p.proc.stdin!.end('done\n');
  assert.equal(await p.exit, 0, `${line}\n${p.stderr()}`);
  const end = (START + COUNT) >>> 0;
  assert.equal(line, `answered ${COUNT} duplicate 0 unknown 0 wrong 0 req_prod ${end}`);
  assert.equal(served, COUNT);
  assert.equal(problems, 0, 'malformed, unknown or repeated requests');
  assert.equal(rspProd(s), end);
  const msg = `our backend answered ${COUNT} requests of a C frontend exactly once; indices ${START} -> ${end} (wrapped)`;
  t.diagnostic(msg);
  console.log(msg);
  host.mapper.unmap(m);
  ch.close();
});
