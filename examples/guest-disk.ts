// A guest program that uses a virtual disk through blkfront: attach to it, look at it, write
// a sector, read it back, flush, detach. On the simulator it runs as domain --domid; on Xen
// (inside a domU with /dev/xen) as the domain it runs in.
//
//   node --import tsx examples/guest-disk.ts [--vdev xvdb] [--domid N] [--sim DIR | --xen]
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import { XEN_EVTCHN_DEVICE, openHost } from '../lib/host/open.ts';
import { Blkfront } from '../lib/blkfront/device.ts';

const { values } = parseArgs({
  options: {
    vdev: { type: 'string', default: 'xvdb' },
    domid: { type: 'string' },
    sim: { type: 'string' },
    xen: { type: 'boolean', default: false },
  },
});

// On the simulator the guest is domain 1 unless told otherwise; on Xen, the domain we run in.
const simulated = !values.xen && (values.sim !== undefined || !fs.existsSync(XEN_EVTCHN_DEVICE));
const domid = values.domid !== undefined ? Number(values.domid) : simulated ? 1 : undefined;
const host = await openHost({
  ...(values.xen ? { xen: true } : {}),
  ...(values.sim !== undefined ? { sim: values.sim } : {}),
  ...(domid !== undefined ? { domid } : {}),
});
const disk = await Blkfront.attach(host, values.vdev!, { deviceTimeoutMs: 10_000 });
try {
  const info = await disk.getInfo();
  const f = info.features;
  console.log(`${values.vdev}: ${info.sectors} sectors of ${info.sectorSize} bytes, ${info.readWrite ? 'read-write' : 'read-only'}; ` +
    `flush ${f.flush}, discard ${f.discard}, ${f.queues} queue(s) of ${2 ** f.ringPageOrder} page(s), ` +
    `indirect ${f.indirectSegments}, persistent grants ${f.persistentGrants}`);

  // Sector 0 gets a message; the disk's last sector gets its own number.
  const message = Buffer.alloc(info.sectorSize);
  message.write(`hello from domain ${host.domid} via blkfront`);
  const last = Buffer.alloc(info.sectorSize);
  last.write(`last sector ${info.sectors - 1}`);
  if (info.readWrite) {
    await Promise.all([disk.write(0, message), disk.write(info.sectors - 1, last)]);
    await disk.flush();
  }

  const back = Buffer.alloc(info.sectorSize);
  await disk.read(0, back);
  console.log(`sector 0: "${back.toString('latin1').replace(/\0+$/, '')}"`);
  if (info.readWrite && !back.equals(message)) throw new Error('sector 0 does not hold what was written');

  // Bulk I/O goes faster in an I/O buffer: it is granted to the backend once, and page-aligned
  // reads and writes in it are granted in place instead of copied through blkfront's own pages.
  const bytes = Math.min(64 * 1024, Math.floor((info.sectors * info.sectorSize) / 4096) * 4096);
  if (bytes > 0) {
    const io = disk.allocBuffer(bytes);
    const before = disk.stats().inPlace;
    await disk.read(0, io);
    const plain = Buffer.alloc(bytes);
    await disk.read(0, plain);
    if (!plain.equals(io)) throw new Error('an I/O buffer read differs from a plain one');
    console.log(`first ${bytes / 1024} KiB read into an I/O buffer in place (${disk.stats().inPlace - before} requests), same as a copied read`);
    disk.freeBuffer(io);
  }
  console.log('ok');
} finally {
  await disk.disconnect();
  await host.close();
}
