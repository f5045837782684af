// The blkback of one (driver) domain: it watches backend/<kind>/ (all frontend domains, or
// one) for disk directories created by a toolstack and serves each with a VbdBackend, as the
// Linux xenbus backend bus probes a driver per directory. It owns every disk it serves and
// releases all of them (rings, grant mappings, channels, backings) on stop().
import type { Host } from '../host/host.ts';
import type { XenstoreWatch } from '../../xenstore/xenstore.ts';
import { XenbusState, parseXenbusState } from '../../protocol/xenbus-state.ts';
import { openBackend } from '../backends/open.ts';
import type { BackingOpener, BlkbackLimits, VbdInfo } from './handshake.ts';
import { DEFAULT_LIMITS, VbdBackend } from './handshake.ts';
import type { VbdStatsSnapshot } from './stats.ts';

export interface BlkbackOptions {
  readonly host: Host;
  /** Serve only this frontend domain's disks (default: every domain's). */
  readonly frontendDomid?: number;
  /** With frontendDomid: serve only this device (so several backends can share a domain). */
  readonly devid?: number;
  /** Directory under backend/ (default `vbd`; a userspace backend next to Linux's may use another, as QEMU uses `qdisk`). */
  readonly kind?: string;
  /** Opens a disk's backing (default: `openBackend` on params: files, devices, `ram:`). */
  readonly openBacking?: BackingOpener;
  /** Act as the hotplug script: write hotplug-status=connected (default true). */
  readonly hotplug?: boolean;
  readonly limits?: Partial<BlkbackLimits>;
  /** How often to look for a backing that changed size, in ms (default 1000; 0: only on resize()). */
  readonly resizePollMs?: number;
  /** How long a restarted backend waits for the frontend to notice it (default 2000 ms). */
  readonly restartGraceMs?: number;
  readonly log?: (msg: string) => void;
}

/** One served disk with its statistics. */
export interface BlkbackDiskReport extends VbdInfo {
  readonly stats: VbdStatsSnapshot;
}

/** A running backend. */
export class Blkback {
  private readonly devs = new Map<string, VbdBackend>();
  /** Disks finished with online=0 whose directory the toolstack has not removed yet. */
  private readonly retired = new Set<string>();
  private watch: XenstoreWatch | undefined;
  private timer: ReturnType<typeof setInterval> | undefined;
  private chain: Promise<void> = Promise.resolve();
  private stopped = false;
  private readonly changeWaiters = new Set<() => void>();

  private constructor(
    private readonly o: BlkbackOptions,
    private readonly domainPath: string,
    /** backend/<kind> or backend/<kind>/<domid>, absolute. */
    readonly basePath: string,
    private readonly kind: string,
    private readonly limits: BlkbackLimits,
    private readonly log: (msg: string) => void,
  ) {}

  /** `Blkback.start(opts)` starts watching for disks and serving them. */
  static async start(opts: BlkbackOptions): Promise<Blkback> {
    const xs = opts.host.xenstore;
    const domainPath = await xs.getDomainPath(opts.host.domid);
    const kind = opts.kind ?? 'vbd';
    const base = `${domainPath}/backend/${kind}${opts.frontendDomid === undefined ? '' : `/${opts.frontendDomid}`}`;
    const limits: BlkbackLimits = { ...DEFAULT_LIMITS, ...opts.limits };
    const b = new Blkback(opts, domainPath, base, kind, limits, opts.log ?? (() => {}));
    b.watch = xs.watch(base);
    const w = b.watch;
    void (async () => {
      try {
        for await (const ev of w) {
          if (b.stopped) break;
          b.enqueue(() => b.onEvent(ev.path));
        }
      } catch (e) {
        if (!b.stopped) b.log(`blkback: watch on ${base} ended: ${e instanceof Error ? e.message : String(e)}`);
      }
    })();
    const poll = opts.resizePollMs ?? 1000;
    if (poll > 0) {
      b.timer = setInterval(() => { for (const d of b.devs.values()) void d.checkSize(); }, poll);
      b.timer.unref();
    }
    return b;
  }

  /** `disks()` describes every disk being served, with its statistics. */
  disks(): BlkbackDiskReport[] {
    return [...this.devs.values()].map((d) => ({ ...d.describe(), stats: d.stats.snapshot() }));
  }

  /** `device(frontendDomid, devid)` is the disk served for that frontend device, if any. */
  device(frontendDomid: number, devid: number): VbdBackend | undefined {
    return this.devs.get(`${frontendDomid}/${devid}`);
  }

  /** `resize()` rereads every backing's size now and publishes changes (instead of waiting for the poll). */
  async resize(): Promise<void> {
    await Promise.all([...this.devs.values()].map((d) => d.checkSize()));
  }

  /**
   * `waitFor(pred, signal?)` resolves once `pred()` holds; it is re-evaluated after every
   * XenStore event the backend handles (tests and the CLI wait for states with it).
   */
  async waitFor(pred: () => boolean, signal?: AbortSignal): Promise<void> {
    while (!pred()) {
      signal?.throwIfAborted();
      await new Promise<void>((resolve) => {
        const done = (): void => { this.changeWaiters.delete(done); clearTimeout(t); resolve(); };
        const t = setTimeout(done, 50);
        this.changeWaiters.add(done);
      });
    }
  }

  /** `stop()` stops watching and shuts every disk down: rings drained and released, state Closed, backings closed. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer !== undefined) clearInterval(this.timer);
    await this.watch?.close().catch(() => undefined);
    await this.chain;
    await Promise.all([...this.devs.values()].map((d) => d.shutdown()));
    this.devs.clear();
  }

  private enqueue(f: () => Promise<void>): void {
    this.chain = this.chain.then(f).catch((e: unknown) => {
      this.log(`blkback: ${e instanceof Error ? e.message : String(e)}`);
    }).finally(() => {
      for (const w of [...this.changeWaiters]) w();
    });
  }

  private async onEvent(path: string): Promise<void> {
    if (this.stopped) return;
    const rel = path === this.basePath ? [] : path.startsWith(`${this.basePath}/`) ? path.slice(this.basePath.length + 1).split('/') : undefined;
    if (rel === undefined) return;
    const need = this.o.frontendDomid === undefined ? 2 : 1;
    if (rel.length < need) {
      await this.scan();
      return;
    }
    const fe = this.o.frontendDomid ?? Number(rel[0]);
    const devid = Number(rel[need - 1]);
    if (!isId(fe) || !isId(devid)) return;
    await this.ensure(fe, devid);
  }

  /** Lists every disk directory under the base and reconciles each. */
  private async scan(): Promise<void> {
    const xs = this.o.host.xenstore;
    const fes = this.o.frontendDomid === undefined ? (await xs.tryRead(this.basePath)) === undefined ? [] : await xs.directory(this.basePath) : [''];
    for (const fe of fes) {
      const dir = fe === '' ? this.basePath : `${this.basePath}/${fe}`;
      const feDomid = this.o.frontendDomid ?? Number(fe);
      if (!isId(feDomid)) continue;
      const devids = (await xs.tryRead(dir)) === undefined ? [] : await xs.directory(dir).catch(() => [] as string[]);
      for (const d of devids) {
        const devid = Number(d);
        if (isId(devid)) await this.ensure(feDomid, devid);
      }
    }
  }

  private devicePath(fe: number, devid: number): string {
    return this.o.frontendDomid === undefined ? `${this.basePath}/${fe}/${devid}` : `${this.basePath}/${devid}`;
  }

  private async ensure(fe: number, devid: number): Promise<void> {
    if (this.o.devid !== undefined && devid !== this.o.devid) return;
    const key = `${fe}/${devid}`;
    const path = this.devicePath(fe, devid);
    const xs = this.o.host.xenstore;
    if (this.retired.has(key)) {
      if ((await xs.tryRead(path)) === undefined) {
        this.retired.delete(key);
        return;
      }
      // A toolstack re-created the disk in place (fresh state, online again): serve it anew.
      const online = (await xs.tryRead(`${path}/online`))?.trim() === '1';
      const state = parseXenbusState(await xs.tryRead(`${path}/state`));
      if (!online || (state !== XenbusState.Initialising && state !== XenbusState.Unknown)) return;
      this.retired.delete(key);
    }
    let dev = this.devs.get(key);
    if (dev === undefined) {
      if ((await xs.tryRead(path)) === undefined) return;
      dev = new VbdBackend({
        host: this.o.host,
        domainPath: this.domainPath,
        path,
        kind: this.kind,
        frontendDomid: fe,
        devid,
        openBacking: this.o.openBacking ?? ((r) => openBackend(r.params, { readonly: r.readonly })),
        hotplug: this.o.hotplug ?? true,
        limits: this.limits,
        restartGraceMs: this.o.restartGraceMs,
        log: this.log,
        onGone: (d) => this.onGone(key, d),
      });
      this.devs.set(key, dev);
    }
    void dev.backendChanged().finally(() => { for (const w of [...this.changeWaiters]) w(); });
  }

  private onGone(key: string, d: VbdBackend): void {
    if (this.devs.get(key) === d) this.devs.delete(key);
    if (!this.stopped) {
      this.retired.add(key);
      // If the directory is already gone, the next event or scan clears the mark.
      this.enqueue(async () => {
        if ((await this.o.host.xenstore.tryRead(d.path)) === undefined) this.retired.delete(key);
      });
    }
  }
}

function isId(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n < 0x7fffffff;
}
