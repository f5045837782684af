// A clock read at most once per turn of the event loop, for per-request latency statistics.
// blkback stamps every request it consumes and every one it completes; reading the clock for each
// costs a system call where the vDSO cannot serve clock_gettime, as in a Xen PV dom0 whose TSC
// Xen does not mark stable (Linux's xen clocksource then offers no vDSO mode), and there each
// call traps through the hypervisor: a CPU profile of `xenblk serve` in the real-Xen benchmark
// put ~5% of its time in performance.now(). All requests consumed in one pass over the ring, or completed in
// one batch of AIO completions, happened within that synchronous stretch of JavaScript, so they
// share one reading: the error is bounded by the length of that stretch.

let cached = -1;
/** Through a settled promise rather than queueMicrotask, which wraps each callback in an AsyncResource. */
const SETTLED = Promise.resolve();
const forget = (): void => {
  cached = -1;
};

/** `turnNow()` is performance.now() as first read in the current synchronous turn (microtasks end a turn). */
export function turnNow(): number {
  if (cached < 0) {
    cached = performance.now();
    void SETTLED.then(forget);
  }
  return cached;
}
