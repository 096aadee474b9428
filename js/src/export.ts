// Figures of a view for PNG/SVG export (any part of a view: heatmaps, charts, head views, text), downloads and
// the clipboard. A figure paints itself onto a canvas and builds itself as SVG from the same geometry.
import { css, type Theme } from "./colors";
import { s, SVG_NS } from "./dom";

/** One part of an exported image, drawn at the origin in CSS pixels. */
export interface Figure {
  width: number;
  height: number;
  paint(ctx: CanvasRenderingContext2D, theme: Theme): void;
  svg(theme: Theme): SVGElement;
}

/** The primitives of a drawn figure; colours default to the theme's text colour. */
export type Item =
  | { t: "text"; x: number; y: number; text: string; size?: number; anchor?: "start" | "middle" | "end"; bold?: boolean; color?: string }
  | { t: "line"; x1: number; y1: number; x2: number; y2: number; color?: string; width?: number }
  | { t: "rect"; x: number; y: number; w: number; h: number; fill: string }
  | { t: "polyline"; points: [number, number][]; color: string; width?: number };

const ALIGN = { start: "left", middle: "center", end: "right" } as const;

/** A figure from a list of items (text goes in as text: never markup). */
export function drawing(width: number, height: number, items: Item[]): Figure {
  return {
    width,
    height,
    paint(ctx, theme) {
      const fg = css(theme.fg);
      for (const it of items) {
        if (it.t === "text") {
          ctx.fillStyle = it.color ?? fg;
          ctx.font = `${it.bold ? "bold " : ""}${it.size ?? 11}px ${theme.font}`;
          ctx.textAlign = ALIGN[it.anchor ?? "start"];
          ctx.textBaseline = "alphabetic";
          ctx.fillText(it.text, it.x, it.y);
        } else if (it.t === "line") {
          ctx.strokeStyle = it.color ?? fg;
          ctx.lineWidth = it.width ?? 1;
          ctx.beginPath();
          ctx.moveTo(it.x1, it.y1);
          ctx.lineTo(it.x2, it.y2);
          ctx.stroke();
        } else if (it.t === "rect") {
          ctx.fillStyle = it.fill;
          ctx.fillRect(it.x, it.y, it.w, it.h);
        } else if (it.points.length) {
          ctx.strokeStyle = it.color;
          ctx.lineWidth = it.width ?? 2;
          ctx.beginPath();
          for (const [i, [x, y]] of it.points.entries()) {
            if (i) ctx.lineTo(x, y);
            else ctx.moveTo(x, y);
          }
          ctx.stroke();
        }
      }
    },
    svg(theme) {
      const fg = css(theme.fg);
      const g = s("g");
      for (const it of items) {
        if (it.t === "text") {
          g.append(s("text", { x: it.x, y: it.y, "font-size": it.size ?? 11, "text-anchor": it.anchor ?? "start", "font-weight": it.bold ? "bold" : undefined, fill: it.color ?? fg }, it.text));
        } else if (it.t === "line") {
          g.append(s("line", { x1: it.x1, y1: it.y1, x2: it.x2, y2: it.y2, stroke: it.color ?? fg, "stroke-width": it.width ?? 1 }));
        } else if (it.t === "rect") {
          g.append(s("rect", { x: it.x, y: it.y, width: it.w, height: it.h, fill: it.fill }));
        } else {
          g.append(s("polyline", { points: it.points.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" "), fill: "none", stroke: it.color, "stroke-width": it.width ?? 2 }));
        }
      }
      return g;
    },
  };
}

/** Lines of text as a figure (a heading in bold, then the lines). */
export function textFigure(heading: string, lines: string[], width = 520): Figure {
  const items: Item[] = [];
  let y = 14;
  if (heading) {
    items.push({ t: "text", x: 6, y, text: heading, size: 12, bold: true });
    y += 18;
  }
  for (const line of lines) {
    items.push({ t: "text", x: 6, y, text: line, size: 11 });
    y += 16;
  }
  const longest = Math.max(heading.length, ...lines.map((l) => l.length));
  return drawing(Math.max(width, 7 * longest + 12), y, items);
}

const GAP = 14;

function layout(title: string, figs: Figure[]): { width: number; height: number; top: number[] } {
  let y = title ? 24 : 4;
  const top: number[] = [];
  let width = title ? 7 * title.length + 12 : 0;
  for (const f of figs) {
    top.push(y);
    y += f.height + GAP;
    width = Math.max(width, f.width);
  }
  return { width: Math.ceil(Math.max(width, 40)), height: Math.ceil(y), top };
}

/** The figures stacked top to bottom under a title, as a PNG data URL ("" when the browser cannot draw). */
export function composePNG(title: string, figs: Figure[], theme: Theme, scale = 2): string {
  const L = layout(title, figs);
  const out = document.createElement("canvas");
  out.width = L.width * scale;
  out.height = L.height * scale;
  const ctx = out.getContext("2d");
  if (!ctx) return "";
  ctx.scale(scale, scale);
  ctx.fillStyle = css(theme.bg);
  ctx.fillRect(0, 0, L.width, L.height);
  if (title) {
    ctx.fillStyle = css(theme.fg);
    ctx.font = `bold 12px ${theme.font}`;
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    ctx.fillText(title, 6, 12);
  }
  figs.forEach((f, i) => {
    ctx.save();
    ctx.translate(0, L.top[i]);
    f.paint(ctx, theme);
    ctx.restore();
  });
  return out.toDataURL("image/png");
}

/** The figures stacked top to bottom under a title, as one standalone SVG. */
export function composeSVG(title: string, figs: Figure[], theme: Theme): SVGSVGElement {
  const L = layout(title, figs);
  const svg = document.createElementNS(SVG_NS, "svg") as SVGSVGElement;
  svg.setAttribute("xmlns", SVG_NS);
  svg.setAttribute("width", String(L.width));
  svg.setAttribute("height", String(L.height));
  svg.setAttribute("font-family", "sans-serif");
  svg.append(s("rect", { x: 0, y: 0, width: L.width, height: L.height, fill: css(theme.bg) }));
  if (title) svg.append(s("text", { x: 6, y: 16, "font-size": 12, "font-weight": "bold", fill: css(theme.fg) }, title));
  figs.forEach((f, i) => {
    const g = s("g", { transform: `translate(0,${L.top[i]})` });
    g.append(f.svg(theme));
    svg.append(g);
  });
  return svg;
}

export function download(name: string, data: Blob | string): void {
  const a = document.createElement("a");
  const url = typeof data === "string" ? data : URL.createObjectURL(data);
  a.setAttribute("href", url);
  a.setAttribute("download", name);
  a.style.display = "none";
  document.body.append(a);
  a.click();
  a.remove();
  if (typeof data !== "string") setTimeout(() => URL.revokeObjectURL(url), 5000);
}

export function svgText(svg: SVGSVGElement): string {
  return new XMLSerializer().serializeToString(svg);
}

export function dataURLBytes(url: string): Uint8Array {
  const b64 = url.slice(url.indexOf(",") + 1);
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export async function copyText(text: string): Promise<boolean> {
  try {
    if (navigator.clipboard?.writeText) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch {
    /* fall through */
  }
  const ta = document.createElement("textarea");
  ta.value = text;
  ta.style.position = "fixed";
  ta.style.opacity = "0";
  document.body.append(ta);
  ta.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch {
    ok = false;
  }
  ta.remove();
  return ok;
}
