import { test } from 'node:test';
import assert from 'node:assert/strict';
import { XenbusState, parseXenbusState, xenbusStateName } from '../../protocol/xenbus-state.ts';

test('XenbusState values follow xenbus.h', () => {
  assert.deepEqual(Object.values(XenbusState), [0, 1, 2, 3, 4, 5, 6, 7, 8]);
  assert.equal(xenbusStateName(XenbusState.InitWait), 'InitWait');
  assert.equal(xenbusStateName(42), 'Invalid(42)');
});

test('parseXenbusState maps garbage to Unknown', () => {
  assert.equal(parseXenbusState('4'), XenbusState.Connected);
  assert.equal(parseXenbusState(' 6\n'), XenbusState.Closed);
  for (const bad of [undefined, '', '9', '-1', '4x', '0x4', '44']) assert.equal(parseXenbusState(bad), XenbusState.Unknown);
});
