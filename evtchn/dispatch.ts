// Delivering an event to a channel's handlers: the same rule for every implementation of
// EventChannels (evtchn.ts contract): an event raised before the first handler is registered
// is remembered, not lost; a handler that throws cannot stop the others or the event loop's
// poll callback, so its error is re-thrown on the next tick where Node reports it. Registering
// a handler (addHandler) is shared too, since it delivers what was remembered.

/** What dispatchEvent needs of a channel. */
export interface EventTarget {
  readonly handlers: (() => void)[];
  undelivered: boolean;
  readonly open: boolean;
}

/** `addHandler(ch, handler)` registers `handler`; an event remembered before it is delivered on the next turn. */
export function addHandler(ch: EventTarget, handler: () => void): void {
  ch.handlers.push(handler);
  if (ch.undelivered) {
    ch.undelivered = false;
    setImmediate(() => { if (ch.open) dispatchEvent(ch); });
  }
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
