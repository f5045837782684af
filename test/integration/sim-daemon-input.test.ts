// The simulator daemon facing a misbehaving client on its control socket: bad frames drop that
// client only, bad hypercalls get typed refusals (-errno with the ref/port at fault), and the
// daemon keeps serving everyone else, cleaning up what the bad client held.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { readStatus, startSim } from '../../lib/sim/start.ts';
import { SimPaths } from '../../lib/sim/paths.ts';
import { HC, decodeError } from '../../lib/sim/hypercall.ts';

class RawClient {
  private buf = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  closed = false;
  private constructor(readonly sock: net.Socket) {
    sock.on('data', (b: Buffer) => { this.buf = Buffer.concat([this.buf, b]); this.wake(); });
    sock.on('close', () => { this.closed = true; this.wake(); });
    sock.on('error', () => {});
  }
  static connect(p: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect(p, () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }
  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
  send(op: number, words: number[]): void {
    const b = Buffer.alloc(8 + 4 * words.length);
    b.writeUInt32LE(4 * words.length, 0);
    b.writeUInt32LE(op, 4);
    words.forEach((w, i) => b.writeUInt32LE(w >>> 0, 8 + 4 * i));
    this.sock.write(b);
  }
  /** The next reply: status and payload words, or the error it carries. */
  async reply(): Promise<{ status: number; words: number[]; error?: ReturnType<typeof decodeError> }> {
    for (;;) {
      if (this.buf.length >= 8) {
        const len = this.buf.readUInt32LE(0);
        if (this.buf.length >= 8 + len) {
          const status = this.buf.readInt32LE(4);
          const payload = this.buf.subarray(8, 8 + len);
          this.buf = this.buf.subarray(8 + len);
          if (status < 0) return { status, words: [], error: decodeError(status, payload) };
          const words: number[] = [];
          for (let i = 0; i + 4 <= payload.length; i += 4) words.push(payload.readUInt32LE(i));
          return { status, words };
        }
      }
      if (this.closed) throw new Error('connection closed');
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }
  async closedByPeer(): Promise<boolean> {
    while (!this.closed) await new Promise<void>((r) => this.waiters.push(r));
    return true;
  }
}

test('bad frames and bad hypercalls are refused without harming the daemon or other clients', { timeout: 60_000 }, async (t) => {
  const dir = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'xenblk-input-'));
  const sim = await startSim({ dir });
  t.after(async () => { await sim.stop(); fs.rmSync(dir, { recursive: true, force: true }); });
  const ctl = new SimPaths(dir).ctl;

  // Frames the ABI cannot carry: the client is dropped.
  const odd = await RawClient.connect(ctl);
  odd.sock.write(Buffer.from([3, 0, 0, 0, 1, 0, 0, 0, 9, 9, 9]));
  assert.equal(await odd.closedByPeer(), true);
  const huge = await RawClient.connect(ctl);
  huge.sock.write(Buffer.from([0, 0, 0, 0x40, 5, 0, 0, 0]));
  assert.equal(await huge.closedByPeer(), true);

  const c = await RawClient.connect(ctl);
  c.send(HC.MAP, [0, 1, 1, 8]);
  assert.equal((await c.reply()).error?.errno, 22, 'EINVAL before ATTACH');
  c.send(HC.ATTACH, [0x7ff0, 1]);
  assert.equal((await c.reply()).error?.errno, 22, 'DOMID_SELF is not a domain to attach as');
  c.send(HC.ATTACH, [8, process.pid]);
  const att = await c.reply();
  assert.equal(att.status, 0);
  c.send(HC.ATTACH, [8, process.pid]);
  assert.equal((await c.reply()).error?.errno, 22, 'attached twice');
  c.send(99, []);
  assert.equal((await c.reply()).error?.errno, 38, 'ENOSYS for an unknown hypercall');
  c.send(HC.MAP, [0, 1, 3, 8]);
  assert.equal((await c.reply()).error?.errno, 22, 'ref count does not match the payload');
  c.send(HC.MAP, [0, 1, 1, 0xfffffff0]);
  const badRef = await c.reply();
  assert.deepEqual([badRef.error?.errno, badRef.error?.at], [22, 0xfffffff0]);
  c.send(HC.UNMAP, [12345]);
  assert.equal((await c.reply()).error?.errno, 22);
  c.send(HC.CLOSE_PORT, [1]);
  assert.deepEqual([(await c.reply()).error?.errno], [22]);
  c.send(HC.BIND_INTERDOMAIN, [0, 5000]);
  const badPort = await c.reply();
  assert.deepEqual([badPort.error?.errno, badPort.error?.at], [22, 5000]);
  c.send(HC.FRAME_RUN, [3]);
  assert.equal((await c.reply()).error?.errno, 22, 'frames come in whole chunks');
  c.send(HC.ALLOC_UNBOUND, [0]);
  const port = await c.reply();
  assert.equal(port.status, 0);

  // The daemon still serves, and dropping the client releases what it held.
  let s = readStatus(dir);
  assert.deepEqual(s.domains.find((d) => d.domid === 8)!.ports.map((p) => p.port), [port.words[0]]);
  c.sock.destroy();
  for (let i = 0; i < 500 && readStatus(dir).domains.some((d) => d.domid === 8); i++) await new Promise((r) => setTimeout(r, 10));
  s = readStatus(dir);
  assert.deepEqual(s.domains.map((d) => d.domid), [0]);
});
