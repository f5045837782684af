// Every fuzzer `npm run fuzz` knows, in the order it runs them. To add one, write a module
// exporting a `Fuzzer` (test/fuzz/fuzzer.ts) and list it here; give it a short run in
// test/integration/fuzz-<name>.test.ts.
//
// Planned (issue 8), waiting for the endpoints and the simulator:
// - blkback: a malicious frontend owning the ring and grant table (bad ops, nr_segments 0/12/
//   65535, indirect pages at garbage or the ring, sectors past the end, first_sect > last_sect,
//   refs not granted / granted elsewhere / read-only, req_prod jumps, rewrites during
//   processing, event storms); oracles: no crash or hang, good requests still answered, no
//   access to ungranted pages (the simulator checks), response padding zero, bounded memory.
// - blkfront: a malicious backend (unknown/duplicate ids, wrong ops, rsp_prod jumps, garbage
//   xenstore states and features, silence); oracles: errors reported, AbortSignal timeouts,
//   never another request's data.
// - kill: kill -9 either end mid-I/O; the verifier checks acknowledged writes survive.
import type { Fuzzer } from './fuzzer.ts';
import { xenstoredFuzzer } from './xenstored/xenstored-fuzzer.ts';

/** `FUZZERS` are the fuzz targets, by name. */
export const FUZZERS: readonly Fuzzer[] = [xenstoredFuzzer];
