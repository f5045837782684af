// The delivery rule both EventChannels implementations share (evtchn/dispatch.ts): an event
// raised before any handler is remembered and delivered once the first handler is added, on the
// next turn and only if the channel is still open. (That a throwing handler stops no other is
// not tested here: node:test claims the re-thrown error as the test's own failure.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { addHandler, dispatchEvent } from '../../evtchn/dispatch.ts';
import type { EventTarget } from '../../evtchn/dispatch.ts';

const turn = (): Promise<void> => new Promise((r) => setImmediate(r));
const target = (): EventTarget & { open: boolean } => ({ handlers: [], undelivered: false, open: true });

test('an event before the first handler is delivered to it on the next turn, once', async () => {
  const ch = target();
  dispatchEvent(ch);
  dispatchEvent(ch);
  assert.equal(ch.undelivered, true);
  let n = 0;
  addHandler(ch, () => { n++; });
  assert.equal(n, 0, 'not from inside addHandler');
  await turn();
  assert.equal(n, 1, 'remembered events coalesce into one delivery');
  assert.equal(ch.undelivered, false);
  addHandler(ch, () => { n += 10; });
  await turn();
  assert.equal(n, 1, 'a later handler gets no stale event');
  dispatchEvent(ch);
  assert.equal(n, 12);
});

test('a remembered event is dropped if the channel closed before the next turn', async () => {
  const ch = target();
  dispatchEvent(ch);
  let n = 0;
  addHandler(ch, () => { n++; });
  ch.open = false;
  await turn();
  assert.equal(n, 0);
});
