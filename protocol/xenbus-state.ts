// XenbusState, the per-device state machine both ends publish as `state` in XenStore.
// Values from xen/include/public/io/xenbus.h (enum xenbus_state).

/** `XenbusState` is the numeric state a device end writes to its `state` key. */
export const XenbusState = {
  Unknown: 0,
  Initialising: 1,
  InitWait: 2,
  Initialised: 3,
  Connected: 4,
  Closing: 5,
  Closed: 6,
  Reconfiguring: 7,
  Reconfigured: 8,
} as const;

export type XenbusState = (typeof XenbusState)[keyof typeof XenbusState];

const NAMES: readonly string[] = [
  'Unknown', 'Initialising', 'InitWait', 'Initialised', 'Connected',
  'Closing', 'Closed', 'Reconfiguring', 'Reconfigured',
];

/** `xenbusStateName(s)` is the name xenbus.h gives state `s`, or `Invalid(<s>)`. */
export function xenbusStateName(s: number): string {
  return Number.isInteger(s) && s >= 0 && s < NAMES.length ? NAMES[s]! : `Invalid(${s})`;
}

/**
 * `parseXenbusState(text)` is the state written as `text` in XenStore (decimal, as Linux's
 * xenbus_read_driver_state parses it), or `Unknown` when the key holds anything else: a peer's
 * garbage must not be mistaken for a meaningful state.
 */
export function parseXenbusState(text: string | undefined): XenbusState {
  if (text === undefined || !/^[0-8]$/.test(text.trim())) return XenbusState.Unknown;
  return Number(text.trim()) as XenbusState;
}
