// A small line chart: pinned tokens' probability through the layers, live (SVG in the page) and as an export
// figure, both from one geometry.
import { h, s } from "./dom";
import { drawing, type Figure, type Item } from "./export";
import { visibleToken } from "./tokens";

export const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

export interface Series {
  name: string;
  values: ArrayLike<number>;
}

/** Axes, ticks, titles and one polyline per series (values 0..1), in a width x height box. */
function geometry(series: Series[], xTitle: string, yTitle: string, width: number, height: number): Item[] {
  const padL = 36;
  const padB = 34;
  const padT = 8;
  const padR = 8;
  const W = width - padL - padR;
  const H = height - padT - padB;
  const n = Math.max(1, ...series.map((x) => x.values.length));
  const X = (i: number) => padL + (n <= 1 ? 0 : (i / (n - 1)) * W);
  const Y = (v: number) => padT + H - Math.min(1, Math.max(0, v)) * H;
  const items: Item[] = [
    { t: "line", x1: padL, y1: padT + H, x2: padL + W, y2: padT + H },
    { t: "line", x1: padL, y1: padT, x2: padL, y2: padT + H },
  ];
  for (const v of [0, 0.5, 1]) items.push({ t: "text", x: padL - 4, y: Y(v) + 3, text: String(v), size: 10, anchor: "end" });
  const step = Math.max(1, Math.ceil(n / 10));
  for (let i = 0; i < n; i += step) items.push({ t: "text", x: X(i), y: padT + H + 14, text: String(i), size: 10, anchor: "middle" });
  items.push({ t: "text", x: padL + W / 2, y: padT + H + 28, text: xTitle, size: 10, anchor: "middle" });
  items.push({ t: "text", x: padL + 4, y: padT + 10, text: yTitle, size: 10 });
  series.forEach((ser, k) => {
    const pts: [number, number][] = [];
    for (let i = 0; i < ser.values.length; i++) {
      const v = ser.values[i];
      if (Number.isFinite(v)) pts.push([X(i), Y(v)]);
    }
    items.push({ t: "polyline", points: pts, color: PALETTE[k % PALETTE.length] });
  });
  return items;
}

export function lineChart(series: Series[], xTitle: string, yTitle: string, width = 420, height = 180): HTMLElement {
  const wrap = h("div", { class: "wb-chart", "data-testid": "wb-linechart" });
  const svg = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" }) as SVGSVGElement;
  const axis = s("g", { class: "wb-axis" });
  let k = 0;
  for (const it of geometry(series, xTitle, yTitle, width, height)) {
    if (it.t === "line") axis.append(s("line", { x1: it.x1, y1: it.y1, x2: it.x2, y2: it.y2 }));
    else if (it.t === "text") axis.append(s("text", { x: it.x, y: it.y, "text-anchor": it.anchor ?? "start" }, it.text));
    else if (it.t === "polyline") {
      const points = it.points.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
      svg.append(s("polyline", { points, fill: "none", stroke: it.color, "stroke-width": 2, "data-series": series[k++].name }));
    }
  }
  svg.prepend(axis);
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

/** The chart as an export figure: a heading, the chart, and its legend (series names as visible tokens). */
export function chartFigure(heading: string, series: Series[], xTitle: string, yTitle: string, width = 420, height = 180): Figure {
  const top = heading ? 20 : 0;
  const items: Item[] = heading ? [{ t: "text", x: 6, y: 14, text: heading, size: 12, bold: true }] : [];
  for (const it of geometry(series, xTitle, yTitle, width, height)) {
    if (it.t === "line") items.push({ ...it, y1: it.y1 + top, y2: it.y2 + top });
    else if (it.t === "text") items.push({ ...it, y: it.y + top });
    else if (it.t === "polyline") items.push({ ...it, points: it.points.map(([x, y]) => [x, y + top] as [number, number]) });
  }
  let x = 36;
  const ly = top + height + 6;
  series.forEach((ser, k) => {
    const name = visibleToken(ser.name);
    items.push({ t: "rect", x, y: ly - 8, w: 10, h: 10, fill: PALETTE[k % PALETTE.length] });
    items.push({ t: "text", x: x + 14, y: ly, text: name, size: 11 });
    x += 24 + 7 * name.length;
  });
  return drawing(Math.max(width, x), ly + 8, items);
}
