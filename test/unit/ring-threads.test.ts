// The shared ring between two threads over one SharedArrayBuffer, as between two domains: a
// frontend worker and a backend worker, each on its own core, push >= 100k blkif requests and
// responses through a one-page ring whose indices start just below 2^32 (so they wrap midway),
// signalling each other through Atomics.wait/notify on an "event channel" word only when
// ring.h's notify rules say so, and sleeping only after ring.h's final check. The frontend checks
// every response arrives exactly once and in order; the backend checks every request does.
// A lost wake-up (a notify rule or final check wrong) hangs both ends: the test then fails at
// its timeout and the workers are terminated.
//
// This file is both the test (main thread) and the two workers (worker threads).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
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
  responseProdOverflow,
  requestProdOverflow,
  reqProd,
  rspProd,
  sringAttach,
  sringInit,
  unconsumedRequests,
  unconsumedResponses,
} from '../../protocol/ring.ts';
import {
  BLKIF_OP_READ,
  BLKIF_OP_WRITE,
  BLKIF_RSP_OKAY,
  decodeRequest,
  decodeResponse,
  encodeRequest,
  encodeResponse,
  newBlkifRequest,
  newBlkifResponse,
  ringEntrySize,
} from '../../protocol/blkif.ts';

const TOTAL = 120_000;
const START = (0x100000000 - TOTAL / 2) >>> 0; // the indices cross 2^32 halfway through
const RING_BYTES = 4096;
const ABI = 'x86_64';
// Control words after the ring page: one "event channel" counter per side.
const EVT_FRONT = 0; // the backend kicks the frontend here
const EVT_BACK = 1; // the frontend kicks the backend here
const BATCHES = [1, 1, 2, 32, 3, 1, 5, 17];
const depthOne = (sent: number): boolean => Math.floor(sent / 1000) % 4 === 0;

interface Job {
  role: 'front' | 'back';
  sab: SharedArrayBuffer;
}

interface Result {
  role: string;
  done: number;
  kicksSent: number;
  sleeps: number;
  finalProd: number;
}

function kick(ctl: Int32Array, port: number): void {
  Atomics.add(ctl, port, 1);
  Atomics.notify(ctl, port);
}

function runFront(sab: SharedArrayBuffer): Result {
  const s = sringAttach(new Uint8Array(sab, 0, RING_BYTES), ringEntrySize(ABI));
  const ctl = new Int32Array(sab, RING_BYTES, 2);
  const f = frontRingAttach(s, START);
  const req = newBlkifRequest();
  const rsp = newBlkifResponse();
  let sent = 0;
  let received = 0;
  let kicksSent = 0;
  let sleeps = 0;
  let rounds = 0;
  while (received < TOTAL) {
    const seen = Atomics.load(ctl, EVT_FRONT); // before looking, so no kick is lost
    // Vary the load: stretches at queue depth 1 (send one, wait for its answer: the notify
    // rules and final checks must be exact or both ends sleep), then batches of varied size.
    const batch = depthOne(sent) ? (sent === received ? 1 : 0) : BATCHES[rounds++ % BATCHES.length]!;
    let queued = 0;
    while (sent < TOTAL && freeRequests(f) > 0 && queued < batch) {
      req.operation = sent % 2 ? BLKIF_OP_WRITE : BLKIF_OP_READ;
      req.dataOp = req.operation;
      req.idLo = sent;
      req.idHi = ~sent >>> 0;
      req.handle = 51712;
      req.sectorNumber = sent * 8;
      req.nrSegments = 1 + (sent % 11);
      for (let i = 0; i < req.nrSegments; i++) {
        req.segGref[i] = sent + i;
        req.segFirst[i] = 0;
        req.segLast[i] = 7;
      }
      encodeRequest(ABI, s.bytes, nextRequestOffset(f), req);
      sent++;
      queued++;
    }
    if (queued > 0 && pushRequestsAndCheckNotify(f)) {
      kick(ctl, EVT_BACK);
      kicksSent++;
    }
    let got = 0;
    while (unconsumedResponses(f) > 0) {
      if (responseProdOverflow(f, rspProd(s))) throw new Error(`backend published rsp_prod ${rspProd(s)} past the ring`);
      decodeResponse(ABI, s.bytes, nextResponseSlot(f), rsp);
      if (rsp.idLo !== received || rsp.idHi !== (~received >>> 0)) {
        throw new Error(`response ${received}: got id ${rsp.idHi}:${rsp.idLo} (answered twice, lost or out of order)`);
      }
      if (rsp.status !== BLKIF_RSP_OKAY || rsp.operation !== (received % 2 ? BLKIF_OP_WRITE : BLKIF_OP_READ)) {
        throw new Error(`response ${received}: status ${rsp.status} operation ${rsp.operation}`);
      }
      received++;
      got++;
    }
    const canQueue = sent < TOTAL && freeRequests(f) > 0 && (!depthOne(sent) || sent === received);
    if (got > 0 || canQueue) continue;
    if (finalCheckForResponses(f)) continue;
    sleeps++;
    Atomics.wait(ctl, EVT_FRONT, seen);
  }
  if (unconsumedResponses(f) !== 0) throw new Error('responses beyond the requests sent');
  return { role: 'front', done: received, kicksSent, sleeps, finalProd: reqProd(s) };
}

function runBack(sab: SharedArrayBuffer): Result {
  const s = sringAttach(new Uint8Array(sab, 0, RING_BYTES), ringEntrySize(ABI));
  const ctl = new Int32Array(sab, RING_BYTES, 2);
  const b = backRingAttach(s);
  const req = newBlkifRequest();
  const rsp = newBlkifResponse();
  let served = 0;
  let kicksSent = 0;
  let sleeps = 0;
  while (served < TOTAL) {
    const seen = Atomics.load(ctl, EVT_BACK);
    if (requestProdOverflow(b, reqProd(s))) throw new Error(`frontend published req_prod ${reqProd(s)} past the ring`);
    let n = 0;
    while (unconsumedRequests(b) > 0) {
      const err = decodeRequest(ABI, s.bytes, nextRequestSlot(b), req, 0);
      if (err) throw new Error(`request ${served + n}: ${err.message}`);
      if (req.idLo !== served + n || req.idHi !== (~(served + n) >>> 0) || req.sectorNumber !== (served + n) * 8) {
        throw new Error(`request ${served + n}: got id ${req.idHi}:${req.idLo} sector ${req.sectorNumber}`);
      }
      if (req.nrSegments !== 1 + ((served + n) % 11) || req.segGref[req.nrSegments - 1] !== served + n + req.nrSegments - 1) {
        throw new Error(`request ${served + n}: segments garbled`);
      }
      rsp.idLo = req.idLo;
      rsp.idHi = req.idHi;
      rsp.operation = req.operation;
      rsp.status = BLKIF_RSP_OKAY;
      encodeResponse(ABI, s.bytes, nextResponseOffset(b), rsp);
      n++;
    }
    if (n > 0) {
      served += n;
      if (pushResponsesAndCheckNotify(b)) {
        kick(ctl, EVT_FRONT);
        kicksSent++;
      }
      continue;
    }
    if (finalCheckForRequests(b)) continue;
    sleeps++;
    Atomics.wait(ctl, EVT_BACK, seen);
  }
  return { role: 'back', done: served, kicksSent, sleeps, finalProd: rspProd(s) };
}

if (!isMainThread) {
  const job = workerData as Job;
  parentPort!.postMessage(job.role === 'front' ? runFront(job.sab) : runBack(job.sab));
} else {
  test(`two threads push ${TOTAL} requests and responses through one ring across the 2^32 wrap`, { timeout: 60_000 }, async (t) => {
    const sab = new SharedArrayBuffer(RING_BYTES + 8);
    const s = sringInit(new Uint8Array(sab, 0, RING_BYTES), ringEntrySize(ABI));
    // Resume both ends at START, as after FRONT_RING_ATTACH/BACK_RING_ATTACH: the shared
    // indices are what a previous connection left.
    s.idx[0] = START; // req_prod
    s.idx[2] = START; // rsp_prod
    s.idx[1] = (START + 1) >>> 0; // req_event
    s.idx[3] = (START + 1) >>> 0; // rsp_event

    const run = (role: Job['role']): { worker: Worker; result: Promise<Result> } => {
      // Node 20 does not carry tsx's loader hooks into worker threads: the worker registers
      // them itself, then loads this file.
      const bootstrap =
        `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))})` +
        `.then((tsx) => { tsx.register(); return import(${JSON.stringify(import.meta.url)}); })`;
      const worker = new Worker(bootstrap, { eval: true, workerData: { role, sab } satisfies Job });
      t.after(() => worker.terminate());
      const result = new Promise<Result>((resolve, reject) => {
        worker.once('message', resolve);
        worker.once('error', reject);
        worker.once('exit', (code) => reject(new Error(`${role} worker exited ${code} without a result`)));
      });
      return { worker, result };
    };
    const back = run('back');
    const front = run('front');
    const [fr, br] = await Promise.all([front.result, back.result]);

    assert.equal(fr.done, TOTAL, 'every request answered');
    assert.equal(br.done, TOTAL, 'every request served');
    const end = (START + TOTAL) >>> 0;
    assert.ok(end < START, 'the indices wrapped');
    assert.equal(fr.finalProd, end);
    assert.equal(br.finalProd, end);
    assert.equal(s.idx[0], end);
    assert.equal(s.idx[2], end);
    const msg =
      `ring threads: ${TOTAL} requests and ${TOTAL} responses in order across 2^32 ` +
      `(front kicked ${fr.kicksSent}x and slept ${fr.sleeps}x, back kicked ${br.kicksSent}x and slept ${br.sleeps}x)`;
    t.diagnostic(msg);
    console.log(msg);
  });
}
