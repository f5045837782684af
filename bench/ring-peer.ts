// The TypeScript side of the ring-only benchmark (bench/ring.ts): a blkif frontend or backend
// built on protocol/ring.ts and protocol/blkif.ts only, over a simulated host (lib/sim) — the
// same memory (a granted page of the frontend domain's RAM, mapped by the backend) and the
// same event transport (evtchn/sim.ts) as the C reference, bench/c/ring-peer.c, which it
// mirrors step for step: each request is a BLKIF_OP_READ of one 4 KiB segment; the backend
// copies it out of the ring once, validates it and answers OKAY with the same id.
//
// Run as a worker (framework/worker.ts). Commands:
//   front {dir, domid, backend, order} -> {port, refs}     attach, grant the ring, alloc a port
//   back {dir, domid, frontend, port, refs} -> {}          attach, map, bind, serve forever
//   run {qd, ms} -> {done, ns}                             (front) keep qd requests in flight for ms
import { attachSim, type SimHost } from '../lib/sim/attach.ts';
import type { EventChannel } from '../evtchn/evtchn.ts';
import {
  backRingInit, finalCheckForRequests, finalCheckForResponses, frontRingInit, nextRequestOffset, nextRequestSlot,
  nextResponseOffset, nextResponseSlot, pushRequestsAndCheckNotify, pushResponsesAndCheckNotify, requestProdOverflow,
  reqProd, responseProdOverflow, rspProd, sringAttach, sringInit, unconsumedRequests, unconsumedResponses,
  type BackRing, type FrontRing,
} from '../protocol/ring.ts';
import {
  BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_READ, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY, decodeRequest, decodeResponse, encodeRequest,
  encodeResponse, newBlkifRequest, newBlkifResponse, ringEntrySize,
} from '../protocol/blkif.ts';
import { serveWorker } from './framework/worker.ts';

const ABI = 'x86_64';
const PAGE = 4096;

let host: SimHost | undefined;
let channel: EventChannel | undefined;
let front: FrontRing | undefined;
let frontRef = 0;
/** What the current run does when the backend's event arrives. */
let onResponses: (() => void) | undefined;

async function setupFront(a: { dir: string; domid: number; backend: number; order: number }): Promise<{ port: number; refs: number[] }> {
  host = await attachSim({ dir: a.dir, domid: a.domid });
  const pages = host.sharer.share(a.backend, 1 << a.order, true);
  const sring = sringInit(pages.buffer.subarray(0, PAGE << a.order), ringEntrySize(ABI));
  front = frontRingInit(sring);
  frontRef = pages.refs[0]!;
  channel = host.evtchn.allocUnbound(a.backend);
  channel.onEvent(() => onResponses?.());
  return { port: channel.localPort, refs: [...pages.refs] };
}

async function setupBack(a: { dir: string; domid: number; frontend: number; port: number; refs: number[] }): Promise<Record<string, never>> {
  host = await attachSim({ dir: a.dir, domid: a.domid });
  const m = host.mapper.map(a.frontend, a.refs, true);
  const back = backRingInit(sringAttach(m.buffer.subarray(0, PAGE * a.refs.length), ringEntrySize(ABI)));
  const ch = host.evtchn.bindInterdomain(a.frontend, a.port);
  channel = ch;
  const req = newBlkifRequest();
  const rsp = newBlkifResponse();
  const bytes = back.sring.bytes;
  ch.onEvent(() => serve(back, bytes, req, rsp, ch));
  return {};
}

/** The backend's event handler: answer everything published, then the final check (ring.h). */
function serve(b: BackRing, bytes: Uint8Array, req: ReturnType<typeof newBlkifRequest>, rsp: ReturnType<typeof newBlkifResponse>, ch: EventChannel): void {
  do {
    if (requestProdOverflow(b, reqProd(b.sring))) throw new Error('ring-peer: request producer overflow');
    let n = unconsumedRequests(b);
    while (n-- > 0) {
      const err = decodeRequest(ABI, bytes, nextRequestSlot(b), req, 0); // copied once (XSA-155)
      rsp.idLo = req.idLo;
      rsp.idHi = req.idHi;
      rsp.operation = req.operation;
      rsp.status = err === undefined && req.operation === BLKIF_OP_READ && req.nrSegments >= 1 && req.nrSegments <= BLKIF_MAX_SEGMENTS_PER_REQUEST
        ? BLKIF_RSP_OKAY : BLKIF_RSP_ERROR;
      encodeResponse(ABI, bytes, nextResponseOffset(b), rsp); // zeroes the entry (XSA-216)
    }
    if (pushResponsesAndCheckNotify(b)) ch.notify();
  } while (finalCheckForRequests(b));
}

let nextId = 0;

function run(a: { qd: number; ms: number }): Promise<{ done: number; ns: number }> {
  const f = front;
  const ch = channel;
  if (f === undefined || ch === undefined) throw new Error('run before front');
  const qd = Math.min(a.qd, f.sring.size);
  const bytes = f.sring.bytes;
  const req = newBlkifRequest();
  const rsp = newBlkifResponse();
  req.operation = BLKIF_OP_READ;
  req.dataOp = BLKIF_OP_READ;
  req.nrSegments = 1;
  req.segGref[0] = frontRef;
  req.segFirst[0] = 0;
  req.segLast[0] = 7;
  const t0 = process.hrtime.bigint();
  const deadline = performance.now() + a.ms;
  let inflight = 0;
  let done = 0;
  let stopping = false;
  const fill = (): void => {
    while (inflight < qd) {
      req.idLo = nextId >>> 0;
      req.idHi = 0;
      req.sectorNumber = (nextId & 1023) * 8;
      nextId = (nextId + 1) >>> 0;
      encodeRequest(ABI, bytes, nextRequestOffset(f), req);
      inflight++;
    }
    if (pushRequestsAndCheckNotify(f)) ch.notify();
  };
  return new Promise((resolve, reject) => {
    onResponses = () => {
      try {
        do {
          if (responseProdOverflow(f, rspProd(f.sring))) throw new Error('ring-peer: response producer overflow');
          let n = unconsumedResponses(f);
          while (n-- > 0) {
            decodeResponse(ABI, bytes, nextResponseSlot(f), rsp);
            if (rsp.status !== BLKIF_RSP_OKAY) throw new Error(`ring-peer: status ${rsp.status}`);
            inflight--;
            done++;
          }
        } while (finalCheckForResponses(f));
        if (!stopping && performance.now() >= deadline) stopping = true;
        if (!stopping) fill();
        if (inflight === 0) {
          onResponses = undefined;
          resolve({ done, ns: Number(process.hrtime.bigint() - t0) });
        }
      } catch (e) {
        onResponses = undefined;
        reject(e);
      }
    };
    fill();
  });
}

serveWorker(
  {
    front: setupFront,
    back: setupBack,
    run,
  },
  async () => {
    channel?.close();
    await host?.close();
  },
);
