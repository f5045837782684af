// Per-disk statistics, named as Linux xen-blkback's sysfs `statistics/` group (oo_req, rd_req,
// wr_req, f_req, ds_req, rd_sect, wr_sect) plus errors, merges, requests in flight and a latency
// histogram. Counters are plain numbers updated on the hot path without allocation; one
// VbdStats is shared by every ring (queue) of a disk, as Linux sums its per-ring counters.

/** Histogram buckets: bucket i counts latencies in [2^i, 2^(i+1)) microseconds (bucket 0 also < 1 us). */
export const LATENCY_BUCKETS = 32;

/** A plain, JSON-serialisable copy of a disk's statistics. */
export interface VbdStatsSnapshot {
  /** Requests that found no free request slot and had to wait (Linux st_oo_req). */
  readonly oo_req: number;
  readonly rd_req: number;
  readonly wr_req: number;
  /** Flush and barrier requests (Linux st_f_req). */
  readonly f_req: number;
  /** Discard requests (Linux st_ds_req). */
  readonly ds_req: number;
  /** 512-byte sectors read / written. */
  readonly rd_sect: number;
  readonly wr_sect: number;
  /** Requests answered with BLKIF_RSP_ERROR or BLKIF_RSP_EOPNOTSUPP. */
  readonly errors: number;
  /** Reads and writes served by the backing call of an adjacent request (as /proc/diskstats counts merges). */
  readonly merged_req: number;
  /**
   * I/O vector entries the reads and writes handed to the backing (pieces adjacent in memory are
   * one: a request over one persistent run is one, and so are adjacent requests merged into one
   * backing call over it); per request, how scattered the data was.
   */
  readonly io_vectors: number;
  readonly in_flight: number;
  /** Persistent grants mapped now (all rings; pages of the cached runs). */
  readonly persistent_grants: number;
  /** Persistent grants unmapped to make room for others (a frontend using more grants than the cache holds). */
  readonly pgrant_evictions: number;
  /**
   * Event-channel notifications taken from the frontend, and sent to it. Requests per event is
   * the batching the ring's event suppression achieved (ring.h req_event / rsp_event): each
   * event is a wake-up of the backend, each notification one of the frontend.
   */
  readonly events: number;
  readonly notifies: number;
  /** Latency histogram: `latency_us[i]` counts timed requests (one in LATENCY_SAMPLE) that took [2^i, 2^(i+1)) microseconds. */
  readonly latency_us: readonly number[];
  /** Approximate percentiles in microseconds (upper bound of the bucket). */
  readonly p50_us: number;
  readonly p99_us: number;
}

/** Live counters of one virtual disk. */
export class VbdStats {
  ooReq = 0;
  rdReq = 0;
  wrReq = 0;
  fReq = 0;
  dsReq = 0;
  rdSect = 0;
  wrSect = 0;
  errors = 0;
  merged = 0;
  ioVectors = 0;
  inFlight = 0;
  persistentGrants = 0;
  pgrantEvictions = 0;
  events = 0;
  notifies = 0;
  readonly latency = new Float64Array(LATENCY_BUCKETS);

  /** `recordLatency(ms)` adds one completed request that took `ms` milliseconds. */
  recordLatency(ms: number): void {
    const us = ms * 1000;
    let b = us < 1 ? 0 : Math.floor(Math.log2(us));
    if (b >= LATENCY_BUCKETS) b = LATENCY_BUCKETS - 1;
    this.latency[b]!++;
  }

  /** `snapshot()` is a plain copy of the counters. */
  snapshot(): VbdStatsSnapshot {
    const hist = Array.from(this.latency);
    return {
      oo_req: this.ooReq,
      rd_req: this.rdReq,
      wr_req: this.wrReq,
      f_req: this.fReq,
      ds_req: this.dsReq,
      rd_sect: this.rdSect,
      wr_sect: this.wrSect,
      errors: this.errors,
      merged_req: this.merged,
      io_vectors: this.ioVectors,
      in_flight: this.inFlight,
      persistent_grants: this.persistentGrants,
      pgrant_evictions: this.pgrantEvictions,
      events: this.events,
      notifies: this.notifies,
      latency_us: hist,
      p50_us: percentile(hist, 0.5),
      p99_us: percentile(hist, 0.99),
    };
  }
}

/** `percentile(hist, q)` is the upper bound in microseconds of the bucket holding quantile `q`, 0 when empty. */
export function percentile(hist: readonly number[], q: number): number {
  let total = 0;
  for (const c of hist) total += c;
  if (total === 0) return 0;
  const rank = Math.ceil(q * total);
  let seen = 0;
  for (let i = 0; i < hist.length; i++) {
    seen += hist[i]!;
    if (seen >= rank) return 2 ** (i + 1);
  }
  return 2 ** hist.length;
}
