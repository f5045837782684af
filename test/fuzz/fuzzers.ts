// Every fuzzer `npm run fuzz` knows, in the order it runs them. To add one, write a module
// exporting a `Fuzzer` (test/fuzz/fuzzer.ts) and list it here; give it a short run in
// test/integration/fuzz-<name>.test.ts.
//
// Issue 8: blkback (test/fuzz/blkback/: a malicious frontend against the ring service in
// process; one iteration is one published ring), blkback-sim (the same frontend against
// `xenblk serve` in its own process on the simulator), blkfront (test/fuzz/blkfront/: a
// malicious backend against Blkfront; one iteration is one attach/I/O/disconnect session),
// xenstored (test/fuzz/xenstored/). Killing either end mid-I/O is not a fuzzer: see
// test/integration/kill-*.test.ts.
import type { Fuzzer } from './fuzzer.ts';
import { xenstoredFuzzer } from './xenstored/xenstored-fuzzer.ts';
import { blkbackFuzzer } from './blkback/blkback-fuzzer.ts';
import { blkbackSimFuzzer } from './blkback/blkback-sim-fuzzer.ts';
import { blkfrontFuzzer } from './blkfront/blkfront-fuzzer.ts';

/** `FUZZERS` are the fuzz targets, by name. */
export const FUZZERS: readonly Fuzzer[] = [xenstoredFuzzer, blkbackFuzzer, blkbackSimFuzzer, blkfrontFuzzer];
