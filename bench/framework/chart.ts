// An SVG bar chart of the ratios (value / limit), written without dependencies: one bar per
// figure that has a limit, a whisker for the spread of the per-repetition ratios, the goal as
// a tick on the bar's row, and a line at 1.0 (parity with the limit). Green: goal met; red:
// missed; grey: no goal.
import type { FigureResult } from './figure.ts';

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** `ratioChart(results, title)` is an SVG document charting the ratios of `results`. */
export function ratioChart(results: readonly FigureResult[], title: string): string {
  const rows = results.filter((r) => r.ratio !== null);
  const rowH = 22;
  const labelW = 280;
  const plotW = 520;
  const rightW = 250;
  const top = 48;
  const width = labelW + plotW + rightW;
  const height = top + rows.length * rowH + 40;
  let max = 1.2;
  for (const r of rows) {
    max = Math.max(max, r.ratio! * 1.05, (r.spread.ratio?.max ?? 0) * 1.05);
    const g = /([0-9.]+)$/.exec(r.goal ?? '');
    if (g !== null) max = Math.max(max, Number(g[1]) * 1.1);
  }
  max = Math.ceil(max * 5) / 5;
  const x = (v: number): number => labelW + (Math.min(v, max) / max) * plotW;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="12">`);
  out.push(`<rect width="${width}" height="${height}" fill="white"/>`);
  out.push(`<text x="10" y="20" font-size="14" font-weight="bold">${esc(title)}</text>`);
  out.push(`<text x="10" y="38" fill="#555">ratio = value / limit (median of repetitions); whisker: min-max of per-repetition ratios; black tick: goal</text>`);
  // Grid.
  for (let v = 0; v <= max + 1e-9; v += max > 3 ? 1 : 0.2) {
    const gx = x(v);
    out.push(`<line x1="${gx}" y1="${top - 4}" x2="${gx}" y2="${top + rows.length * rowH}" stroke="${Math.abs(v - 1) < 1e-9 ? '#333' : '#ddd'}" stroke-width="${Math.abs(v - 1) < 1e-9 ? 1.5 : 1}"/>`);
    out.push(`<text x="${gx}" y="${top + rows.length * rowH + 16}" text-anchor="middle" fill="#555">${v.toFixed(1)}</text>`);
  }
  rows.forEach((r, i) => {
    const y = top + i * rowH;
    const color = r.pass === null ? '#9e9e9e' : r.pass ? '#2e7d32' : '#c62828';
    out.push(`<text x="${labelW - 8}" y="${y + 15}" text-anchor="end">${esc(r.name)}</text>`);
    out.push(`<rect x="${labelW}" y="${y + 4}" width="${Math.max(1, x(r.ratio!) - labelW)}" height="${rowH - 8}" fill="${color}" opacity="0.85"/>`);
    if (r.spread.ratio !== null) {
      const y0 = y + rowH / 2;
      out.push(`<line x1="${x(r.spread.ratio.min)}" y1="${y0}" x2="${x(r.spread.ratio.max)}" y2="${y0}" stroke="black" stroke-width="1"/>`);
      for (const v of [r.spread.ratio.min, r.spread.ratio.max]) out.push(`<line x1="${x(v)}" y1="${y0 - 4}" x2="${x(v)}" y2="${y0 + 4}" stroke="black"/>`);
    }
    const g = /([0-9.]+)$/.exec(r.goal ?? '');
    if (g !== null) {
      const gx = x(Number(g[1]));
      out.push(`<line x1="${gx}" y1="${y + 1}" x2="${gx}" y2="${y + rowH - 1}" stroke="black" stroke-width="2.5"/>`);
    }
    const verdict = r.pass === null ? '' : r.pass ? ' pass' : ' MISS';
    out.push(`<text x="${labelW + plotW + 8}" y="${y + 15}">${r.ratio!.toFixed(2)}x${esc(r.goal !== null ? ` (goal ${r.goal})` : '')}${verdict}</text>`);
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
