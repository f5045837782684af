// Event channels: the contract both implementations (Linux /dev/xen/evtchn, simulator) meet.

/** One bound local port. */
export interface EventChannel {
  readonly localPort: number;
  readonly remoteDomid: number;
  /** `notify()` raises an event on the remote end (EVTCHNOP_send). Never blocks. */
  notify(): void;
  /**
   * `onEvent(handler)` calls `handler` from the event loop after events arrive. Several events
   * before the handler runs may coalesce into one call (as pending bits do); none is lost: an
   * event raised after the handler started causes another call. The port is unmasked again
   * before the handler runs.
   */
  onEvent(handler: () => void): void;
  /** `close()` unbinds the port. */
  close(): void;
}

export interface EventChannels {
  /** `allocUnbound(remoteDomid)` is a new port that `remoteDomid` may bind to. */
  allocUnbound(remoteDomid: number): EventChannel;
  /** `bindInterdomain(remoteDomid, remotePort)` binds to a port `remoteDomid` allocated for us. */
  bindInterdomain(remoteDomid: number, remotePort: number): EventChannel;
  close(): void;
}
