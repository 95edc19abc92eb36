/**
 * A small SVG line chart for memory figures: x values as evenly spaced categories (1, 5, 20, 50
 * devices), y in MiB on a log2 scale, a legend on the right, reference lines, and a tooltip per
 * point. No dependencies, so a result can be redrawn anywhere.
 */

/** One line of the chart. */
export interface Series {
  label: string;
  /** Any SVG colour. */
  color: string;
  /** Dashed stroke (used for the old approach). */
  dashed?: boolean;
  /** Points; y in MiB. `note` is added to the point's tooltip. */
  points: { x: number; y: number; note?: string }[];
}

/** A horizontal reference line, y in MiB. */
export interface RefLine {
  y: number;
  label: string;
  color: string;
}

/** What to draw. */
export interface LineChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  refs?: RefLine[];
}

const WIDTH = 760;
const HEIGHT = 460;
const PLOT = { left: 96, right: 530, top: 48, bottom: 404 };

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const fix = (n: number) => n.toFixed(1);

/** A power of two of MiB as a tick label: "64 MiB", "1 GiB". */
function mibLabel(mib: number): string {
  return mib >= 1024 ? `${mib / 1024} GiB` : `${mib} MiB`;
}

/** Renders the chart as a standalone SVG document. */
export function lineChart(opts: LineChartOptions): string {
  const refs = opts.refs ?? [];
  const ys = [...opts.series.flatMap((s) => s.points.map((p) => p.y)), ...refs.map((r) => r.y)].filter((y) => y > 0);
  const lo = 2 ** Math.floor(Math.log2(ys.length ? Math.min(...ys) : 64));
  let hi = 2 ** Math.ceil(Math.log2(ys.length ? Math.max(...ys) : 1024));
  if (hi <= lo) hi = lo * 2;
  const xs = [...new Set(opts.series.flatMap((s) => s.points.map((p) => p.x)))].sort((a, b) => a - b);
  const plotW = PLOT.right - PLOT.left;
  const plotH = PLOT.bottom - PLOT.top;
  const xAt = (x: number) => {
    const i = xs.indexOf(x);
    return xs.length > 1 ? PLOT.left + (i / (xs.length - 1)) * plotW : PLOT.left + plotW / 2;
  };
  const yAt = (y: number) =>
    PLOT.bottom - ((Math.log2(Math.max(y, lo)) - Math.log2(lo)) / (Math.log2(hi) - Math.log2(lo))) * plotH;
  // The unit of x in tooltips is the first word of its axis label ("devices installing at once" → devices).
  const xUnit = opts.xLabel.split(' ')[0] ?? '';

  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}" font-family="sans-serif" font-size="12">`,
    `<rect width="${WIDTH}" height="${HEIGHT}" fill="white"/>`,
    `<text x="${PLOT.left}" y="24" font-size="15" font-weight="bold">${esc(opts.title)}</text>`,
  ];
  for (let v = lo; v <= hi; v *= 2) {
    const y = fix(yAt(v));
    out.push(
      `<line x1="${PLOT.left}" x2="${PLOT.right}" y1="${y}" y2="${y}" stroke="#e4e4e4"/>`,
      `<text x="${PLOT.left - 6}" y="${y}" text-anchor="end" dominant-baseline="middle" fill="#444">${mibLabel(v)}</text>`,
    );
  }
  for (const x of xs) {
    const px = xAt(x);
    out.push(
      `<line x1="${px}" x2="${px}" y1="${PLOT.top}" y2="${PLOT.bottom}" stroke="#eee"/>`,
      `<text x="${px}" y="${PLOT.bottom + 18}" text-anchor="middle" fill="#444">${x}</text>`,
    );
  }
  out.push(
    `<rect x="${PLOT.left}" y="${PLOT.top}" width="${plotW}" height="${plotH}" fill="none" stroke="#888"/>`,
    `<text x="${PLOT.left + plotW / 2}" y="${HEIGHT - 14}" text-anchor="middle">${esc(opts.xLabel)}</text>`,
    `<text transform="translate(16 ${PLOT.top + plotH / 2}) rotate(-90)" text-anchor="middle">${esc(opts.yLabel)}</text>`,
  );
  for (const r of refs) {
    const y = yAt(r.y);
    out.push(
      `<line x1="${PLOT.left}" x2="${PLOT.right}" y1="${fix(y)}" y2="${fix(y)}" stroke="${esc(r.color)}" stroke-dasharray="2 3" stroke-width="1.5"/>`,
      `<text x="${PLOT.right - 4}" y="${Math.round(y) - 5}" text-anchor="end" fill="${esc(r.color)}">${esc(r.label)}</text>`,
    );
  }
  opts.series.forEach((s, i) => {
    const color = esc(s.color);
    const dash = s.dashed ? ' stroke-dasharray="6 4"' : '';
    const pts = [...s.points].sort((a, b) => a.x - b.x);
    if (pts.length > 1) {
      const coords = pts.map((p) => `${fix(xAt(p.x))},${fix(yAt(p.y))}`).join(' ');
      out.push(`<polyline fill="none" stroke="${color}" stroke-width="2"${dash} points="${coords}"/>`);
    }
    for (const p of pts) {
      const tip = `${s.label}, ${p.x} ${xUnit}: ${Math.round(p.y)} MiB${p.note ? ` (${p.note})` : ''}`;
      out.push(
        `<circle cx="${fix(xAt(p.x))}" cy="${fix(yAt(p.y))}" r="3.5" fill="${color}"><title>${esc(tip)}</title></circle>`,
      );
    }
    const ly = PLOT.top + 10 + i * 20;
    out.push(
      `<line x1="${PLOT.right + 16}" x2="${PLOT.right + 44}" y1="${ly}" y2="${ly}" stroke="${color}" stroke-width="2"${dash}/>`,
      `<text x="${PLOT.right + 50}" y="${ly}" dominant-baseline="middle">${esc(s.label)}</text>`,
    );
  });
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}
