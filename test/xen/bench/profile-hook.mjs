// Loaded into `xenblk serve` by the real-Xen benchmark with --profile (node --import this-file):
// SIGUSR2 starts a V8 CPU profile through the inspector and the next SIGUSR2 writes it to
// $XENBLK_PROFILE_OUT, so the profile covers the workload only, not Node's start-up, the
// XenStore handshake or the teardown (test/xen/bench/bench.sh sends the signals once both disks
// are connected and when the domU's workload is over). Plain JavaScript: dom0 runs it as is.
import { Session } from 'node:inspector';
import { writeFileSync } from 'node:fs';

const out = process.env.XENBLK_PROFILE_OUT;
const interval = Number(process.env.XENBLK_PROFILE_INTERVAL_US ?? 4000);
let session;
process.on('SIGUSR2', () => {
  if (session === undefined) {
    session = new Session();
    session.connect();
    session.post('Profiler.enable', () => {
      session.post('Profiler.setSamplingInterval', { interval }, () => session.post('Profiler.start'));
    });
    return;
  }
  const s = session;
  session = undefined;
  s.post('Profiler.stop', (err, res) => {
    if (err === null && out !== undefined) writeFileSync(out, JSON.stringify(res.profile));
    s.disconnect();
  });
});
