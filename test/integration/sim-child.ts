// A simulated domain process driven by its parent test: one JSON command per stdin line, one
// JSON reply per stdout line ({id, ok} or {id, error}). Commands name grant/channel objects by
// small integer handles. See sim-driver.ts for the parent side.
import readline from 'node:readline';
import fs from 'node:fs';
import { attachSim, type SimHost } from '../../lib/sim/attach.ts';
import { openHost } from '../../lib/host/open.ts';
import type { MappedGrants, SharedPages } from '../../gnttab/gnttab.ts';
import type { EventChannel } from '../../evtchn/evtchn.ts';
import { GrantCopyBatch } from '../../gnttab/copy-batch.ts';

type Cmd = Record<string, unknown> & { id: number; op: string };

let host: SimHost | undefined;
const objs = new Map<number, SharedPages | MappedGrants>();
const chans = new Map<number, { ch: EventChannel; events: number }>();
let nextObj = 1;

function h(): SimHost {
  if (host === undefined) throw new Error('not attached');
  return host;
}
function obj(id: unknown): SharedPages | MappedGrants {
  const o = objs.get(Number(id));
  if (o === undefined) throw new Error(`no object ${String(id)}`);
  return o;
}
function chan(id: unknown): { ch: EventChannel; events: number } {
  const c = chans.get(Number(id));
  if (c === undefined) throw new Error(`no channel ${String(id)}`);
  return c;
}
function addChan(ch: EventChannel): number {
  const rec = { ch, events: 0 };
  ch.onEvent(() => { rec.events++; });
  chans.set(ch.localPort, rec);
  return ch.localPort;
}

async function run(c: Cmd): Promise<unknown> {
  switch (c.op) {
    case 'attach':
      host = await attachSim({ dir: String(c.dir), domid: Number(c.domid) });
      return { pid: process.pid, slot: host.slot, instance: host.instance };
    case 'openHost': {
      // The platform as any program gets it: $XENBLK_SIM_DIR / $XENBLK_DOMID decide.
      const hh = await openHost();
      if (hh.kind !== 'sim') throw new Error(`expected the simulator, got ${hh.kind}`);
      host = hh as SimHost;
      return { kind: hh.kind, domid: hh.domid, pid: process.pid };
    }
    case 'share': {
      const p = h().sharer.share(Number(c.domid), Number(c.count), Boolean(c.writable));
      const id = nextObj++;
      objs.set(id, p);
      return { obj: id, refs: p.refs };
    }
    case 'map': {
      const m = h().mapper.map(Number(c.domid), c.refs as number[], Boolean(c.writable));
      const id = nextObj++;
      objs.set(id, m);
      return { obj: id };
    }
    case 'unmap':
      h().mapper.unmap(obj(c.obj) as MappedGrants);
      return {};
    case 'copy': {
      // pieces: [ref, offset, length, localOffset][]; into the grants `text` (latin1) laid out
      // as the local buffer, or out of them: the local buffer read back as text.
      const pieces = c.pieces as [number, number, number, number][];
      const batch = new GrantCopyBatch(pieces.length);
      for (const [ref, off, len, at] of pieces) batch.add(ref, off, len, at);
      const local = Buffer.alloc(Number(c.size));
      if (c.toForeign) Buffer.from(String(c.text), 'latin1').copy(local);
      h().mapper.copy(Number(c.domid), batch, local, Boolean(c.toForeign));
      return { text: local.toString('latin1') };
    }
    case 'endAccess':
      h().sharer.endAccess(obj(c.obj) as SharedPages);
      return {};
    case 'write':
      Buffer.from(String(c.text)).copy(obj(c.obj).buffer, Number(c.offset ?? 0));
      return {};
    case 'read': {
      const b = obj(c.obj).buffer;
      const off = Number(c.offset ?? 0);
      return { text: b.toString('latin1', off, off + Number(c.length)), length: b.length };
    }
    case 'setUnmapNotify':
      h().mapper.setUnmapNotify(obj(c.obj) as MappedGrants, {
        ...(c.clearByte !== undefined ? { clearByte: Number(c.clearByte) } : {}),
        ...(c.port !== undefined ? { port: Number(c.port) } : {}),
      });
      return {};
    case 'allocUnbound':
      return { port: addChan(h().evtchn.allocUnbound(Number(c.domid))) };
    case 'bind':
      return { port: addChan(h().evtchn.bindInterdomain(Number(c.domid), Number(c.port))) };
    case 'notify':
      chan(c.port).ch.notify();
      return {};
    case 'events':
      return { events: chan(c.port).events };
    case 'closePort':
      chan(c.port).ch.close();
      chans.delete(Number(c.port));
      return {};
    case 'pong': {
      // Answer every event on `port` with a notify, until told otherwise.
      const { ch } = chan(c.port);
      ch.onEvent(() => ch.notify());
      return {};
    }
    case 'ping': {
      // `n` round trips: notify, wait for the answer; latencies in microseconds.
      const { ch } = chan(c.port);
      const n = Number(c.n);
      const lat: number[] = [];
      await new Promise<void>((resolve) => {
        let t0 = process.hrtime.bigint();
        let i = 0;
        ch.onEvent(() => {
          if (i >= n) return;
          lat.push(Number(process.hrtime.bigint() - t0) / 1000);
          if (++i === n) { resolve(); return; }
          t0 = process.hrtime.bigint();
          ch.notify();
        });
        ch.notify();
      });
      lat.sort((a, b) => a - b);
      return { n: lat.length, p50: lat[lat.length >> 1], p99: lat[Math.floor(lat.length * 0.99)] };
    }
    case 'burst': {
      // Writes 1..n into u32 word 0 of object `obj`, notifying after each write.
      const words = new Uint32Array(obj(c.obj).buffer.buffer, obj(c.obj).buffer.byteOffset, 1);
      const { ch } = chan(c.port);
      const n = Number(c.n);
      for (let i = 1; i <= n; i++) {
        Atomics.store(words, 0, i);
        ch.notify();
        if (i % 1000 === 0) await new Promise((r) => setImmediate(r));
      }
      return {};
    }
    case 'watchCounter': {
      // Counts handler calls on `port` and records the last value seen in word 0 of `obj`.
      const b = obj(c.obj).buffer;
      const words = new Uint32Array(b.buffer, b.byteOffset, 1);
      const rec = chan(c.port);
      const state = { calls: 0, last: 0 };
      rec.ch.onEvent(() => { state.calls++; state.last = Atomics.load(words, 0); });
      counters.set(Number(c.port), state);
      return {};
    }
    case 'counter':
      return counters.get(Number(c.port)) ?? null;
    case 'mapCycles': {
      // `n` times: map `refs` of `domid`, check word 0 of each page equals its ref, unmap.
      const refs = c.refs as number[];
      const n = Number(c.n);
      for (let i = 0; i < n; i++) {
        const m = h().mapper.map(Number(c.domid), refs, false);
        for (let p = 0; p < refs.length; p++) {
          if (m.buffer.readUInt32LE(p * 4096) !== refs[p]) throw new Error(`cycle ${i}: page ${p} holds ${m.buffer.readUInt32LE(p * 4096)}`);
        }
        h().mapper.unmap(m);
      }
      return { vmas: fs.readFileSync('/proc/self/maps', 'utf8').split('\n').length };
    }
    case 'maps':
      return { lines: fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(String(c.match))) };
    case 'close':
      await h().close();
      return {};
    case 'exit':
      setImmediate(() => process.exit(0));
      return {};
    default:
      throw new Error(`unknown op ${c.op}`);
  }
}

const counters = new Map<number, { calls: number; last: number }>();

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const c = JSON.parse(line) as Cmd;
  run(c).then(
    (ok) => process.stdout.write(`${JSON.stringify({ id: c.id, ok })}\n`),
    (e: unknown) => {
      const err = e as { name?: string; code?: string; message?: string; ref?: number; domid?: number; port?: number };
      process.stdout.write(`${JSON.stringify({ id: c.id, error: { name: err.name, code: err.code, message: err.message, ref: err.ref, domid: err.domid, port: err.port } })}\n`);
    },
  );
});
rl.on('close', () => process.exit(0));
