// A client transport straight into an in-memory xenstored in the same process: no socket,
// same bytes. Delivery in both directions is deferred to a microtask so that callers see the
// same asynchrony (and no re-entrancy) as over a socket.
import { XsMessageReader, encodeMessage } from '../../protocol/xs-wire.ts';
import type { TransportSink, XenstoreTransport } from '../transport.ts';
import type { XenstoredCore } from './core.ts';

/** `inProcessTransport(core, domid)` is a transport whose connection acts as `domid` on `core`. */
export function inProcessTransport(core: XenstoredCore, domid: number): XenstoreTransport {
  let sink: TransportSink | undefined;
  let ended = false;
  const end = (err?: Error): void => {
    if (ended) return;
    ended = true;
    queueMicrotask(() => sink?.end(err));
  };
  const conn = core.connect(domid, {
    send: (msgs) => {
      const bytes = msgs.map((m) => encodeMessage(m));
      queueMicrotask(() => {
        if (!ended) for (const b of bytes) sink?.data(b);
      });
    },
    drop: (reason) => end(new Error(`xenstored dropped the connection: ${reason}`)),
  });
  const reader = new XsMessageReader();
  return {
    description: `in-process xenstored as domain ${domid}`,
    start(s) {
      sink = s;
    },
    send(bytes) {
      const copy = Uint8Array.from(bytes);
      queueMicrotask(() => {
        if (ended || conn.closed) return;
        if (reader.error) return;
        for (const m of reader.feed(copy)) conn.receive(m);
        if (reader.error) {
          conn.close();
          end(reader.error);
        }
      });
    },
    async close() {
      conn.close();
      end();
    },
  };
}
