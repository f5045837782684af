// Delivering an event to a channel's handlers: the same rule for every implementation of
// EventChannels (evtchn.ts contract): an event raised before the first handler is registered
// is remembered, not lost; a handler that throws cannot stop the others or the event loop's
// poll callback, so its error is re-thrown on the next tick where Node reports it.

/** What dispatchEvent needs of a channel. */
export interface EventTarget {
  readonly handlers: readonly (() => void)[];
  undelivered: boolean;
}

/** `dispatchEvent(ch)` runs the handlers of `ch`, or remembers the event for the first handler. */
export function dispatchEvent(ch: EventTarget): void {
  if (ch.handlers.length === 0) {
    ch.undelivered = true;
    return;
  }
  for (const h of ch.handlers) {
    try {
      h();
    } catch (err) {
      process.nextTick(() => { throw err; });
    }
  }
}
