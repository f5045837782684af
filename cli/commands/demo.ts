// Placeholder until the owning layer lands; exits non-zero so nothing mistakes it for success.
export async function run(_argv: string[]): Promise<number> {
  process.stderr.write('xenblk demo: not available yet\n');
  return 2;
}
