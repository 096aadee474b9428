// CircuitView: an edge-attribution graph as a circuit, layers bottom to top (embed below layer 0, logits above the
// last), one node per head (x = head index) and per MLP (right of the heads, half a layer up), key-value ports under
// their query heads under grouped-query attention. The kept edges (top n + pins, the largest drawn) are curves whose
// width and colour follow the score. A slider sets n; the kernel measures the circuit's faithfulness live, and the
// faithfulness curve beside it marks the current size. Hover a node or edge for its attribution; click (or Enter) for
// an exact patch beside the estimate; pin nodes in or out.
import { maybeUnpack } from "./arrays";
import { css, readTheme, type RGB, type Theme } from "./colors";
import { button, clear, debounce, fmt, h, s } from "./dom";
import { drawing, type Figure, type Item, textFigure } from "./export";
import type { AnyModel } from "./model";
import type { CircuitRequest } from "./protocol";
import type { CircuitCheck, CircuitCurveState, CircuitCutState, CircuitGraphState, CircuitTraits } from "./traits";
import { View } from "./view";

/** The graph's nodes, decoded. */
export interface GraphInfo {
  names: string[];
  kinds: string[];
  layers: Int32Array;
  index: Int32Array;
  nLayers: number;
  nHeads: number;
  nKv: number;
  gqa: boolean;
  senderNode: Int32Array;
  receiverNode: Int32Array;
  receiverKind: string[];
}

export function graphInfo(g: Partial<CircuitGraphState>): GraphInfo | null {
  const layers = maybeUnpack(g.layers)?.data;
  const index = maybeUnpack(g.index)?.data;
  const sn = maybeUnpack(g.sender_node)?.data;
  const rn = maybeUnpack(g.receiver_node)?.data;
  if (!g.names || !layers || !index || !sn || !rn) return null;
  return {
    names: g.names,
    kinds: g.kinds ?? [],
    layers: layers as Int32Array,
    index: index as Int32Array,
    nLayers: g.n_layers ?? 0,
    nHeads: g.n_heads ?? 0,
    nKv: g.n_kv_heads ?? 0,
    gqa: Boolean(g.gqa),
    senderNode: sn as Int32Array,
    receiverNode: rn as Int32Array,
    receiverKind: g.receiver_kind ?? [],
  };
}

/** Where each node sits (CSS pixels), and the figure's size. */
export interface Layout {
  width: number;
  height: number;
  x: Float64Array;
  y: Float64Array;
  /** Half the node's height (edges leave from its top and arrive at its bottom). */
  r: Float64Array;
  rowH: number;
  colW: number;
  padL: number;
  /** The y of layer l's heads. */
  headY: (l: number) => number;
}

export function circuitLayout(g: GraphInfo): Layout {
  const L = g.nLayers;
  const H = g.nHeads;
  const colW = H <= 12 ? 40 : Math.max(16, 480 / H);
  const rowH = Math.min(56, Math.max(19, 620 / (L + 2)));
  const padL = 46;
  const padT = 18;
  const padB = 34;
  const xHead = (hd: number) => padL + colW * (hd + 0.5);
  const xMlp = padL + colW * (H + 0.5) + colW * 0.35;
  const width = Math.ceil(xMlp + colW * 0.5 + 20);
  const headY = (l: number) => padT + rowH * (L - l + 0.5);
  const n = g.names.length;
  const x = new Float64Array(n);
  const y = new Float64Array(n);
  const r = new Float64Array(n);
  const ratio = g.nKv > 0 ? H / g.nKv : 1;
  for (let i = 0; i < n; i++) {
    const kind = g.kinds[i];
    const l = g.layers[i];
    const k = g.index[i];
    if (kind === "head") {
      x[i] = xHead(k);
      y[i] = headY(l);
      r[i] = 5;
    } else if (kind === "mlp") {
      x[i] = xMlp;
      y[i] = headY(l) - rowH * 0.45;
      r[i] = 5;
    } else if (kind === "kv") {
      x[i] = (xHead(k * ratio) + xHead((k + 1) * ratio - 1)) / 2;
      y[i] = headY(l) + rowH * 0.32;
      r[i] = 3;
    } else if (kind === "embed") {
      x[i] = (padL + xMlp) / 2;
      y[i] = headY(-1) + rowH * 0.1;
      r[i] = 8;
    } else {
      x[i] = (padL + xMlp) / 2;
      y[i] = headY(L) - rowH * 0.1;
      r[i] = 8;
    }
  }
  return { width, height: Math.ceil(headY(-1) + rowH * 0.1 + 8 + padB), x, y, r, rowH, colW, padL, headY };
}

/** Colours of the view that read on the theme's background. */
export function palette(theme: Theme): { pos: RGB; neg: RGB; pinIn: string; pinOut: string; select: string; mark: string; curve: string } {
  return theme.dark
    ? { pos: [240, 96, 96], neg: [96, 165, 240], pinIn: "#66bb6a", pinOut: "#ef5350", select: "#ffca28", mark: "#d2a8ff", curve: "#6cb4ff" }
    : { pos: [178, 24, 43], neg: [33, 102, 172], pinIn: "#2e7d32", pinOut: "#c62828", select: "#f59e0b", mark: "#7c3aed", curve: "#1f5fa8" };
}

/** One drawn thing of the circuit figure (the live SVG and the PNG/SVG export draw the same list). */
export type Prim =
  | { t: "edge"; id: number; d: [number, number, number, number, number, number, number, number]; color: string; width: number; opacity: number }
  | {
      t: "node";
      id: number;
      shape: "circle" | "square" | "diamond" | "box";
      x: number;
      y: number;
      r: number;
      fill: string;
      stroke: string;
      strokeWidth: number;
      dash: boolean;
      label?: string;
      labelColor?: string;
    }
  | { t: "ring"; x: number; y: number; r: number; color: string }
  | { t: "text"; x: number; y: number; text: string; size: number; anchor: "start" | "middle" | "end"; color?: string; bold?: boolean };

export interface DrawnEdge {
  s: number;
  r: number;
  c: number;
  score: number;
  from: number;
  to: number;
}

export interface Scene {
  prims: Prim[];
  edges: DrawnEdge[];
  /** Which nodes a drawn edge touches. */
  active: Uint8Array;
  layout: Layout;
}

function mixCss(a: RGB, b: RGB, t: number): string {
  return css([a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t]);
}

/** The circuit figure: every node, the drawn edges (weakest first, so the strongest lie on top), pins, selection. */
export function circuitScene(g: GraphInfo, cut: Partial<CircuitCutState> | null, theme: Theme, pinnedIn: Set<string>, pinnedOut: Set<string>, selected: number | null): Scene {
  const lay = circuitLayout(g);
  const col = palette(theme);
  const prims: Prim[] = [];
  const ss = cut ? (maybeUnpack(cut.s)?.data ?? new Int32Array(0)) : new Int32Array(0);
  const rr = cut ? (maybeUnpack(cut.r)?.data ?? new Int32Array(0)) : new Int32Array(0);
  const cc = cut ? (maybeUnpack(cut.c)?.data ?? new Int32Array(0)) : new Int32Array(0);
  const sc = cut ? (maybeUnpack(cut.score)?.data ?? new Float32Array(0)) : new Float32Array(0);
  const edges: DrawnEdge[] = [];
  let maxAbs = 0;
  for (let i = 0; i < ss.length; i++) {
    const from = g.senderNode[ss[i]];
    const to = g.receiverNode[rr[i]];
    if (from === undefined || to === undefined) continue;
    edges.push({ s: ss[i], r: rr[i], c: cc[i], score: sc[i], from, to });
    maxAbs = Math.max(maxAbs, Math.abs(sc[i]));
  }
  const active = new Uint8Array(g.names.length);
  for (const e of edges) {
    active[e.from] = 1;
    active[e.to] = 1;
  }
  // axes: layer labels at the left, head labels under layer 0
  const L = g.nLayers;
  const every = lay.rowH >= 14 ? 1 : 2;
  for (let l = 0; l < L; l += every) prims.push({ t: "text", x: 8, y: lay.headY(l) + 3, text: `L${l}`, size: 10, anchor: "start" });
  const base = lay.headY(-1) + lay.rowH * 0.1 + 24;
  for (let hd = 0; hd < g.nHeads; hd++) prims.push({ t: "text", x: lay.padL + lay.colW * (hd + 0.5), y: base, text: `H${hd}`, size: 10, anchor: "middle" });
  const mlpIdx = g.kinds.indexOf("mlp");
  if (mlpIdx >= 0) prims.push({ t: "text", x: lay.x[mlpIdx], y: base, text: "MLP", size: 10, anchor: "middle" });
  // edges, weakest first
  const order = edges.map((_, i) => i).sort((a, b) => Math.abs(edges[a].score) - Math.abs(edges[b].score));
  for (const i of order) {
    const e = edges[i];
    const t = maxAbs > 0 ? Math.abs(e.score) / maxAbs : 0;
    const x1 = lay.x[e.from];
    const y1 = lay.y[e.from] - lay.r[e.from];
    const x2 = lay.x[e.to];
    const y2 = lay.y[e.to] + lay.r[e.to];
    const dy = Math.max(8, (y1 - y2) * 0.45);
    prims.push({
      t: "edge",
      id: i,
      d: [x1, y1, x1, y1 - dy, x2, y2 + dy, x2, y2],
      color: mixCss(theme.bg, e.score >= 0 ? col.pos : col.neg, 0.55 + 0.45 * t),
      width: 0.6 + 3.6 * t,
      opacity: 0.35 + 0.6 * t,
    });
  }
  // nodes
  const fg = css(theme.fg);
  const idle = mixCss(theme.bg, theme.border, 0.9);
  for (let i = 0; i < g.names.length; i++) {
    const kind = g.kinds[i];
    const on = active[i] === 1;
    const name = g.names[i];
    const pin = pinnedIn.has(name) ? "in" : pinnedOut.has(name) ? "out" : "";
    const stroke = pin === "in" ? col.pinIn : pin === "out" ? col.pinOut : on ? fg : idle;
    const strokeWidth = pin ? 2.2 : 1;
    const fill = on ? fg : css(theme.bg);
    const shape = kind === "head" ? "circle" : kind === "mlp" ? "square" : kind === "kv" ? "diamond" : "box";
    const prim: Prim = { t: "node", id: i, shape, x: lay.x[i], y: lay.y[i], r: lay.r[i], fill, stroke, strokeWidth, dash: pin === "out" };
    if (shape === "box") {
      prim.label = name;
      prim.fill = on ? fg : css(theme.bg);
      prim.labelColor = on ? css(theme.bg) : fg;
    }
    prims.push(prim);
  }
  if (selected !== null && selected >= 0 && selected < g.names.length) {
    const rad = g.kinds[selected] === "embed" || g.kinds[selected] === "logits" ? 14 : lay.r[selected] + 4;
    prims.push({ t: "ring", x: lay.x[selected], y: lay.y[selected], r: rad, color: col.select });
  }
  return { prims, edges, active, layout: lay };
}

const BOX_W = 56;

function edgePath(d: number[]): string {
  const f = (v: number) => v.toFixed(1);
  return `M${f(d[0])},${f(d[1])} C${f(d[2])},${f(d[3])} ${f(d[4])},${f(d[5])} ${f(d[6])},${f(d[7])}`;
}

function diamond(x: number, y: number, r: number): string {
  return `${x},${y - r} ${x + r},${y} ${x},${y + r} ${x - r},${y}`;
}

/** The scene as SVG elements (`live`: with the data attributes and wide invisible hit paths the view uses). */
export function sceneSVG(scene: Scene, names: string[], theme: Theme, live: boolean): SVGElement {
  const g = s("g");
  const edgesG = s("g", { "data-role": "edges" });
  const nodesG = s("g", { "data-role": "nodes" });
  const fg = css(theme.fg);
  for (const p of scene.prims) {
    if (p.t === "text") {
      g.append(s("text", { x: p.x, y: p.y, "font-size": p.size, "text-anchor": p.anchor, fill: p.color ?? fg, "font-weight": p.bold ? "bold" : undefined, opacity: 0.75 }, p.text));
    } else if (p.t === "edge") {
      const e = scene.edges[p.id];
      const path = s("path", { d: edgePath(p.d), fill: "none", stroke: p.color, "stroke-width": p.width.toFixed(2), "stroke-opacity": p.opacity.toFixed(2), "stroke-linecap": "round" });
      if (live) {
        const grp = s("g", { "data-testid": "wb-circuit-edge", "data-edge": `${e.s},${e.r},${e.c}`, "data-score": String(e.score), class: "wb-circuit-edge" });
        grp.append(path, s("path", { d: edgePath(p.d), fill: "none", stroke: "transparent", "stroke-width": 7, "pointer-events": "stroke" }));
        edgesG.append(grp);
      } else edgesG.append(path);
    } else if (p.t === "node") {
      const attrs = { fill: p.fill, stroke: p.stroke, "stroke-width": p.strokeWidth, "stroke-dasharray": p.dash ? "2.5,1.8" : undefined };
      let el: SVGElement;
      if (p.shape === "circle") el = s("circle", { cx: p.x, cy: p.y, r: p.r, ...attrs });
      else if (p.shape === "square") el = s("rect", { x: p.x - p.r, y: p.y - p.r, width: 2 * p.r, height: 2 * p.r, rx: 1.5, ...attrs });
      else if (p.shape === "diamond") el = s("polygon", { points: diamond(p.x, p.y, p.r + 0.8), ...attrs });
      else el = s("rect", { x: p.x - BOX_W / 2, y: p.y - p.r, width: BOX_W, height: 2 * p.r, rx: 3, ...attrs });
      if (live || p.label) {
        const grp = s("g", live ? { "data-testid": "wb-circuit-node", "data-node": names[p.id], "data-kind": p.shape, "data-active": String(scene.active[p.id] === 1), class: "wb-circuit-node" } : {});
        grp.append(el);
        if (p.label) grp.append(s("text", { x: p.x, y: p.y + 3.5, "font-size": 10, "text-anchor": "middle", fill: p.labelColor ?? fg, "pointer-events": "none" }, p.label));
        if (live && p.shape !== "box") grp.append(s("circle", { cx: p.x, cy: p.y, r: Math.max(p.r + 3, 7), fill: "transparent", stroke: "none" }));
        nodesG.append(grp);
      } else nodesG.append(el);
    } else {
      nodesG.append(
        s("circle", { cx: p.x, cy: p.y, r: p.r, fill: "none", stroke: p.color, "stroke-width": 2.2, "pointer-events": "none", "data-testid": live ? "wb-circuit-selected-ring" : undefined }),
      );
    }
  }
  g.append(edgesG, nodesG);
  return g;
}

/** The scene painted on a canvas (PNG export). */
export function paintScene(ctx: CanvasRenderingContext2D, scene: Scene, theme: Theme): void {
  const fg = css(theme.fg);
  for (const p of scene.prims) {
    if (p.t === "text") {
      ctx.globalAlpha = 0.75;
      ctx.fillStyle = p.color ?? fg;
      ctx.font = `${p.bold ? "bold " : ""}${p.size}px ${theme.font}`;
      ctx.textAlign = p.anchor === "start" ? "left" : p.anchor === "end" ? "right" : "center";
      ctx.textBaseline = "alphabetic";
      ctx.fillText(p.text, p.x, p.y);
      ctx.globalAlpha = 1;
    } else if (p.t === "edge") {
      const d = p.d;
      ctx.globalAlpha = p.opacity;
      ctx.strokeStyle = p.color;
      ctx.lineWidth = p.width;
      ctx.lineCap = "round";
      ctx.beginPath();
      ctx.moveTo(d[0], d[1]);
      ctx.bezierCurveTo(d[2], d[3], d[4], d[5], d[6], d[7]);
      ctx.stroke();
      ctx.globalAlpha = 1;
    } else if (p.t === "node") {
      ctx.beginPath();
      if (p.shape === "circle") ctx.arc(p.x, p.y, p.r, 0, 2 * Math.PI);
      else if (p.shape === "square") ctx.rect(p.x - p.r, p.y - p.r, 2 * p.r, 2 * p.r);
      else if (p.shape === "diamond") {
        const r = p.r + 0.8;
        ctx.moveTo(p.x, p.y - r);
        ctx.lineTo(p.x + r, p.y);
        ctx.lineTo(p.x, p.y + r);
        ctx.lineTo(p.x - r, p.y);
        ctx.closePath();
      } else ctx.rect(p.x - BOX_W / 2, p.y - p.r, BOX_W, 2 * p.r);
      ctx.fillStyle = p.fill;
      ctx.fill();
      ctx.setLineDash(p.dash ? [2.5, 1.8] : []);
      ctx.strokeStyle = p.stroke;
      ctx.lineWidth = p.strokeWidth;
      ctx.stroke();
      ctx.setLineDash([]);
      if (p.label) {
        ctx.fillStyle = p.labelColor ?? fg;
        ctx.font = `10px ${theme.font}`;
        ctx.textAlign = "center";
        ctx.fillText(p.label, p.x, p.y + 3.5);
      }
    } else {
      ctx.beginPath();
      ctx.arc(p.x, p.y, p.r, 0, 2 * Math.PI);
      ctx.strokeStyle = p.color;
      ctx.lineWidth = 2.2;
      ctx.stroke();
    }
  }
}

/** The slider's position (0..1000) for n of N edges: logarithmic, so 10, 100 and 1000 edges are all reachable. */
export function sliderPos(n: number, N: number): number {
  return N > 0 ? Math.round((1000 * Math.log1p(Math.max(0, n))) / Math.log1p(N)) : 0;
}
export function sliderN(pos: number, N: number): number {
  return Math.min(N, Math.max(0, Math.round(Math.expm1((Math.min(1000, Math.max(0, pos)) / 1000) * Math.log1p(N)))));
}

/** The faithfulness curve: normalised faithfulness over the circuit size (log axis), the current size marked. */
export function curveChart(
  curve: Partial<CircuitCurveState> | null,
  n: number,
  current: number | null,
  pinned: boolean,
  nEdges: number,
  dark: boolean,
  width = 360,
  height = 220,
): { items: Item[]; width: number; height: number } {
  const col = dark ? { line: "#6cb4ff", mark: "#d2a8ff" } : { line: "#1f5fa8", mark: "#7c3aed" };
  const sizes = (curve ? maybeUnpack(curve.sizes)?.data : null) ?? new Int32Array(0);
  const vals = (curve ? maybeUnpack(curve.values)?.data : null) ?? new Float32Array(0);
  const target = curve?.target ?? [];
  const padL = 40;
  const padR = 12;
  const padT = 24;
  const padB = 34;
  const plotW = width - padL - padR;
  const plotH = height - padT - padB;
  const hiN = Math.max(10, n, nEdges > 0 ? Math.min(nEdges, Math.max(...target, 10)) : 10, ...Array.from(sizes));
  const lx = (v: number) => Math.log10(Math.max(1, v));
  const X = (v: number) => padL + (lx(v) / lx(hiN)) * plotW;
  let lo = 0;
  let hi = 1;
  for (const v of [...Array.from(vals), current ?? 0]) {
    if (Number.isFinite(v)) {
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
  }
  const Y = (v: number) => padT + plotH - ((v - lo) / (hi - lo || 1)) * plotH;
  const items: Item[] = [];
  const grid = dark ? "rgba(255,255,255,0.12)" : "rgba(0,0,0,0.10)";
  for (const v of [0, 0.5, 1]) {
    if (v < lo || v > hi) continue;
    items.push({ t: "line", x1: padL, y1: Y(v), x2: padL + plotW, y2: Y(v), color: grid });
    items.push({ t: "text", x: padL - 5, y: Y(v) + 3, text: v.toFixed(1), size: 10, anchor: "end" });
  }
  items.push({ t: "line", x1: padL, y1: padT + plotH, x2: padL + plotW, y2: padT + plotH });
  items.push({ t: "line", x1: padL, y1: padT, x2: padL, y2: padT + plotH });
  for (let p = 1; p <= hiN; p *= 10) items.push({ t: "text", x: X(p), y: padT + plotH + 13, text: p >= 1000 ? `${p / 1000}k` : String(p), size: 10, anchor: "middle" });
  items.push({ t: "text", x: padL + plotW / 2, y: padT + plotH + 28, text: "edges kept (top n by |score|, log scale)", size: 10, anchor: "middle" });
  items.push({ t: "text", x: 4, y: padT - 12, text: "faithfulness (1 = clean, 0 = corrupt)", size: 10 });
  // the current size
  for (let y = padT; y < padT + plotH; y += 6) items.push({ t: "line", x1: X(n), y1: y, x2: X(n), y2: Math.min(y + 3, padT + plotH), color: col.mark, width: 1.5 });
  const pts: [number, number][] = [];
  for (let i = 0; i < sizes.length; i++) if (Number.isFinite(vals[i])) pts.push([X(sizes[i]), Y(vals[i])]);
  if (pts.length > 1) items.push({ t: "polyline", points: pts, color: col.line, width: 2 });
  for (const [x, y] of pts) items.push({ t: "rect", x: x - 2.5, y: y - 2.5, w: 5, h: 5, fill: col.line });
  if (current !== null && Number.isFinite(current)) {
    const cx = X(n);
    const cy = Y(current);
    items.push({ t: "rect", x: cx - 4, y: cy - 4, w: 8, h: 8, fill: col.mark });
    const right = cx > padL + plotW * 0.6;
    items.push({
      t: "text",
      x: right ? cx - 8 : cx + 8,
      y: Math.max(padT + 8, cy - 6),
      text: `n = ${n}${pinned ? " + pins" : ""}: ${fmt(current, 2)}`,
      size: 10,
      anchor: right ? "end" : "start",
      bold: true,
      color: col.mark,
    });
  }
  return { items, width, height };
}

function signed(v: number | null | undefined, digits = 3): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  return `${v >= 0 ? "+" : ""}${fmt(v, digits)}`;
}

export class CircuitView extends View<CircuitTraits, CircuitRequest> {
  private info: GraphInfo | null = null;
  private scene: Scene | null = null;
  private selectedNode: number | null = null;
  private svgBox: HTMLElement;
  private tip: HTMLElement;
  private slider: HTMLInputElement;
  private nInput: HTMLInputElement;
  private nOf: HTMLElement;
  private columnSel: HTMLSelectElement;
  private columnField: HTMLElement;
  private faithBox: HTMLElement;
  private drawnNote: HTMLElement;
  private pinsBox: HTMLElement;
  private curveBox: HTMLElement;
  private nodeBox: HTMLElement;
  private inspectBox: HTMLElement;
  private checksBox: HTMLElement;
  private legendBox: HTMLElement;
  private svg: SVGSVGElement | null = null;
  private themeWatch: MutationObserver | null = null;
  private sendN: (n: number) => void;

  constructor(model: AnyModel<CircuitTraits>, el: HTMLElement) {
    super(model, el, "Circuit");
    this.slider = h("input", {
      type: "range",
      min: 0,
      max: 1000,
      step: 1,
      class: "wb-steer-slider wb-circuit-slider",
      "data-testid": "wb-circuit-slider",
      title: "Edges kept: the top n by |score| (logarithmic)",
    });
    this.nInput = h("input", { type: "number", min: 0, step: 1, class: "wb-input wb-num", "data-testid": "wb-circuit-n", title: "Edges kept (exactly)" });
    this.nInput.style.width = "72px";
    this.nOf = h("span", { class: "wb-hint", "data-testid": "wb-circuit-n-of" });
    this.sendN = debounce((n: number) => {
      if (n !== this.model.get("n")) this.setTrait("n", n);
    }, 250);
    this.slider.addEventListener("input", () => {
      const n = sliderN(Number(this.slider.value), this.nEdges());
      this.nInput.value = String(n);
      this.sendN(n);
    });
    this.nInput.addEventListener("change", () => {
      const v = Number(this.nInput.value);
      if (this.nInput.value.trim() === "" || !Number.isInteger(v)) {
        this.nInput.value = String(this.model.get("n"));
        return;
      }
      this.setTrait("n", v);
    });
    this.columnSel = h("select", { class: "wb-select", "data-testid": "wb-circuit-column", title: "The column (position or role) whose edges are drawn" });
    this.columnSel.addEventListener("change", () => this.setTrait("column", Number(this.columnSel.value)));
    this.columnField = h("label", { class: "wb-field" }, h("span", {}, "column"), this.columnSel);
    const field = (label: string, ...kids: HTMLElement[]) => h("label", { class: "wb-field" }, h("span", {}, label), ...kids);
    const controls = h(
      "div",
      { class: "wb-controls", "data-testid": "wb-circuit-controls" },
      field("edges kept", this.slider, this.nInput),
      this.nOf,
      this.columnField,
      button("Measure", () => this.send("measure", {}), { "data-testid": "wb-circuit-measure", title: "Measure the faithfulness of the circuit shown (after a Cancel)" }),
      button("Clear pins", () => this.setPins([], []), { "data-testid": "wb-circuit-clear-pins", title: "Unpin every node" }),
    );
    this.faithBox = h("div", { class: "wb-circuit-faith", "data-testid": "wb-circuit-faith-box" });
    this.drawnNote = h("div", { class: "wb-hint", "data-testid": "wb-circuit-drawn" });
    this.pinsBox = h("div", { class: "wb-row", "data-testid": "wb-circuit-pins" });
    this.legendBox = h("div", { class: "wb-legend", "data-testid": "wb-circuit-legend" });
    this.svgBox = h("div", { class: "wb-circuit-graph", "data-testid": "wb-circuit-graph" });
    this.tip = h("div", { class: "wb-tip", "data-testid": "wb-tooltip", hidden: true });
    this.curveBox = h("div", { class: "wb-chart wb-circuit-curve", "data-testid": "wb-circuit-curve" });
    this.nodeBox = h("div", { class: "wb-circuit-node-box", "data-testid": "wb-circuit-node-box" });
    this.inspectBox = h("div", { class: "wb-circuit-inspect", "data-testid": "wb-circuit-inspect" });
    this.checksBox = h("div", { class: "wb-circuit-checks", "data-testid": "wb-circuit-checks" });
    const graphPane = h("div", { class: "wb-pane wb-circuit-pane" }, this.svgBox, this.tip);
    graphPane.style.position = "relative";
    const side = h("div", { class: "wb-pane wb-circuit-side" }, this.faithBox, this.curveBox, this.nodeBox, this.inspectBox, this.checksBox);
    side.style.maxWidth = "420px";
    this.body.append(
      h("div", { class: "wb-caption", "data-testid": "wb-circuit-caption" }),
      controls,
      h("div", { class: "wb-row" }, this.drawnNote, this.legendBox),
      this.pinsBox,
      h("div", { class: "wb-panes" }, graphPane, side),
    );
    this.listen("graph", () => {
      this.info = graphInfo(this.model.get("graph") ?? {});
      this.render();
    });
    for (const t of ["circuit", "pinned_in", "pinned_out", "column"] as const) this.listen(t, () => this.render());
    for (const t of ["faithfulness", "curve", "n"] as const) this.listen(t, () => this.renderSide());
    for (const t of ["inspected", "checks"] as const) this.listen(t, () => this.renderChecks());
    this.info = graphInfo(this.model.get("graph") ?? {});
    this.render();
    if (typeof MutationObserver !== "undefined" && document.body) {
      this.themeWatch = new MutationObserver(() => {
        const redraw = () => {
          if (this.root.isConnected) this.render();
        };
        redraw();
        setTimeout(redraw, 300);
        setTimeout(redraw, 1200);
      });
      this.themeWatch.observe(document.body, { attributes: true, attributeFilter: ["class", "data-jp-theme-light", "data-jp-theme-name"] });
    }
  }

  destroy(): void {
    this.themeWatch?.disconnect();
    this.themeWatch = null;
    super.destroy();
  }

  private themeNow(): Theme {
    return readTheme(this.el.isConnected ? this.el : document.body);
  }

  private nEdges(): number {
    return Number(this.model.get("graph")?.n_edges ?? 0);
  }

  private pins(): [Set<string>, Set<string>] {
    return [new Set(this.model.get("pinned_in") ?? []), new Set(this.model.get("pinned_out") ?? [])];
  }

  private setPins(pin_in: string[], pin_out: string[]): void {
    this.model.set("pinned_in", pin_in);
    this.model.set("pinned_out", pin_out);
    this.model.save_changes();
  }

  /** Pin node `name` in, out, or neither. */
  pin(name: string, mode: "in" | "out" | null): void {
    const [pi, po] = this.pins();
    pi.delete(name);
    po.delete(name);
    if (mode === "in") pi.add(name);
    if (mode === "out") po.add(name);
    this.setPins([...pi], [...po]);
  }

  render(): void {
    this.renderControls();
    this.renderGraph();
    this.renderSide();
    this.renderChecks();
  }

  private renderControls(): void {
    const g = this.model.get("graph");
    const cut = this.model.get("circuit");
    const N = this.nEdges();
    const n = Number(this.model.get("n") ?? 0);
    const caption = this.body.querySelector("[data-testid=wb-circuit-caption]");
    if (caption && g) {
      caption.textContent = `${(g.method ?? "").toUpperCase()} edge attribution over ${g.n_examples} examples, metric ${g.metric} (clean ${fmt(g.clean ?? Number.NaN, 3)}, corrupt ${fmt(g.corrupt ?? Number.NaN, 3)}) · ${N} edges${g.by_position ? ` x ${g.columns?.length ?? 0} columns (align ${g.align})` : ""}`;
    }
    if (document.activeElement !== this.slider) this.slider.value = String(sliderPos(n, N));
    if (document.activeElement !== this.nInput) this.nInput.value = String(n);
    this.nInput.max = String(N);
    this.nOf.textContent = `of ${N}`;
    const cols = g?.columns ?? null;
    this.columnField.hidden = !cols;
    if (cols) {
      clear(this.columnSel);
      const per = cut?.per_column ?? [];
      cols.forEach((c, i) => {
        const o = h("option", { value: i }, `${c} (${per[i] ?? 0} kept)`);
        if (i === this.model.get("column")) o.selected = true;
        this.columnSel.append(o);
      });
    }
    clear(this.pinsBox);
    const [pi, po] = this.pins();
    if (pi.size || po.size) {
      const chip = (name: string, mode: "in" | "out") => {
        const c = h("span", { class: "wb-chip", "data-testid": `wb-circuit-pin-${mode}-chip`, "data-node": name }, `${mode === "in" ? "+" : "−"} ${name}`);
        const x = h("button", { class: "wb-chip-x", type: "button", title: "unpin" }, "×");
        x.addEventListener("click", () => this.pin(name, null));
        c.append(x);
        return c;
      };
      this.pinsBox.append(h("span", { class: "wb-hint" }, "pinned:"));
      for (const p of pi) this.pinsBox.append(chip(p, "in"));
      for (const p of po) this.pinsBox.append(chip(p, "out"));
      if (cut && (cut.added || cut.dropped)) {
        const thr = cut.pin_threshold;
        this.pinsBox.append(
          h("span", { class: "wb-hint", "data-testid": "wb-circuit-pin-note" }, `(+${cut.added ?? 0} edges${thr != null ? ` with |score| ≥ ${fmt(thr, 3)}` : ""}, −${cut.dropped ?? 0} edges)`),
        );
      }
    }
    if (cut) {
      const where = cols ? ` at column ${cols[Number(this.model.get("column"))] ?? "?"}` : "";
      const inCol = cut.in_column ?? 0;
      this.drawnNote.textContent = `${cut.drawn ?? 0} drawn of ${inCol} kept edges${where}${cols ? ` (${cut.size} in the circuit over all columns)` : ""}${(cut.drawn ?? 0) < inCol ? ` — the ${cut.drawn} largest |score|` : ""}`;
    }
    const theme = this.themeNow();
    const col = palette(theme);
    clear(this.legendBox);
    const sw = (c: RGB, label: string) => {
      const w = h("span", { class: "wb-swatch" });
      w.style.background = css(c);
      w.style.height = "4px";
      w.style.width = "18px";
      return h("span", { class: "wb-legend-item" }, w, label);
    };
    const max = cut?.max_abs;
    this.legendBox.append(sw(col.pos, "raises the metric"), sw(col.neg, "lowers it"), h("span", { class: "wb-legend-item" }, `width ∝ |score| (widest ${fmt(max ?? Number.NaN, 3)})`));
  }

  private renderGraph(): void {
    clear(this.svgBox);
    const g = this.info;
    if (!g) {
      this.svgBox.append(h("div", { class: "wb-hint" }, "no graph"));
      return;
    }
    const [pi, po] = this.pins();
    const theme = this.themeNow();
    const scene = circuitScene(g, this.model.get("circuit") ?? null, theme, pi, po, this.selectedNode);
    this.scene = scene;
    const lay = scene.layout;
    const svg = s("svg", {
      width: lay.width,
      height: lay.height,
      viewBox: `0 0 ${lay.width} ${lay.height}`,
      role: "img",
      tabindex: 0,
      "aria-label": "circuit: layers bottom to top, heads across",
      "data-testid": "wb-circuit-svg",
      "data-lm-suppress-shortcuts": "true",
      class: "wb-canvas",
    }) as SVGSVGElement;
    svg.append(sceneSVG(scene, g.names, theme, true));
    this.svg = svg;
    svg.addEventListener("mousemove", (e) => this.hover(e));
    svg.addEventListener("mouseleave", () => {
      this.tip.hidden = true;
    });
    svg.addEventListener("click", (e) => this.click(e));
    svg.addEventListener("keydown", (e) => this.key(e));
    this.svgBox.append(svg);
  }

  private target(e: Event): { node?: number; edge?: DrawnEdge } {
    const el = (e.target as Element | null)?.closest?.("[data-node],[data-edge]");
    if (!el || !this.info || !this.scene) return {};
    const name = el.getAttribute("data-node");
    if (name !== null) return { node: this.info.names.indexOf(name) };
    const [si, ri, ci] = (el.getAttribute("data-edge") ?? "").split(",").map(Number);
    const edge = this.scene.edges.find((x) => x.s === si && x.r === ri && x.c === ci);
    return edge ? { edge } : {};
  }

  /** The lines of a node's hover text: label, kind, its total and kept attribution in and out. */
  nodeLines(i: number): string[] {
    const g = this.info;
    const st = this.model.get("graph");
    const cut = this.model.get("circuit");
    if (!g || !st) return [];
    const C = st.columns?.length ?? 1;
    const c = st.columns ? Math.max(0, Number(this.model.get("column"))) : 0;
    const at = (p: unknown) => {
      const a = maybeUnpack(p);
      return a ? a.data[i * C + c] : Number.NaN;
    };
    const kept = (p: unknown) => maybeUnpack(p)?.data[i] ?? Number.NaN;
    const name = g.names[i];
    const kind = g.kinds[i];
    const l = g.layers[i];
    const k = g.index[i];
    const what =
      kind === "head"
        ? `attention head ${k} of layer ${l}`
        : kind === "mlp"
          ? `MLP of layer ${l}`
          : kind === "kv"
            ? `key-value head ${k} of layer ${l} (its .k and .v inputs)`
            : kind === "embed"
              ? "token embeddings"
              : "the logits the metric reads";
    const where = st.columns ? ` at column ${st.columns[c]}` : "";
    const lines = [`${name}: ${what}`];
    if (kind !== "logits") lines.push(`out: ${signed(at(st.node_out))} over every edge${where}, ${signed(kept(cut?.node_out))} kept`);
    if (kind !== "embed") {
      const inAll = at(st.node_in);
      const kv = at(st.node_in_kv);
      const split = kind === "head" && !g.gqa ? ` (q ${signed(inAll - kv)}, k/v ${signed(kv)})` : "";
      lines.push(`in: ${signed(inAll)}${split} over every edge${where}, ${signed(kept(cut?.node_in))} kept`);
    }
    const [pi, po] = this.pins();
    if (pi.has(name)) lines.push("pinned in");
    if (po.has(name)) lines.push("pinned out");
    lines.push(kind === "logits" ? "" : "click or Enter: exact patch · i / o / u: pin in / out / unpin");
    return lines.filter((x) => x);
  }

  edgeLines(e: DrawnEdge): string[] {
    const st = this.model.get("graph");
    if (!st || !this.info) return [];
    const sender = st.senders?.[e.s] ?? "?";
    const receiver = st.receivers?.[e.r] ?? "?";
    const kind = this.info.receiverKind[e.r];
    const input = kind === "q" ? "query input" : kind === "k" ? "key input" : kind === "v" ? "value input" : kind === "mlp" ? "input" : "";
    const at = st.columns ? ` @ ${st.columns[e.c]}` : "";
    return [`${sender} -> ${receiver}${at}`, `score ${signed(e.score, 4)}${input ? ` (into the ${input} of ${receiver.split(".")[0]})` : ""}`, "click: exact patch of this edge"];
  }

  private showTip(lines: string[], ev: MouseEvent): void {
    this.tip.textContent = lines.join("\n");
    this.tip.hidden = false;
    const box = this.svgBox.getBoundingClientRect();
    const x = ev.clientX - box.left;
    const w = this.tip.offsetWidth || 0;
    // near the right edge the text goes to the left of the pointer (it would be cut off by the pane)
    this.tip.style.left = `${x + 14 + w > box.width && x - 14 - w >= 0 ? x - 14 - w : x + 14}px`;
    this.tip.style.top = `${ev.clientY - box.top + 10}px`;
  }

  private hover(ev: MouseEvent): void {
    const t = this.target(ev);
    if (t.node !== undefined && t.node >= 0) this.showTip(this.nodeLines(t.node), ev);
    else if (t.edge) this.showTip(this.edgeLines(t.edge), ev);
    else this.tip.hidden = true;
  }

  private click(ev: MouseEvent): void {
    const t = this.target(ev);
    if (t.node !== undefined && t.node >= 0) {
      this.select(t.node);
      this.patchSelected();
    } else if (t.edge) {
      this.send("edge", { sender: t.edge.s, receiver: t.edge.r, column: this.model.get("graph")?.columns ? t.edge.c : null });
    }
  }

  private select(i: number | null): void {
    this.selectedNode = i;
    this.renderGraph();
    this.renderNode();
    this.svg?.focus();
  }

  private patchSelected(): void {
    const g = this.info;
    if (!g || this.selectedNode === null) return;
    if (g.kinds[this.selectedNode] === "logits") return;
    this.send("node", { node: g.names[this.selectedNode] });
  }

  /** The node the arrow key `key` moves to from node `i`. */
  moveFrom(i: number | null, key: string): number | null {
    const g = this.info;
    if (!g) return null;
    const find = (pred: (j: number) => boolean) => {
      for (let j = 0; j < g.names.length; j++) if (pred(j)) return j;
      return -1;
    };
    const nodeAt = (layer: number, idx: number) => {
      if (layer < 0) return find((j) => g.kinds[j] === "embed");
      if (layer >= g.nLayers) return find((j) => g.kinds[j] === "logits");
      return idx >= g.nHeads ? find((j) => g.kinds[j] === "mlp" && g.layers[j] === layer) : find((j) => g.kinds[j] === "head" && g.layers[j] === layer && g.index[j] === idx);
    };
    if (i === null) return nodeAt(0, 0);
    const kind = g.kinds[i];
    const layer = kind === "embed" ? -1 : kind === "logits" ? g.nLayers : g.layers[i];
    let idx = kind === "mlp" ? g.nHeads : kind === "head" ? g.index[i] : kind === "kv" ? g.index[i] * Math.max(1, g.nHeads / Math.max(1, g.nKv)) : 0;
    let l = layer;
    if (key === "ArrowUp") l = Math.min(g.nLayers, layer + 1);
    else if (key === "ArrowDown") l = Math.max(-1, layer - 1);
    else if (key === "ArrowLeft") idx = Math.max(0, idx - 1);
    else if (key === "ArrowRight") idx = Math.min(g.nHeads, idx + 1);
    if ((kind === "embed" || kind === "logits") && (key === "ArrowLeft" || key === "ArrowRight")) return i;
    const j = nodeAt(l, idx);
    return j >= 0 ? j : i;
  }

  private key(ev: KeyboardEvent): void {
    const g = this.info;
    if (!g) return;
    if (["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight"].includes(ev.key)) {
      ev.preventDefault();
      ev.stopPropagation();
      this.select(this.moveFrom(this.selectedNode, ev.key));
      return;
    }
    if (this.selectedNode === null) return;
    const name = g.names[this.selectedNode];
    if (ev.key === "Enter") {
      ev.preventDefault();
      ev.stopPropagation();
      this.patchSelected();
    } else if (ev.key === "i" || ev.key === "o" || ev.key === "u") {
      ev.preventDefault();
      ev.stopPropagation();
      this.pin(name, ev.key === "i" ? "in" : ev.key === "o" ? "out" : null);
    }
  }

  private renderNode(): void {
    clear(this.nodeBox);
    const g = this.info;
    const i = this.selectedNode;
    if (!g || i === null) {
      this.nodeBox.append(h("div", { class: "wb-hint" }, "Hover a node or an edge for its attribution; click one to patch it exactly (arrow keys move, Enter patches)."));
      return;
    }
    const name = g.names[i];
    const [pi, po] = this.pins();
    this.nodeBox.append(h("div", { class: "wb-subtitle", "data-testid": "wb-circuit-node-title" }, name));
    for (const line of this.nodeLines(i).slice(0, -1)) this.nodeBox.append(h("div", { class: "wb-caption wb-circuit-mono" }, line));
    const row = h("div", { class: "wb-row" });
    if (g.kinds[i] !== "logits") row.append(button("Patch (Enter)", () => this.patchSelected(), { "data-testid": "wb-circuit-patch" }));
    row.append(
      button("Pin in", () => this.pin(name, "in"), { "data-testid": "wb-circuit-pin-in", disabled: pi.has(name), title: "Keep its edges with |score| ≥ 1/10 of the cut's smallest kept |score| (i)" }),
      button("Pin out", () => this.pin(name, "out"), { "data-testid": "wb-circuit-pin-out", disabled: po.has(name), title: "Drop every edge touching it (o)" }),
      button("Unpin", () => this.pin(name, null), { "data-testid": "wb-circuit-unpin", disabled: !pi.has(name) && !po.has(name), title: "(u)" }),
    );
    this.nodeBox.append(
      row,
      h(
        "div",
        { class: "wb-hint", "data-testid": "wb-circuit-pin-rule" },
        "Pin out: drop every edge touching the node. Pin in: add each of its edges with |score| ≥ 1/10 of the smallest |score| the top-n cut keeps.",
      ),
    );
  }

  private renderSide(): void {
    clear(this.faithBox);
    const f = this.model.get("faithfulness");
    const cut = this.model.get("circuit");
    const n = Number(this.model.get("n") ?? 0);
    const measured = Boolean(f && cut && f.key === cut.key);
    const st = String(this.model.get("status") ?? "");
    const value = measured ? (f?.value ?? null) : null;
    const big = h(
      "span",
      { class: "wb-circuit-faith", "data-testid": "wb-circuit-faith", "data-stale": String(!measured) },
      measured ? fmt(value ?? Number.NaN, 3) : f?.value != null ? fmt(f.value, 3) : "…",
    );
    big.style.cssText = "font-size:22px;font-weight:600;font-variant-numeric:tabular-nums";
    this.faithBox.append(
      h("div", { class: "wb-subtitle" }, `Faithfulness of ${cut?.size ?? "?"} edges`),
      h(
        "div",
        { class: "wb-row" },
        big,
        h(
          "span",
          { class: "wb-hint", "data-testid": "wb-circuit-faith-note" },
          measured
            ? `metric ${fmt(f?.raw ?? Number.NaN, 3)} (clean ${fmt(f?.clean ?? Number.NaN, 3)}, corrupt ${fmt(f?.corrupt ?? Number.NaN, 3)}) · wb.faithfulness`
            : st === "running"
              ? "measuring this circuit… (the number shown is the previous circuit's)"
              : "not measured: press Measure",
        ),
      ),
    );
    clear(this.curveBox);
    const curve = this.model.get("curve") ?? null;
    const theme = this.themeNow();
    const pinned = (this.model.get("pinned_in") ?? []).length + (this.model.get("pinned_out") ?? []).length > 0;
    const c = curveChart(curve, n, measured ? value : null, pinned, this.nEdges(), theme.dark);
    const svg = s("svg", { width: c.width, height: c.height, viewBox: `0 0 ${c.width} ${c.height}`, role: "img", "data-testid": "wb-circuit-curve-svg", "aria-label": "faithfulness curve" });
    svg.append(drawing(c.width, c.height, c.items).svg(theme));
    const sizes = maybeUnpack(curve?.sizes)?.data ?? new Int32Array(0);
    this.curveBox.append(
      h(
        "div",
        { class: "wb-subtitle", "data-testid": "wb-circuit-curve-title", "data-done": String(Boolean(curve?.done)) },
        `Faithfulness curve (wb.faithfulness_curve): ${sizes.length}/${curve?.target?.length ?? 0} sizes${curve?.done ? "" : " — measuring a size at a time"}`,
      ),
      svg,
    );
    this.renderNode();
  }

  private renderChecks(): void {
    clear(this.inspectBox);
    const x = this.model.get("inspected");
    if (x?.name) {
      const node = x.kind === "node";
      this.inspectBox.append(
        h("div", { class: "wb-subtitle", "data-testid": "wb-circuit-inspect-title" }, `${node ? "Node" : "Edge"} ${x.name}${x.column != null && node ? ` @ ${x.column}` : ""}: exact vs estimate`),
        h(
          "table",
          { class: "wb-compare" },
          h(
            "tr",
            {},
            h("td", {}, node ? `exact: wb.patch (${x.site}) over ${x.n} examples, patched − corrupt` : `exact: wb.edge_patch over ${x.n} examples, .raw − .corrupt`),
            h("td", { "data-testid": "wb-circuit-exact" }, signed(x.exact, 4)),
          ),
          h(
            "tr",
            {},
            h("td", {}, node ? (x.site === "k+v" ? "estimate: the edges into its k and v" : "estimate: graph.node_scores (its edges out)") : "estimate: graph.score(edge)"),
            h("td", { "data-testid": "wb-circuit-estimate" }, signed(x.estimate, 4)),
          ),
          h("tr", {}, h("td", {}, "normalised (1 = clean, 0 = corrupt)"), h("td", {}, fmt(x.normalized ?? Number.NaN, 3))),
        ),
      );
    }
    clear(this.checksBox);
    const checks = this.model.get("checks") ?? [];
    if (checks.length > 1) {
      const t = h("table", { class: "wb-compare", "data-testid": "wb-circuit-checks-table" });
      t.append(h("tr", {}, h("th", {}, "checked"), h("th", {}, "estimate"), h("th", {}, "exact")));
      for (const c of checks.slice(-10).reverse()) t.append(h("tr", {}, h("td", {}, c.name), h("td", {}, signed(c.estimate)), h("td", {}, signed(c.exact))));
      this.checksBox.append(h("div", { class: "wb-subtitle" }, `Checks (${checks.length})`), t);
    }
  }

  title(): string {
    const g = this.model.get("graph");
    const cut = this.model.get("circuit");
    return `Circuit · ${(g?.method ?? "").toUpperCase()} · ${cut?.size ?? "?"} edges (top ${this.model.get("n")})`;
  }

  figures(): Figure[] {
    const figs: Figure[] = [];
    const g = this.info;
    if (g) {
      const [pi, po] = this.pins();
      const theme0 = this.themeNow();
      const scene = circuitScene(g, this.model.get("circuit") ?? null, theme0, pi, po, null);
      const note = this.drawnNote.textContent ?? "";
      figs.push({
        width: scene.layout.width,
        height: scene.layout.height + 16,
        paint(ctx, theme) {
          ctx.fillStyle = css(theme.fg);
          ctx.font = `11px ${theme.font}`;
          ctx.textAlign = "left";
          ctx.fillText(note, 6, 11);
          ctx.save();
          ctx.translate(0, 16);
          paintScene(ctx, scene, theme);
          ctx.restore();
        },
        svg(theme) {
          const grp = s("g");
          grp.append(s("text", { x: 6, y: 11, "font-size": 11, fill: css(theme.fg) }, note));
          const body = sceneSVG(scene, g.names, theme, false);
          body.setAttribute("transform", "translate(0,16)");
          grp.append(body);
          return grp;
        },
      });
    }
    const f = this.model.get("faithfulness");
    const cut = this.model.get("circuit");
    const measured = Boolean(f && cut && f.key === cut.key);
    const curve = this.model.get("curve") ?? null;
    const theme = this.themeNow();
    const pinned = (this.model.get("pinned_in") ?? []).length + (this.model.get("pinned_out") ?? []).length > 0;
    const c = curveChart(curve, Number(this.model.get("n") ?? 0), measured ? (f?.value ?? null) : null, pinned, this.nEdges(), theme.dark);
    figs.push(drawing(c.width, c.height, c.items));
    const lines = [
      measured
        ? `faithfulness ${fmt(f?.value ?? Number.NaN, 3)}: metric ${fmt(f?.raw ?? Number.NaN, 3)} (clean ${fmt(f?.clean ?? Number.NaN, 3)}, corrupt ${fmt(f?.corrupt ?? Number.NaN, 3)})`
        : "faithfulness: not measured yet",
    ];
    const [pi, po] = this.pins();
    if (pi.size || po.size) lines.push(`pinned in: ${[...pi].join(", ") || "–"} · pinned out: ${[...po].join(", ") || "–"}`);
    for (const ch of (this.model.get("checks") ?? []).slice(-8) as CircuitCheck[]) lines.push(`${ch.kind} ${ch.name}: exact ${signed(ch.exact)}, estimate ${signed(ch.estimate)}`);
    figs.push(textFigure("", lines));
    return figs;
  }
}
