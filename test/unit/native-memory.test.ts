// native/: mappings reach JS without a copy, and a view outliving its mapping can never touch
// memory again (detached in JS, guarded against native code), plus the small wrappers
// (ioctl numbers, FIFOs, the blocking socket, the fd watch).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Mapping, PAGE } from '../../native/memory.ts';
import { detach } from '../../native/detach.ts';
import { NativeError, bufferAddress, errno, libc, viewAt, EFD } from '../../native/libc.ts';
import { bytesAddress } from '../../native/address.ts';
import { IOC_NONE, IOC_READ, IOC_WRITE, ioc } from '../../native/ioctl.ts';
import { mkfifo, openFifoReader, openFifoWriter, ringFifo } from '../../native/fifo.ts';
import { BlockingUnixSocket } from '../../native/unix-socket.ts';
import { FdWatch } from '../../native/fd-watch.ts';

function tmpdir(t: { after: (fn: () => void) => void }): string {
  const d = fs.mkdtempSync(path.join(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir(), 'xenblk-native-'));
  t.after(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

function tmpFile(t: { after: (fn: () => void) => void }, size: number): number {
  const p = path.join(tmpdir(t), 'f');
  const fd = fs.openSync(p, 'w+');
  fs.ftruncateSync(fd, size);
  t.after(() => fs.closeSync(fd));
  return fd;
}

/** The /proc/self/maps line covering `address`. */
function mapsLine(address: number): string | undefined {
  for (const line of fs.readFileSync('/proc/self/maps', 'utf8').split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S+)/.exec(line);
    if (m && parseInt(m[1]!, 16) <= address && address < parseInt(m[2]!, 16)) return line;
  }
  return undefined;
}

test('a file mapping is shared memory: writes through a view reach the file and other mappings, no copy', (t) => {
  const fd = tmpFile(t, 4 * PAGE);
  const a = Mapping.file(fd, 0, 4 * PAGE, true);
  const b = Mapping.file(fd, PAGE, PAGE, true);
  t.after(() => { a.unmap(); b.unmap(); });
  const va = a.view();
  va.write('through a', PAGE + 10);
  assert.equal(b.view().toString('latin1', 10, 19), 'through a');
  const fromFile = Buffer.alloc(9);
  fs.readSync(fd, fromFile, 0, 9, PAGE + 10);
  assert.equal(fromFile.toString('latin1'), 'through a');
  assert.match(mapsLine(a.address)!, / rw-s /);
});

test('pages placed in a reservation form one contiguous buffer over non-contiguous file pages', (t) => {
  const fd = tmpFile(t, 8 * PAGE);
  for (let i = 0; i < 8; i++) fs.writeSync(fd, Buffer.from(`page${i}`), 0, 5, i * PAGE);
  const r = Mapping.reserve(3 * PAGE);
  t.after(() => r.unmap());
  r.place(0, fd, 5 * PAGE, PAGE, false);
  r.place(PAGE, fd, 2 * PAGE, 2 * PAGE, true);
  const v = r.view();
  assert.deepEqual([0, 1, 2].map((i) => v.toString('latin1', i * PAGE, i * PAGE + 5)), ['page5', 'page2', 'page3']);
  assert.match(mapsLine(r.address)!, / r--s /, 'read-only page mapped read-only');
});

test('unmap detaches every view: length 0, accessors throw, nothing reads the old memory', (t) => {
  const fd = tmpFile(t, PAGE);
  const m = Mapping.file(fd, 0, PAGE, true);
  const buf = m.view();
  const u32 = new Uint32Array(buf.buffer, buf.byteOffset, PAGE / 4);
  buf.writeUInt32LE(0xfeedface, 0);
  m.unmap();
  assert.equal(buf.length, 0);
  assert.equal(u32.length, 0);
  assert.throws(() => buf.readUInt32LE(0), { code: 'ERR_BUFFER_OUT_OF_BOUNDS' });
  assert.throws(() => Atomics.load(u32, 0), TypeError);
  assert.throws(() => new DataView(buf.buffer), TypeError);
  assert.equal(buf[0], undefined);
  assert.throws(() => m.view(), (e: unknown) => e instanceof NativeError && e.code === 'EFAULT');
});

test('after unmap the range stays guarded (PROT_NONE): native code using the old address gets EFAULT, never other memory', (t) => {
  const fd = tmpFile(t, 2 * PAGE);
  fs.writeSync(fd, Buffer.from('secret'), 0, 6, 0);
  const m = Mapping.file(fd, 0, 2 * PAGE, true);
  const held = m.view(); // a view that outlives the mapping, as an in-flight fs.read would hold
  const addr = m.address;
  m.unmap();
  assert.equal(held.length, 0);
  const line = mapsLine(addr);
  assert.ok(line !== undefined, 'the address range is still reserved while a view may be reachable');
  assert.match(line, / ---p /, `guard is inaccessible: ${line}`);
  // A system call writing into the old address faults cleanly instead of corrupting anything.
  const src = fs.openSync('/dev/zero', 'r');
  t.after(() => fs.closeSync(src));
  assert.equal(libc.read(src, new Uint8Array(viewAt(addr, 16)), 16), -1);
  assert.equal(errno(), 14, 'EFAULT');
});

test('an unmapping with no view handed out releases the range at once', (t) => {
  const fd = tmpFile(t, PAGE);
  const m = Mapping.file(fd, 0, PAGE, true);
  const addr = m.address;
  m.unmap();
  assert.equal(mapsLine(addr), undefined);
});

test('releaseView detaches one view of a mapping that stays', (t) => {
  const fd = tmpFile(t, 2 * PAGE);
  const m = Mapping.file(fd, 0, 2 * PAGE, true);
  t.after(() => m.unmap());
  const first = m.view(0, PAGE);
  const second = m.view(PAGE, PAGE);
  m.releaseView(first);
  assert.equal(first.length, 0);
  second[0] = 7;
  assert.equal(m.view(PAGE, 1)[0], 7);
});

test('detach works on koffi views (Node 20 has no ArrayBuffer.transfer; structuredClone would copy)', (t) => {
  const m = Mapping.file(tmpFile(t, PAGE), 0, PAGE, true);
  const v = m.view();
  const copy = structuredClone(v.buffer, { transfer: [v.buffer as ArrayBuffer] });
  assert.equal(v.length, PAGE, 'structuredClone copies external buffers instead of detaching them');
  assert.equal(copy.byteLength, PAGE);
  detach(v.buffer as ArrayBuffer);
  assert.equal(v.length, 0);
  detach(v.buffer as ArrayBuffer); // idempotent
  m.unmap();
});

test('ioc() encodes asm-generic _IOC: the values REFERENCE.md lists for the Xen devices', () => {
  assert.equal(ioc(IOC_NONE, 'G', 0, 24), 0x00184700); // IOCTL_GNTDEV_MAP_GRANT_REF
  assert.equal(ioc(IOC_NONE, 'E', 1, 8), 0x00084501); // IOCTL_EVTCHN_BIND_INTERDOMAIN
  assert.equal(ioc(IOC_NONE, 'E', 5, 0), 0x00004505); // IOCTL_EVTCHN_RESET
  assert.equal(ioc(IOC_NONE, 'G', 5, 24), 0x00184705); // IOCTL_GNTALLOC_ALLOC_GREF
  // Direction bits sit above the size: _IOC_READ|_IOC_WRITE is 3 << 30 (asm-generic/ioctl.h).
  assert.equal(ioc(IOC_READ | IOC_WRITE, 'G', 0, 0), 0xc0004700);
  assert.throws(() => ioc(IOC_NONE, 'G', 256, 0), RangeError);
  assert.throws(() => ioc(IOC_NONE, 'G', 0, 1 << 14), RangeError);
});

test('FIFO doorbell: a byte wakes the reader, full and closed pipes are reported, not thrown', (t) => {
  const d = tmpdir(t);
  const p = path.join(d, 'bell');
  mkfifo(p);
  assert.throws(() => openFifoWriter(p), (e: unknown) => e instanceof NativeError && e.code === 'ENXIO', 'no reader yet');
  const r = openFifoReader(p);
  const w = openFifoWriter(p);
  assert.equal(ringFifo(w), 'ok');
  assert.equal(ringFifo(w), 'ok');
  const scratch = new Uint8Array(64);
  assert.equal(libc.read(r, scratch, scratch.length), 2);
  assert.equal(libc.read(r, scratch, scratch.length), -1, 'drained: EAGAIN');
  let n = 0;
  while (ringFifo(w) === 'ok') n++;
  assert.ok(n >= 4096, `pipe holds ${n} bytes before 'full'`);
  assert.equal(ringFifo(w), 'full');
  libc.close(r);
  assert.equal(ringFifo(w), 'gone');
  libc.close(w);
  assert.throws(() => mkfifo(p), (e: unknown) => e instanceof NativeError && e.code === 'EEXIST');
});

test('FdWatch calls back from the event loop when an eventfd becomes readable, and stops on close', async () => {
  const fd = libc.eventfd(0, EFD.NONBLOCK | EFD.CLOEXEC);
  assert.ok(fd >= 0);
  const one = new Uint8Array(new BigUint64Array([1n]).buffer);
  const eight = new Uint8Array(8);
  let calls = 0;
  await new Promise<void>((resolve) => {
    const w = new FdWatch(fd, () => {
      libc.read(fd, eight, 8);
      if (++calls === 3) {
        w.close();
        resolve();
      } else {
        libc.write(fd, one, 8);
      }
    });
    libc.write(fd, one, 8);
  });
  assert.equal(calls, 3);
  libc.write(fd, one, 8);
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(calls, 3, 'no callback after close');
  libc.close(fd);
});

test('BlockingUnixSocket exchanges bytes with a Node server and reports the peer closing', async (t) => {
  const d = tmpdir(t);
  const sockPath = path.join(d, 's');
  const server = net.createServer((c) => {
    c.on('data', (b) => { c.end(Buffer.concat([Buffer.from('echo:'), b])); });
  });
  await new Promise<void>((r) => server.listen(sockPath, r));
  t.after(() => server.close());
  const s = BlockingUnixSocket.connect(sockPath);
  s.writeAll(Buffer.from('hello'));
  const got = Buffer.alloc(10);
  // The server runs on our own event loop: let it answer before reading (the read would block).
  await new Promise((r) => setTimeout(r, 50));
  s.readExact(got, 10);
  assert.equal(got.toString(), 'echo:hello');
  assert.throws(() => s.readExact(got, 1), (e: unknown) => e instanceof NativeError && e.code === 'ECONNRESET');
  s.close();
  assert.throws(() => BlockingUnixSocket.connect(path.join(d, 'absent')), (e: unknown) => e instanceof NativeError && e.code === 'ENOENT');
});

test('buffer addresses: a mapping view carries its address; other buffers and their subarrays are found through koffi once, and stay unchanged', (t) => {
  const m = Mapping.file(tmpFile(t, 4 * PAGE), 0, 4 * PAGE, true);
  try {
    const v = m.view(PAGE, 2 * PAGE);
    assert.equal(bytesAddress(v), m.address + PAGE);
    assert.equal(bytesAddress(v), bufferAddress(v));
    assert.equal(bytesAddress(v.subarray(100)), m.address + PAGE + 100);
    assert.deepEqual(v, Buffer.alloc(2 * PAGE), 'the mark is invisible to comparisons');
    const own = Buffer.alloc(3 * PAGE);
    const part = own.subarray(512, 1024);
    assert.equal(bytesAddress(part), bufferAddress(part));
    assert.equal(bytesAddress(own), bufferAddress(own));
    assert.deepEqual(Object.getOwnPropertySymbols(part), [], "a caller's view is not changed");
  } finally {
    m.unmap();
  }
});
