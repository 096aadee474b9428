// A small SVG line chart: pinned tokens' probability through the layers.
import { h, s } from "./dom";
import { visibleToken } from "./tokens";

export const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

export interface Series {
  name: string;
  values: ArrayLike<number>;
}

export function lineChart(series: Series[], xTitle: string, yTitle: string, width = 420, height = 180): HTMLElement {
  const wrap = h("div", { class: "wb-chart", "data-testid": "wb-linechart" });
  const svg = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" }) as SVGSVGElement;
  const padL = 36;
  const padB = 34;
  const padT = 8;
  const padR = 8;
  const W = width - padL - padR;
  const H = height - padT - padB;
  const n = Math.max(1, ...series.map((x) => x.values.length));
  const X = (i: number) => padL + (n <= 1 ? 0 : (i / (n - 1)) * W);
  const Y = (v: number) => padT + H - Math.min(1, Math.max(0, v)) * H;
  const axis = s("g", { class: "wb-axis" });
  axis.append(s("line", { x1: padL, y1: padT + H, x2: padL + W, y2: padT + H }));
  axis.append(s("line", { x1: padL, y1: padT, x2: padL, y2: padT + H }));
  for (const v of [0, 0.5, 1]) axis.append(s("text", { x: padL - 4, y: Y(v) + 3, "text-anchor": "end" }, String(v)));
  const step = Math.max(1, Math.ceil(n / 10));
  for (let i = 0; i < n; i += step) axis.append(s("text", { x: X(i), y: padT + H + 14, "text-anchor": "middle" }, String(i)));
  axis.append(s("text", { x: padL + W / 2, y: padT + H + 28, "text-anchor": "middle", class: "wb-axis-title" }, xTitle));
  axis.append(s("text", { x: padL + 4, y: padT + 10, class: "wb-axis-title" }, yTitle));
  svg.append(axis);
  series.forEach((ser, k) => {
    const pts: string[] = [];
    for (let i = 0; i < ser.values.length; i++) {
      const v = ser.values[i];
      if (Number.isFinite(v)) pts.push(`${X(i).toFixed(1)},${Y(v).toFixed(1)}`);
    }
    svg.append(s("polyline", { points: pts.join(" "), fill: "none", stroke: PALETTE[k % PALETTE.length], "stroke-width": 2, "data-series": ser.name }));
  });
  wrap.append(svg);
  const legend = h("div", { class: "wb-legend" });
  series.forEach((ser, k) => {
    const sw = h("span", { class: "wb-swatch" });
    sw.style.background = PALETTE[k % PALETTE.length];
    legend.append(h("span", { class: "wb-legend-item" }, sw, visibleToken(ser.name)));
  });
  wrap.append(legend);
  return wrap;
}
