// The real-Xen tests, in the order one boot runs them. Each is a bash script under
// test/xen/tests/ run in dom0 from the repository share (cwd = the repository) by
// test/xen/dom0/boot.sh; it passes by exiting 0. A test whose own code is not in the tree yet
// names the files it needs, and fails without booting for it, saying which are missing.

/** One real-Xen test. */
export interface XenTest {
  /** Name used in markers, logs and on the command line. */
  readonly name: string;
  /** What passing proves. */
  readonly summary: string;
  /** Script under test/xen/tests/. */
  readonly script: string;
  /** Limit inside dom0 (seconds) before the test is killed and fails. */
  readonly timeoutSeconds: number;
  /** Repository files the test runs; when one is missing the test fails before boot. */
  readonly requires?: readonly string[];
  /** The test runs the CLI bundle dist/xenblk.mjs, which the harness builds (npm run build) first. */
  readonly build?: boolean;
}

/** `TESTS` is every real-Xen test, in run order. */
export const TESTS: readonly XenTest[] = [
  {
    name: 'dom0-sanity',
    summary: 'Xen + dom0 up: xl, xenstored, /dev/xen/{gntdev,gntalloc,evtchn,...}, Node 20 and tsx in dom0',
    script: 'dom0-sanity.sh',
    timeoutSeconds: 180,
  },
  {
    name: 'linux-blkfront-linux-blkback',
    summary: 'baseline: Linux xen-blkfront (PV domU) against Linux xen-blkback on a loop device',
    script: 'linux-blkfront-linux-blkback.sh',
    timeoutSeconds: 420,
  },
  {
    name: 'linux-blkfront-xenblk-blkback',
    summary: 'Linux xen-blkfront (PV domU, 16-page ring, 64 indirect segments) against xenblk serve in dom0; hot-unplug, xl destroy',
    script: 'linux-blkfront-xenblk-blkback.sh',
    timeoutSeconds: 600,
    requires: ['cli/commands/serve.ts', 'lib/blkback/backend.ts', 'lib/host/open.ts'],
    build: true,
  },
  {
    name: 'linux-blkfront-xenblk-blkback-grant-copy',
    summary: 'the same against xenblk serve --grant-copy: data by GNTTABOP_copy, no persistent grants, nothing of the guest mapped',
    script: 'linux-blkfront-xenblk-blkback-grant-copy.sh',
    timeoutSeconds: 600,
    requires: ['cli/commands/serve.ts', 'lib/blkback/ring-service.ts', 'gnttab/linux.ts'],
    build: true,
  },
  {
    name: 'xenblk-blkfront-linux-blkback',
    summary: 'xenblk attach in dom0 (gntalloc, evtchn) against Linux xen-blkback on a loop device: write, flush, discard, read back',
    script: 'xenblk-blkfront-linux-blkback.sh',
    timeoutSeconds: 420,
    requires: ['cli/commands/attach.ts', 'lib/blkfront/device.ts', 'lib/host/open.ts'],
    build: true,
  },
  {
    name: 'bad-frontend-xenblk-blkback',
    summary: 'a hostile frontend in dom0 (gntalloc: Xen checks every grant) against xenblk serve: garbage requests answered with errors, the backend keeps serving',
    script: 'bad-frontend-xenblk-blkback.sh',
    timeoutSeconds: 420,
    requires: ['test/xen/dom0/bad-frontend.ts', 'cli/commands/serve.ts', 'lib/blkback/backend.ts'],
    build: true,
  },
  {
    name: 'xenstore-client',
    summary: "xenblk's XenStore client against Xen's C xenstored: read/write/directory/watch/transaction/permissions",
    script: 'xenstore-client.sh',
    timeoutSeconds: 240,
    requires: ['xenstore/connect.ts'],
  },
];
