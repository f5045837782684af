// Simulated event channels between processes: no lost wakeup in a long ping-pong (each side
// waits for the other's event before sending the next; one lost event hangs the test) nor at the
// end of a burst of notifications (the last value written before the last notify is always
// seen by a handler that runs after it), coalescing of bursts, and Xen's rules for binding and
// closing. Latencies are printed as diagnostics, never asserted.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readStatus } from '../../lib/sim/start.ts';
import { pollUntil, simWithChildren } from './sim-driver.ts';
import type { SimWithChildren } from './sim-driver.ts';

const env = (t: { after: (fn: () => Promise<void> | void) => void }): Promise<SimWithChildren> => simWithChildren(t, 'evtchn');
const until = pollUntil;

test('ping-pong between two domain processes: 20,000 round trips, none lost', { timeout: 120_000 }, async (t) => {
  const e = await env(t);
  const a = e.child();
  const b = e.child();
  await a.call('attach', { dir: e.dir, domid: 1 });
  await b.call('attach', { dir: e.dir, domid: 2 });
  const port = (await a.call<{ port: number }>('allocUnbound', { domid: 2 })).port;
  const bport = (await b.call<{ port: number }>('bind', { domid: 1, port })).port;
  await b.call('pong', { port: bport });
  const r = await a.call<{ n: number; p50: number; p99: number }>('ping', { port, n: 20_000 });
  assert.equal(r.n, 20_000);
  const msg = `evtchn round trip between processes: p50 ${r.p50.toFixed(1)} us, p99 ${r.p99.toFixed(1)} us (20,000 samples)`;
  t.diagnostic(msg);
  console.log(msg);
});

test('a burst of 100,000 notifications coalesces and the last one is never lost', { timeout: 120_000 }, async (t) => {
  const e = await env(t);
  const a = e.child();
  const b = e.child();
  await a.call('attach', { dir: e.dir, domid: 3 });
  await b.call('attach', { dir: e.dir, domid: 0 });
  const page = await a.call<{ obj: number; refs: number[] }>('share', { domid: 0, count: 1, writable: true });
  const m = await b.call<{ obj: number }>('map', { domid: 3, refs: page.refs, writable: false });
  const port = (await a.call<{ port: number }>('allocUnbound', { domid: 0 })).port;
  const bport = (await b.call<{ port: number }>('bind', { domid: 3, port })).port;
  await b.call('watchCounter', { obj: m.obj, port: bport });
  const N = 100_000;
  await a.call('burst', { obj: page.obj, port, n: N });
  await until(async () => (await b.call<{ last: number }>('counter', { port: bport })).last === N, 'the handler sees the final value');
  const c = await b.call<{ calls: number; last: number }>('counter', { port: bport });
  assert.ok(c.calls >= 1 && c.calls <= N, `${c.calls} handler calls for ${N} notifications`);
  const msg = `burst: ${N} notifications -> ${c.calls} handler calls (coalesced), final value seen`;
  t.diagnostic(msg);
  console.log(msg);
});

test('binding follows Xen: only the named domain may bind an unbound port; close unbinds the peer', { timeout: 60_000 }, async (t) => {
  const e = await env(t);
  const a = e.child();
  const b = e.child();
  const c = e.child();
  await a.call('attach', { dir: e.dir, domid: 1 });
  await b.call('attach', { dir: e.dir, domid: 2 });
  await c.call('attach', { dir: e.dir, domid: 3 });
  const port = (await a.call<{ port: number }>('allocUnbound', { domid: 2 })).port;
  let err = await c.failure('bind', { domid: 1, port });
  assert.deepEqual([err.name, err.code, err.domid, err.port], ['EvtchnError', 'EINVAL', 1, port]);
  err = await b.failure('bind', { domid: 1, port: port + 100 });
  assert.deepEqual([err.code, err.port], ['EINVAL', port + 100]);
  err = await b.failure('allocUnbound', { domid: 77 });
  assert.deepEqual([err.name, err.code, err.domid], ['EvtchnError', 'ESRCH', 77]);
  const bport = (await b.call<{ port: number }>('bind', { domid: 1, port })).port;
  err = await c.failure('bind', { domid: 1, port });
  assert.equal(err.code, 'EINVAL', 'an interdomain port cannot be bound again');
  // The binder gets one event at bind time (event_channel.c marks the new port pending).
  await until(async () => (await b.call<{ events: number }>('events', { port: bport })).events === 1, 'bind-time event');
  await a.call('notify', { port });
  await until(async () => (await b.call<{ events: number }>('events', { port: bport })).events === 2, 'event from a');
  await a.call('closePort', { port });
  const s = readStatus(e.dir);
  const p = s.domains.find((d) => d.domid === 2)!.ports.find((x) => x.port === bport)!;
  assert.deepEqual([p.state, p.remoteDomid], ['unbound', 1], 'the peer end is unbound for us again');
  assert.deepEqual(s.domains.find((d) => d.domid === 1)!.ports, []);
  await b.call('notify', { port: bport }); // dropped silently, as EVTCHNOP_send on an unbound port
  err = await a.failure('notify', { port });
  assert.match(err.message!, /no channel|closed/);
});
