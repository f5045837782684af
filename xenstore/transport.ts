// The seam between the XenStore client and the bytes: a transport moves an xs_wire.h byte
// stream in both directions and says when it ends. The client does all framing itself, so a
// transport may deliver any chunking (the xenbus device returns whatever is ready).

/** `TransportSink` receives what a transport reads. */
export interface TransportSink {
  /** `data(chunk)` is the next bytes from xenstored. */
  data(chunk: Uint8Array): void;
  /** `end(err)` says the stream is over: `err` when it broke, undefined after close(). */
  end(err?: Error): void;
}

/** `XenstoreTransport` carries one connection's bytes to and from xenstored. */
export interface XenstoreTransport {
  /** What this is connected to, for error messages (`socket /run/xenstored/socket`). */
  readonly description: string;
  /** `start(sink)` begins delivering received bytes; called once. */
  start(sink: TransportSink): void;
  /** `send(bytes)` queues whole or partial messages, in order. */
  send(bytes: Uint8Array): void;
  /** `close()` ends the connection; the sink then gets end() without an error. */
  close(): Promise<void>;
}
