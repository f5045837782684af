// The xenbus side of blkback for one virtual disk: the backend directory a toolstack created
// (backend/vbd/<frontend-domid>/<devid>) and the frontend's state, driven as Linux
// xen-blkback xenbus.c does:
//
//   probe:   read params/mode/type/device-type, open the backing, write hotplug-status when we
//            act as the hotplug script, advertise features, switch to InitWait.
//   frontend Initialised/Connected -> connect_ring (protocol, feature-persistent,
//            multi-queue-num-queues, ring-page-order, ring-ref*/event-channel per queue), map
//            and bind, then ONE transaction with the features, sectors, info, sector-size,
//            physical-sector-size and state=Connected.
//   frontend Closing -> Closing;  Closed -> disconnect, Closed, and the device goes away if
//            the toolstack set online=0;  Initialising after Closed -> InitWait (reconnect).
//   resize:  sectors and state rewritten in one transaction while Connected, so a frontend
//            sees Connected -> Connected and rereads the size (xen_vbd_resize).
//
// Decisions where Linux is silent or does not apply to a userspace backend:
// - No `physical-device` from a hotplug script: the backing is opened from `params` directly
//   (a `format:` prefix such as libxl's `aio:` or `raw:` is accepted; `ram:<bytes>` is a RAM
//   disk). Keys a toolstack writes that are missing mean "not created yet": we wait for the
//   next change instead of failing.
// - `protocol` absent: x86_32, as Linux blkback on x86 (BLKIF_PROTOCOL_DEFAULT); QEMU assumes
//   native instead, so frontends should always write it.
// - `sectors` is in 512-byte units whatever `sector-size` is, as Linux blkback writes it
//   (vbd_sz) and Linux blkfront reads it; request sector numbers are 512-byte units too.
// - Features are written at probe (before InitWait, so a frontend can read them while it sets
//   up its rings) and again in the Connected transaction, where Linux writes the flush,
//   barrier, discard and persistent ones.
// - A frontend that goes back to Initialising while we are Connected has restarted (a new
//   frontend process on the simulator): we drop the old rings and go to InitWait. A frontend
//   that closes while we are still InitWait leaves us in InitWait, ready for it to come back.
// - A backend that starts and finds its own `state` already past Initialising is a restart of
//   a backend that died: it first writes Closed (what the dead one would have written), gives
//   the frontend a moment (bounded) to leave Connected, then goes to InitWait. It never serves
//   the rings the frontend published for the dead backend: responses go out in completion
//   order, so rsp_prod does not say which requests were answered. It waits for the frontend to
//   reset (any state but Initialised/Connected) and publish fresh rings, then the frontend
//   re-issues what was never answered (Linux blkif_recover).
// - The toolstack's hot-unplug (online=0 and state=Closing written to our directory, as libxl
//   does) is honoured at once if the frontend is not using the rings, else when it closes.
import type { Host } from '../host/host.ts';
import type { XenstoreOps, XenstoreWatch } from '../../xenstore/xenstore.ts';
import { XenbusState, parseXenbusState, xenbusStateName } from '../../protocol/xenbus-state.ts';
import type { BlkifAbi } from '../../protocol/blkif.ts';
import { BLKIF_MAX_INDIRECT_SEGMENTS, BLKIF_SECTOR_SIZE, VDISK_CDROM, VDISK_READONLY, VDISK_REMOVABLE } from '../../protocol/blkif.ts';
import type { BlockBackend } from '../backends/block-backend.ts';
import { RingService } from './ring-service.ts';
import type { RingServiceError, VbdGeometry } from './ring-service.ts';
import { VbdStats } from './stats.ts';
import type { MappedGrants } from '../../gnttab/gnttab.ts';
import type { EventChannel } from '../../evtchn/evtchn.ts';

/** xenbus.h XENBUS_MAX_RING_GRANT_ORDER: rings of up to 16 pages. */
export const MAX_RING_PAGE_ORDER = 4;

/** What a toolstack wrote for the disk, handed to the backing opener. */
export interface BackingRequest {
  /** `params` as written (e.g. `/srv/disk.img`, `aio:/srv/disk.img`, `ram:67108864`). */
  readonly params: string;
  /** `type` (`phy`, `file`, `qdisk`, ...) or undefined. */
  readonly type: string | undefined;
  readonly readonly: boolean;
  readonly deviceType: string;
}

/** Opens the backing for a disk; the default understands files, block devices and `ram:`. */
export type BackingOpener = (req: BackingRequest) => Promise<BlockBackend>;

/** Tunables shared by every disk a backend serves (Linux module parameters). */
export interface BlkbackLimits {
  /** max-ring-page-order advertised (Linux xen_blkif_max_ring_order; default 4). */
  readonly maxRingPageOrder: number;
  /** multi-queue-max-queues advertised (Linux xenblk_max_queues; default 4). */
  readonly maxQueues: number;
  /** feature-max-indirect-segments advertised (Linux MAX_INDIRECT_SEGMENTS = 256; up to 4096; 0 disables). */
  readonly maxIndirectSegments: number;
  /** Offer feature-persistent (default true; never with grantCopy). */
  readonly persistent: boolean;
  /**
   * Serve data by grant copy (GNTTABOP_copy through gntdev) instead of mapping the guest's pages
   * (default false). QEMU's qdisk does this; persistent grants are then not offered, so Linux
   * blkfront grants its request pages directly instead of copying through a persistent pool.
   */
  readonly grantCopy: boolean;
  /** Persistent grants per ring (Linux max_persistent_grants, 1056). */
  readonly maxPersistentGrants: number;
  /** Requests in flight per ring (default: the ring size). */
  readonly maxInFlight: number | undefined;
}

export const DEFAULT_LIMITS: BlkbackLimits = {
  maxRingPageOrder: MAX_RING_PAGE_ORDER,
  maxQueues: 4,
  maxIndirectSegments: 256,
  persistent: true,
  grantCopy: false,
  maxPersistentGrants: 1056,
  maxInFlight: undefined,
};

/** A typed failure of the xenbus handshake, naming the XenStore path and value involved. */
export class BlkbackError extends Error {
  override readonly name = 'BlkbackError';
  constructor(message: string, readonly code: string, readonly path: string, readonly value?: string) {
    super(message);
  }
}

export interface VbdBackendOptions {
  readonly host: Host;
  /** Absolute path of our domain (`/local/domain/<domid>`). */
  readonly domainPath: string;
  /** Absolute backend directory, e.g. `/local/domain/0/backend/vbd/7/51728`. */
  readonly path: string;
  /** Backend kind (`vbd`), the directory under `backend/`. */
  readonly kind: string;
  readonly frontendDomid: number;
  readonly devid: number;
  readonly openBacking: BackingOpener;
  /** Write hotplug-status=connected once the backing is open (act as the hotplug script). */
  readonly hotplug: boolean;
  readonly limits: BlkbackLimits;
  /** How long a restarted backend waits for the frontend to see Closed (default 2000 ms). */
  readonly restartGraceMs?: number;
  readonly log: (msg: string) => void;
  /** Called once when the device is finished (removed, or online=0 and closed). */
  readonly onGone: (dev: VbdBackend) => void;
}

/** A snapshot of one disk for `list` and `stats`. */
export interface VbdInfo {
  readonly frontendDomid: number;
  readonly devid: number;
  readonly path: string;
  readonly frontendPath: string | undefined;
  readonly params: string | undefined;
  readonly backing: string | undefined;
  readonly state: string;
  readonly sectors: number;
  readonly sectorSize: number;
  readonly readonly: boolean;
  readonly rings: number;
  readonly ringPageOrder: number;
  readonly abi: BlkifAbi | undefined;
  readonly persistent: boolean;
  /** Data is moved by grant copy, not through mappings of the guest's pages (limit grantCopy). */
  readonly grantCopy: boolean;
}

interface Ring {
  readonly service: RingService;
}

/** One virtual disk served to one frontend: its xenbus state machine and its rings. */
export class VbdBackend {
  readonly stats = new VbdStats();
  readonly frontendDomid: number;
  readonly devid: number;
  readonly path: string;
  private readonly o: VbdBackendOptions;
  private readonly xs: Host['xenstore'];
  private state: XenbusState = XenbusState.Unknown;
  private frontendPath: string | undefined;
  private params: string | undefined;
  private backing: BlockBackend | undefined;
  private vbd: VbdGeometry | undefined;
  private info = 0;
  private discardEnable = true;
  private rings: Ring[] = [];
  private abi: BlkifAbi | undefined;
  private ringPageOrder = 0;
  private persistentInUse = false;
  private frontendWatch: XenstoreWatch | undefined;
  private seenFrontend = false;
  private online = true;
  /** After a backend restart: ignore the frontend's old Initialised/Connected until it resets. */
  private awaitFrontendReset = false;
  private chain: Promise<void> = Promise.resolve();
  private gone = false;
  private probed = false;
  private probing = false;

  constructor(opts: VbdBackendOptions) {
    this.o = opts;
    this.xs = opts.host.xenstore;
    this.frontendDomid = opts.frontendDomid;
    this.devid = opts.devid;
    this.path = opts.path;
  }

  /** `xenbusState` is the state this backend last wrote. */
  get xenbusState(): XenbusState {
    return this.state;
  }

  /** `isGone` tells whether the device has finished and released everything. */
  get isGone(): boolean {
    return this.gone;
  }

  /** `describe()` is a snapshot for listing. */
  describe(): VbdInfo {
    return {
      frontendDomid: this.frontendDomid,
      devid: this.devid,
      path: this.path,
      frontendPath: this.frontendPath,
      params: this.params,
      backing: this.backing?.description,
      state: xenbusStateName(this.state),
      sectors: this.vbd?.sectors ?? 0,
      sectorSize: this.vbd?.sectorSize ?? 0,
      readonly: this.vbd?.readonly ?? false,
      rings: this.rings.length,
      ringPageOrder: this.ringPageOrder,
      abi: this.abi,
      persistent: this.persistentInUse,
      grantCopy: this.o.limits.grantCopy,
    };
  }

  /** `ringServices` are the rings connected now (tests inspect them). */
  get ringServices(): readonly RingService[] {
    return this.rings.map((r) => r.service);
  }

  /** `backendChanged()` reacts to a change under our backend directory (toolstack or our own writes). */
  backendChanged(): Promise<void> {
    return this.serialize(() => this.onBackendChanged());
  }

  /** `checkSize()` rereads the backing's size and, if it changed, publishes it (resize). */
  checkSize(): Promise<void> {
    return this.serialize(() => this.onCheckSize());
  }

  /**
   * `shutdown()` stops serving as a backend that is going away does (Linux xen_blkbk_remove):
   * the rings are drained and released, the state becomes Closed unless the directory is gone,
   * the backing is closed.
   */
  shutdown(): Promise<void> {
    return this.serialize(async () => {
      if (this.gone) return;
      await this.disconnect();
      if (await this.exists()) await this.switchState(XenbusState.Closed).catch(() => undefined);
      await this.finish();
    });
  }

  private serialize(f: () => Promise<void>): Promise<void> {
    const next = this.chain.then(async () => {
      if (this.gone) return;
      try {
        await f();
      } catch (e) {
        this.o.log(`${this.path}: ${e instanceof Error ? e.message : String(e)}`);
        await this.fatal(e).catch(() => undefined);
      }
    });
    this.chain = next;
    return next;
  }

  private async exists(): Promise<boolean> {
    return (await this.xs.tryRead(this.path)) !== undefined;
  }

  private async onBackendChanged(): Promise<void> {
    if (!(await this.exists())) {
      // The toolstack removed the device: release everything (xenbus device_unregister).
      await this.disconnect();
      await this.finish();
      return;
    }
    if (!this.probed) {
      if (!this.probing) await this.probe();
      return;
    }
    this.online = (await this.xs.tryRead(`${this.path}/online`))?.trim() === '1';
    const written = parseXenbusState(await this.xs.tryRead(`${this.path}/state`));
    if (written === XenbusState.Closing && this.state !== XenbusState.Closing && this.state !== XenbusState.Closed) {
      // libxl's hot-unplug writes our state to Closing: adopt it and let the frontend close.
      this.state = XenbusState.Closing;
      this.o.log(`${this.path}: toolstack asked to close (online=${this.online ? 1 : 0})`);
    }
    if (this.state === XenbusState.Closing) {
      const fe = await this.frontendState();
      if (fe !== XenbusState.Connected && fe !== XenbusState.Closing && fe !== XenbusState.Initialised) {
        // The frontend is not using the rings: finish the close now.
        await this.disconnect();
        await this.switchState(XenbusState.Closed);
        if (!this.online) await this.finish();
      }
    }
  }

  private async frontendState(): Promise<XenbusState> {
    if (this.frontendPath === undefined) return XenbusState.Unknown;
    return parseXenbusState(await this.xs.tryRead(`${this.frontendPath}/state`));
  }

  private async probe(): Promise<void> {
    this.probing = true;
    try {
      const p = this.path;
      const frontend = await this.xs.tryRead(`${p}/frontend`);
      const frontendId = await this.xs.tryRead(`${p}/frontend-id`);
      const params = await this.xs.tryRead(`${p}/params`);
      const mode = await this.xs.tryRead(`${p}/mode`);
      if (frontend === undefined || frontendId === undefined || params === undefined || mode === undefined) return; // not created yet
      if (frontendId.trim() !== String(this.frontendDomid)) {
        throw new BlkbackError(`${p}/frontend-id is ${JSON.stringify(frontendId)}, but the directory is for domain ${this.frontendDomid}`, 'EINVAL', `${p}/frontend-id`, frontendId);
      }
      if (!frontend.startsWith('/')) throw new BlkbackError(`${p}/frontend ${JSON.stringify(frontend)} is not an absolute path`, 'EINVAL', `${p}/frontend`, frontend);
      this.frontendPath = frontend;
      this.params = params;
      this.probed = true;
      this.online = (await this.xs.tryRead(`${p}/online`))?.trim() === '1';
      const type = await this.xs.tryRead(`${p}/type`);
      const deviceType = (await this.xs.tryRead(`${p}/device-type`)) ?? (await this.xs.tryRead(`${frontend}/device-type`)) ?? 'disk';
      const removable = (await this.xs.tryRead(`${p}/removable`))?.trim() === '1';
      this.discardEnable = (await this.xs.tryRead(`${p}/discard-enable`))?.trim() !== '0';
      const readonly = !mode.includes('w');
      const cdrom = deviceType.trim() === 'cdrom';

      const previous = parseXenbusState(await this.xs.tryRead(`${p}/state`));
      const restarted = previous !== XenbusState.Unknown && previous !== XenbusState.Initialising;
      if (restarted) {
        // A backend died here: say Closed for it so the frontend drops the old rings.
        this.o.log(`${p}: found state ${xenbusStateName(previous)} from a previous backend: announcing Closed`);
        await this.switchState(XenbusState.Closed);
      }

      let backing: BlockBackend;
      try {
        backing = await this.o.openBacking({ params, type, readonly: readonly || cdrom, deviceType });
      } catch (e) {
        const msg = e instanceof Error ? e.message : String(e);
        if (this.o.hotplug) {
          await this.xs.write(`${p}/hotplug-error`, msg).catch(() => undefined);
          await this.xs.write(`${p}/hotplug-status`, 'error').catch(() => undefined);
        }
        throw new BlkbackError(`opening ${JSON.stringify(params)}: ${msg}`, 'ENOENT', `${p}/params`, params);
      }
      this.backing = backing;
      const bytes = await backing.size();
      const ro = readonly || cdrom || backing.readonly;
      this.vbd = {
        sectors: Math.floor(bytes / BLKIF_SECTOR_SIZE),
        sectorSize: backing.sectorSize,
        readonly: ro,
        flush: backing.capabilities.flush,
        discard: backing.capabilities.discard && this.discardEnable && !ro,
        discardSecure: backing.capabilities.discardSecure,
      };
      this.info = (cdrom ? VDISK_CDROM : 0) | (removable ? VDISK_REMOVABLE : 0) | (ro ? VDISK_READONLY : 0);
      if (this.o.hotplug) await this.xs.write(`${p}/hotplug-status`, 'connected');
      await this.writeFeatures(this.xs);
      if (restarted) {
        this.awaitFrontendReset = true;
        await this.waitForFrontendToLeave();
      }
      await this.switchState(XenbusState.InitWait);
      this.o.log(`${p}: serving ${backing.description} (${this.vbd.sectors} sectors${ro ? ', read-only' : ''}) to domain ${this.frontendDomid}: InitWait`);
      this.watchFrontend();
    } finally {
      this.probing = false;
    }
  }

  /** After announcing Closed, waits (bounded) until the frontend is no longer using old rings. */
  private async waitForFrontendToLeave(): Promise<void> {
    const deadline = Date.now() + (this.o.restartGraceMs ?? 2000);
    while (Date.now() < deadline) {
      const fe = await this.frontendState();
      if (fe !== XenbusState.Connected && fe !== XenbusState.Initialised) {
        this.awaitFrontendReset = false;
        return;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  private watchFrontend(): void {
    if (this.frontendPath === undefined || this.frontendWatch !== undefined) return;
    const w = this.xs.watch(`${this.frontendPath}/state`);
    this.frontendWatch = w;
    void (async () => {
      try {
        for await (const _ev of w) {
          if (this.gone) break;
          void this.serialize(() => this.onFrontendChanged());
        }
      } catch (e) {
        if (!this.gone) this.o.log(`${this.path}: frontend watch ended: ${e instanceof Error ? e.message : String(e)}`);
      }
    })();
  }

  private async onFrontendChanged(): Promise<void> {
    const fe = await this.frontendState();
    if (fe !== XenbusState.Unknown) this.seenFrontend = true;
    if (fe !== XenbusState.Connected && fe !== XenbusState.Initialised) this.awaitFrontendReset = false;
    switch (fe) {
      case XenbusState.Initialising:
        if (this.state === XenbusState.Closed || this.state === XenbusState.Connected) {
          if (this.state === XenbusState.Connected) this.o.log(`${this.path}: frontend restarted: dropping the old rings`);
          await this.disconnect();
          if (this.online) await this.switchState(XenbusState.InitWait);
        }
        return;
      case XenbusState.Initialised:
      case XenbusState.Connected:
        // Two watch events in quick succession may skip Initialised: connect on either. After a
        // backend restart, rings the frontend published for the dead backend are not reused:
        // their responses were published in completion order, so no index says which requests
        // were answered; the frontend must set up fresh rings and re-issue (blkif_recover).
        if (this.state === XenbusState.Connected || this.state === XenbusState.Closing || !this.online) return;
        if (this.awaitFrontendReset) return;
        await this.disconnect();
        await this.connectRings();
        await this.connect();
        return;
      case XenbusState.Closing:
        if (this.state !== XenbusState.Closed) await this.switchState(XenbusState.Closing);
        return;
      case XenbusState.Closed:
        await this.disconnect();
        if (this.state === XenbusState.InitWait && this.online) return;
        await this.switchState(XenbusState.Closed);
        if (!this.online) await this.finish();
        return;
      case XenbusState.Unknown:
        if (!this.seenFrontend) return; // not created yet
        // The frontend's directory went away (Linux: device_unregister).
        await this.disconnect();
        if (await this.exists()) await this.switchState(XenbusState.Closed);
        await this.finish();
        return;
      default:
        throw new BlkbackError(`${this.frontendPath}/state: saw state ${xenbusStateName(fe)} at the frontend`, 'EINVAL', `${this.frontendPath}/state`, String(fe));
    }
  }

  private async writeFeatures(tx: XenstoreOps): Promise<void> {
    const p = this.path;
    const l = this.o.limits;
    const backing = this.backing!;
    const vbd = this.vbd!;
    if (l.maxIndirectSegments > 0) await tx.write(`${p}/feature-max-indirect-segments`, String(Math.min(l.maxIndirectSegments, BLKIF_MAX_INDIRECT_SEGMENTS)));
    await tx.write(`${p}/multi-queue-max-queues`, String(l.maxQueues));
    await tx.write(`${p}/max-ring-page-order`, String(l.maxRingPageOrder));
    await tx.write(`${p}/feature-flush-cache`, vbd.flush ? '1' : '0');
    await tx.write(`${p}/feature-barrier`, vbd.flush ? '1' : '0');
    if (this.discardEnable) {
      if (vbd.discard) {
        await tx.write(`${p}/discard-granularity`, String(backing.capabilities.discardGranularity));
        await tx.write(`${p}/discard-alignment`, String(backing.capabilities.discardAlignment));
        await tx.write(`${p}/discard-secure`, vbd.discardSecure ? '1' : '0');
      }
      await tx.write(`${p}/feature-discard`, vbd.discard ? '1' : '0');
    }
    await tx.write(`${p}/feature-persistent`, l.persistent && !l.grantCopy ? '1' : '0');
  }

  /** Reads the frontend's ring parameters, maps the rings and binds the channels (connect_ring). */
  private async connectRings(): Promise<void> {
    const fe = this.frontendPath!;
    const l = this.o.limits;
    const protocol = await this.xs.tryRead(`${fe}/protocol`);
    let abi: BlkifAbi;
    if (protocol === undefined || protocol === '') abi = 'x86_32';
    else if (protocol === 'x86_64-abi') abi = 'x86_64';
    else if (protocol === 'x86_32-abi') abi = 'x86_32';
    else throw new BlkbackError(`${fe}/protocol: unknown frontend protocol ${JSON.stringify(protocol)}`, 'ENOSYS', `${fe}/protocol`, protocol);
    const persistent = l.persistent && !l.grantCopy && (await this.readUnsigned(fe, 'feature-persistent', 0)) !== 0;
    const queues = await this.readUnsigned(fe, 'multi-queue-num-queues', 1);
    if (queues < 1 || queues > l.maxQueues) {
      throw new BlkbackError(`${fe}/multi-queue-num-queues: guest requested ${queues} queues, the maximum is ${l.maxQueues}`, 'ENOSYS', `${fe}/multi-queue-num-queues`, String(queues));
    }
    const order = await this.readUnsigned(fe, 'ring-page-order', 0);
    if (order > l.maxRingPageOrder) {
      throw new BlkbackError(`${fe}/ring-page-order: requested ring page order ${order} exceeds the maximum ${l.maxRingPageOrder}`, 'EINVAL', `${fe}/ring-page-order`, String(order));
    }
    const nrPages = 1 << order;
    const specs: { refs: number[]; port: number }[] = [];
    for (let q = 0; q < queues; q++) {
      const dir = queues === 1 ? fe : `${fe}/queue-${q}`;
      const port = await this.readUnsigned(dir, 'event-channel', undefined);
      const refs: number[] = [];
      for (let i = 0; i < nrPages; i++) {
        const v = await this.xs.tryRead(`${dir}/ring-ref${i}`);
        if (v === undefined && nrPages === 1) {
          refs.push(await this.readUnsigned(dir, 'ring-ref', undefined));
          break;
        }
        if (v === undefined) throw new BlkbackError(`${dir}/ring-ref${i}: missing`, 'EINVAL', `${dir}/ring-ref${i}`);
        refs.push(parseUnsignedKey(`${dir}/ring-ref${i}`, v, 0xffffffff));
      }
      specs.push({ refs, port });
    }

    const { mapper, evtchn } = this.o.host;
    const rings: Ring[] = [];
    try {
      for (const [q, spec] of specs.entries()) {
        let mapping: MappedGrants | undefined;
        let channel: EventChannel | undefined;
        try {
          mapping = mapper.map(this.frontendDomid, spec.refs, true);
          channel = evtchn.bindInterdomain(this.frontendDomid, spec.port);
          const service = new RingService({
            abi, ring: mapping, channel, mapper, frontendDomid: this.frontendDomid, backing: this.backing!, vbd: this.vbd!,
            stats: this.stats, persistent, maxPersistentGrants: l.maxPersistentGrants, grantCopy: l.grantCopy,
            maxIndirectSegments: Math.min(l.maxIndirectSegments, BLKIF_MAX_INDIRECT_SEGMENTS), maxInFlight: l.maxInFlight,
            onHalt: (err: RingServiceError) => this.o.log(`${this.path}: queue ${q}: ${err.message}`),
          });
          rings.push({ service });
        } catch (e) {
          if (channel !== undefined) try { channel.close(); } catch { /* already unbound */ }
          if (mapping !== undefined) try { mapper.unmap(mapping); } catch { /* already gone */ }
          const what = mapping === undefined ? `mapping ring-ref ${spec.refs.join(',')}` : `binding event-channel ${spec.port}`;
          throw new BlkbackError(`queue ${q}: ${what}: ${e instanceof Error ? e.message : String(e)}`, 'EINVAL', queues === 1 ? fe : `${fe}/queue-${q}`);
        }
      }
    } catch (e) {
      for (const r of rings) await r.service.close();
      throw e;
    }
    this.rings = rings;
    this.abi = abi;
    this.ringPageOrder = order;
    this.persistentInUse = persistent;
    this.o.log(`${this.path}: ${queues} queue(s) of ${nrPages} page(s), protocol ${abi}${protocol === undefined ? ' (unspecified, assuming x86_32 as Linux)' : ''}${persistent ? ', persistent grants' : ''}${l.grantCopy ? ', grant copy' : ''}`);
  }

  /** Publishes the disk and Connected in one transaction (connect), then starts the rings. */
  private async connect(): Promise<void> {
    const p = this.path;
    const vbd = this.vbd!;
    const backing = this.backing!;
    await this.xs.transaction(async (tx) => {
      await this.writeFeatures(tx);
      await tx.write(`${p}/sectors`, String(vbd.sectors));
      await tx.write(`${p}/info`, String(this.info));
      await tx.write(`${p}/sector-size`, String(backing.sectorSize));
      await tx.write(`${p}/physical-sector-size`, String(backing.physicalSectorSize));
      await tx.write(`${p}/state`, String(XenbusState.Connected));
    });
    this.state = XenbusState.Connected;
    for (const r of this.rings) r.service.start();
    this.o.log(`${p}: Connected`);
  }

  private async onCheckSize(): Promise<void> {
    if (this.backing === undefined || this.vbd === undefined) return;
    const sectors = Math.floor((await this.backing.size()) / BLKIF_SECTOR_SIZE);
    if (sectors === this.vbd.sectors) return;
    this.o.log(`${this.path}: resize ${this.vbd.sectors} -> ${sectors} sectors`);
    this.vbd.sectors = sectors;
    if (this.state !== XenbusState.Connected) return;
    // xen_vbd_resize: sectors and the current state together, so the frontend rereads the size.
    await this.xs.transaction(async (tx) => {
      await tx.write(`${this.path}/sectors`, String(sectors));
      await tx.write(`${this.path}/state`, String(this.state));
    });
  }

  private async readUnsigned(dir: string, key: string, dflt: number | undefined): Promise<number> {
    const v = await this.xs.tryRead(`${dir}/${key}`);
    if (v === undefined) {
      if (dflt === undefined) throw new BlkbackError(`${dir}/${key}: missing`, 'EINVAL', `${dir}/${key}`);
      return dflt;
    }
    return parseUnsignedKey(`${dir}/${key}`, v, 0xffffffff);
  }

  private async switchState(s: XenbusState): Promise<void> {
    if (this.state === s) return;
    await this.xs.write(`${this.path}/state`, String(s));
    this.state = s;
  }

  /** Drains and releases every ring (xen_blkif_disconnect); idempotent. */
  private async disconnect(): Promise<void> {
    const rings = this.rings;
    this.rings = [];
    for (const r of rings) await r.service.close();
    this.persistentInUse = false;
  }

  /** xenbus_dev_fatal: an error node under error/<backend path>, then Closing. */
  private async fatal(e: unknown): Promise<void> {
    const msg = e instanceof Error ? e.message : String(e);
    const code = e instanceof BlkbackError ? e.code : 'EIO';
    const rel = this.path.startsWith(`${this.o.domainPath}/`) ? this.path.slice(this.o.domainPath.length + 1) : this.path.replace(/^\//, '');
    await this.xs.write(`${this.o.domainPath}/error/${rel}/error`, `${code} ${msg}`).catch(() => undefined);
    await this.disconnect();
    if (await this.exists()) await this.switchState(XenbusState.Closing).catch(() => undefined);
  }

  private async finish(): Promise<void> {
    if (this.gone) return;
    this.gone = true;
    await this.disconnect();
    const w = this.frontendWatch;
    this.frontendWatch = undefined;
    await w?.close().catch(() => undefined);
    const b = this.backing;
    this.backing = undefined;
    await b?.close().catch(() => undefined);
    this.o.log(`${this.path}: released`);
    this.o.onGone(this);
  }
}

/** `parseUnsignedKey(path, text, max)` is a decimal unsigned (as xenbus_scanf "%u"), or a BlkbackError naming the key. */
export function parseUnsignedKey(path: string, text: string, max: number): number {
  const t = text.trim();
  if (!/^[0-9]{1,16}$/.test(t) || Number(t) > max) {
    throw new BlkbackError(`${path}: ${JSON.stringify(text)} is not an unsigned number up to ${max}`, 'EINVAL', path, text);
  }
  return Number(t);
}
