// Serve a disk image to a guest, from dom0 (or the simulator's dom0): the toolstack part creates
// the disk's XenStore directories as `xl block-attach` would, blkback serves it, and Ctrl-C
// hot-unplugs it cleanly.
//
//   node --import tsx examples/serve-file.ts IMAGE DOMID [VDEV]
//
// On a machine without Xen it uses the simulator ($XENBLK_SIM_DIR, or `xenblk sim up`'s).
import path from 'node:path';
import process from 'node:process';
import { openHost } from '../lib/host/open.ts';
import { Blkback } from '../lib/blkback/backend.ts';
import { createVbd, removeVbd, waitForDomain } from '../lib/toolstack/vbd.ts';

const [image, domid, vdev = 'xvdb'] = process.argv.slice(2);
if (image === undefined || domid === undefined) {
  process.stderr.write('usage: serve-file.ts IMAGE DOMID [VDEV]\n');
  process.exit(2);
}

const host = await openHost();
await waitForDomain(host.xenstore, Number(domid)); // disks are attached to existing domains
const disk = await createVbd(host.xenstore, { frontendDomid: Number(domid), vdev, params: path.resolve(image) });
const backend = await Blkback.start({
  host,
  frontendDomid: disk.frontendDomid,
  devid: disk.devid,
  log: (line) => process.stdout.write(`${line}\n`),
});
process.stdout.write(`serving ${image} to domain ${domid} as ${disk.vdev}; Ctrl-C to stop\n`);

await new Promise((resolve) => {
  process.once('SIGINT', resolve);
  process.once('SIGTERM', resolve);
});
await removeVbd(host.xenstore, disk, { timeoutMs: 5000 }); // ask both ends to close, then delete
await backend.stop();
await host.close();
process.stdout.write('stopped\n');
