// Placeholder until the owning layer lands; exits non-zero so nothing mistakes it for success.
export async function run(_argv: string[]): Promise<number> {
  process.stderr.write('xenblk attach: not available yet\n');
  return 2;
}
