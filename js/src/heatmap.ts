// Canvas heatmap: rows x cols cells, click selects and applies, arrows move, Enter applies,
// optional text in cells, a shaded region (causal cone), drag from one heatmap onto another.
import { css, readTheme, textOn, type RGB, type Theme } from "./colors";
import { clear, h, s, SVG_NS } from "./dom";
import type { Figure } from "./export";

export interface Region {
  r0: number;
  c0: number;
  r1: number; // inclusive
  c1: number; // inclusive
}

/** The colour legend under a heatmap: the value range of its colour scale and what the values are. */
export interface Legend {
  lo: number;
  hi: number;
  /** What a value means, with its unit (e.g. "normalised effect (1 = clean, 0 = corrupt)"). */
  label: string;
  /** Tick texts at lo and hi when the values are transformed (e.g. a log rank). */
  loText?: string;
  hiText?: string;
  /** What a cell with no value (NaN) means, shown with its colour after the label (e.g. "no path"). */
  nanText?: string;
}

/** An outlined cell and why it is outlined (a member of the set, or a receiver). */
export interface Outline {
  cell: [number, number];
  role: "set" | "receiver";
}

/** Outline colours, readable on the theme's background. */
export function outlineColor(role: Outline["role"], dark: boolean): string {
  if (role === "receiver") return dark ? "#f48fb1" : "#ad1457";
  return dark ? "#4fc3f7" : "#0069c2";
}

export interface HeatmapSpec {
  rows: number;
  cols: number;
  values: ArrayLike<number>;
  color: (v: number, theme: Theme) => RGB;
  cellLabel?: (r: number, c: number) => string | null;
  rowLabels?: string[];
  colLabels?: string[];
  /** Axis titles, drawn in the corner (rows) and above the column labels, and in exports. */
  rowTitle?: string;
  colTitle?: string;
  legend?: Legend;
  tooltip?: (r: number, c: number) => string[];
  drawCell?: (ctx: CanvasRenderingContext2D, r: number, c: number, x: number, y: number, w: number, hgt: number) => void;
  /** Drawn over the cell colours, under labels and marks (e.g. attention thumbnails). */
  overlay?: (ctx: CanvasRenderingContext2D, W: number, H: number, cellW: number, cellH: number) => void;
  cellW?: number;
  cellH?: number;
  /** Never narrower than this while the canvas stays under 16000 px: the heatmap scrolls instead (cell text stays). */
  minCellW?: number;
  maxWidth?: number;
  name?: string;
}

const LEGEND_W = 160;

/** A legend tick: few digits, no float noise. */
export function tick(v: number): string {
  if (!Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e4) ? v.toExponential(1) : String(Number(v.toPrecision(3)));
}

const registry = new WeakMap<Element, Heatmap>();
const live = new Set<Heatmap>();
let themeObserver: MutationObserver | null = null;

/** Canvas colours come from the theme at draw time: redraw every live heatmap when the theme changes. */
function watchTheme(): void {
  if (themeObserver || typeof MutationObserver === "undefined" || !document.body) return;
  themeObserver = new MutationObserver(() => {
    // the new theme's CSS variables apply after its stylesheet loads: redraw now and shortly after
    const redraw = () => {
      for (const hm of live) {
        if (hm.el.isConnected) hm.draw();
        else live.delete(hm);
      }
    };
    redraw();
    setTimeout(redraw, 300);
    setTimeout(redraw, 1200);
  });
  themeObserver.observe(document.body, { attributes: true, attributeFilter: ["class", "data-jp-theme-light", "data-jp-theme-name"] });
}

export class Heatmap {
  readonly el: HTMLElement;
  readonly canvas: HTMLCanvasElement;
  spec: HeatmapSpec;
  selected: [number, number] | null = null;
  shade: Region | null = null;
  mark: [number, number] | null = null;
  /** Cells drawn outlined: the members of a set of cells, or path patching's receivers. */
  outlined: Outline[] = [];
  cellW = 20;
  cellH = 16;
  onSelect: ((r: number, c: number) => void) | null = null;
  onApply: ((r: number, c: number) => void) | null = null;
  onHover: ((cell: [number, number] | null) => void) | null = null;
  /** Shift-click, Space or Shift+Enter on a cell: add it to a set or take it out. */
  onToggle: ((r: number, c: number) => void) | null = null;
  /** Set on a drop target: called when a cell of another heatmap is dropped on a cell of this one. */
  onDrop: ((src: Heatmap, from: [number, number], to: [number, number]) => void) | null = null;
  draggable = false;
  /** When false a click only selects; Enter applies. */
  applyOnClick = true;
  lastDrawMs = 0;
  private tip: HTMLElement;
  private rowBox: HTMLElement;
  private colBox: HTMLElement;
  private corner: HTMLElement;
  private legendBox: HTMLElement;
  private theme: Theme | null = null;
  private dragFrom: { cell: [number, number]; x: number; y: number } | null = null;
  private ghost: HTMLElement | null = null;

  constructor(spec: HeatmapSpec) {
    this.spec = spec;
    this.canvas = h("canvas", { "data-testid": "wb-heatmap", tabindex: 0, class: "wb-canvas", "data-lm-suppress-shortcuts": "true" });
    this.tip = h("div", { class: "wb-tip", "data-testid": "wb-tooltip", hidden: true });
    this.rowBox = h("div", { class: "wb-rowlabels" });
    this.colBox = h("div", { class: "wb-collabels" });
    this.corner = h("div", { class: "wb-hm-corner", "data-testid": "wb-axis-titles" });
    this.legendBox = h("div", { class: "wb-scale", "data-testid": "wb-legend" });
    const grid = h("div", { class: "wb-hm-grid" }, this.corner, this.colBox, this.rowBox, h("div", { class: "wb-hm-cell" }, this.canvas));
    this.el = h("div", { class: "wb-heatmap" }, grid, this.legendBox, this.tip);
    registry.set(this.canvas, this);
    live.add(this);
    watchTheme();
    this.bind();
  }

  setSpec(spec: HeatmapSpec): void {
    this.spec = spec;
    if (this.selected && (this.selected[0] >= spec.rows || this.selected[1] >= spec.cols)) this.selected = null;
    this.draw();
  }

  private layout(): void {
    const sp = this.spec;
    const maxW = sp.maxWidth ?? 900;
    const wantW = sp.cellW ?? 28;
    this.cellW = Math.max(2, Math.min(wantW, Math.floor(maxW / Math.max(1, sp.cols))));
    if (sp.cellW && sp.cols * sp.cellW <= maxW) this.cellW = sp.cellW;
    if (sp.minCellW && this.cellW < sp.minCellW && sp.cols * sp.minCellW <= 16000) this.cellW = sp.minCellW;
    this.cellH = sp.cellH ?? (sp.rows > 40 ? Math.max(4, Math.floor(600 / sp.rows)) : 16);
  }

  draw(): void {
    const t0 = performance.now();
    const sp = this.spec;
    const theme = readTheme(this.el.isConnected ? this.el : document.body);
    this.theme = theme;
    this.layout();
    const { rows, cols } = sp;
    const W = cols * this.cellW;
    const H = rows * this.cellH;
    const c = this.canvas;
    let dpr = typeof devicePixelRatio === "number" && devicePixelRatio > 0 ? devicePixelRatio : 1;
    if (W * dpr > 16000 || H * dpr > 16000) dpr = 1;
    c.width = Math.max(1, Math.round(W * dpr));
    c.height = Math.max(1, Math.round(H * dpr));
    c.style.width = `${W}px`;
    c.style.height = `${H}px`;
    c.setAttribute("data-rows", String(rows));
    c.setAttribute("data-cols", String(cols));
    if (sp.name) c.setAttribute("aria-label", sp.name);
    if (this.selected) c.setAttribute("data-selected", this.selected.join(","));
    else c.removeAttribute("data-selected");
    c.setAttribute("data-outlined", this.outlined.map((o) => `${o.role}:${o.cell.join(",")}`).join(" "));
    const ctx = c.getContext("2d");
    if (ctx && rows > 0 && cols > 0) {
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      this.paint(ctx, theme, W, H);
    }
    this.drawLabels();
    this.drawLegend(theme);
    this.lastDrawMs = performance.now() - t0;
    c.setAttribute("data-draw-ms", this.lastDrawMs.toFixed(1));
  }

  private paint(ctx: CanvasRenderingContext2D, theme: Theme, W: number, H: number): void {
    const sp = this.spec;
    const { rows, cols } = sp;
    // one pixel per cell, then scaled up without smoothing: fast for 30 x 2048
    const off = document.createElement("canvas");
    off.width = cols;
    off.height = rows;
    const octx = off.getContext("2d");
    if (octx) {
      const img = octx.createImageData(cols, rows);
      const px = img.data;
      for (let i = 0; i < rows * cols; i++) {
        const rgb = sp.color(sp.values[i], theme);
        px[i * 4] = rgb[0];
        px[i * 4 + 1] = rgb[1];
        px[i * 4 + 2] = rgb[2];
        px[i * 4 + 3] = 255;
      }
      octx.putImageData(img, 0, 0);
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(off, 0, 0, W, H);
    }
    const cw = this.cellW;
    const ch = this.cellH;
    if (sp.overlay) sp.overlay(ctx, W, H, cw, ch);
    if (sp.drawCell) {
      for (let r = 0; r < rows; r++) for (let col = 0; col < cols; col++) sp.drawCell(ctx, r, col, col * cw, r * ch, cw, ch);
    }
    this.canvas.setAttribute("data-label-px", "0");
    if (sp.cellLabel && cw >= 22 && ch >= 12) {
      const fs = Math.min(12, ch - 4);
      this.canvas.setAttribute("data-label-px", String(fs));
      ctx.font = `${fs}px ${theme.font}`;
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      const maxChars = Math.max(1, Math.floor((cw - 3) / (fs * 0.58)));
      for (let r = 0; r < rows; r++) {
        for (let col = 0; col < cols; col++) {
          const text = sp.cellLabel(r, col);
          if (!text) continue;
          ctx.fillStyle = textOn(sp.color(sp.values[r * cols + col], theme), theme);
          const t = text.length > maxChars ? `${text.slice(0, Math.max(1, maxChars - 1))}…` : text;
          ctx.fillText(t, col * cw + cw / 2, r * ch + ch / 2 + 0.5);
        }
      }
    }
    if (cw >= 8 && ch >= 8) {
      ctx.strokeStyle = `rgba(${theme.bg.join(",")},0.6)`;
      ctx.lineWidth = 1;
      ctx.beginPath();
      for (let col = 1; col < cols; col++) {
        ctx.moveTo(col * cw + 0.5, 0);
        ctx.lineTo(col * cw + 0.5, H);
      }
      for (let r = 1; r < rows; r++) {
        ctx.moveTo(0, r * ch + 0.5);
        ctx.lineTo(W, r * ch + 0.5);
      }
      ctx.stroke();
    }
    if (this.shade) {
      const g = this.shade;
      const x = g.c0 * cw;
      const y = g.r0 * ch;
      const w = (g.c1 - g.c0 + 1) * cw;
      const hh = (g.r1 - g.r0 + 1) * ch;
      ctx.fillStyle = theme.dark ? "rgba(255,210,80,0.16)" : "rgba(255,170,0,0.16)";
      ctx.fillRect(x, y, w, hh);
      ctx.strokeStyle = theme.dark ? "rgba(255,210,80,0.9)" : "rgba(220,130,0,0.9)";
      ctx.setLineDash([4, 3]);
      ctx.lineWidth = 1.5;
      ctx.strokeRect(x + 0.75, y + 0.75, w - 1.5, hh - 1.5);
      ctx.setLineDash([]);
    }
    const ring = (cell: [number, number], color: string) => {
      ctx.strokeStyle = color;
      ctx.lineWidth = 2;
      ctx.strokeRect(cell[1] * cw + 1, cell[0] * ch + 1, Math.max(2, cw - 2), Math.max(2, ch - 2));
    };
    for (const o of this.outlined) {
      if (o.cell[0] >= rows || o.cell[1] >= cols) continue;
      ctx.setLineDash(o.role === "receiver" ? [3, 2] : []);
      ctx.strokeStyle = outlineColor(o.role, theme.dark);
      ctx.lineWidth = 2.5;
      ctx.strokeRect(o.cell[1] * cw + 1.5, o.cell[0] * ch + 1.5, Math.max(2, cw - 3), Math.max(2, ch - 3));
    }
    ctx.setLineDash([]);
    if (this.mark) ring(this.mark, theme.dark ? "#ffd54f" : "#e67e00");
    if (this.selected) {
      // inside an outline, so that both show
      const sel = this.selected;
      const inset = this.outlined.some((o) => o.cell[0] === sel[0] && o.cell[1] === sel[1]) ? 4 : 1;
      ctx.strokeStyle = css(theme.fg);
      ctx.lineWidth = inset > 1 ? 1.5 : 2;
      ctx.strokeRect(sel[1] * cw + inset, sel[0] * ch + inset, Math.max(2, cw - 2 * inset), Math.max(2, ch - 2 * inset));
    }
  }

  private drawLabels(): void {
    const sp = this.spec;
    clear(this.rowBox);
    clear(this.colBox);
    this.rowBox.style.gridTemplateRows = "";
    const step = Math.max(1, Math.ceil(12 / this.cellH));
    if (sp.rowLabels) {
      for (let r = 0; r < sp.rows; r++) {
        const lab = h("div", { class: "wb-rowlabel" }, r % step === 0 ? (sp.rowLabels[r] ?? "") : "");
        lab.style.height = `${this.cellH}px`;
        lab.style.lineHeight = `${this.cellH}px`;
        this.rowBox.append(lab);
      }
    }
    if (sp.colLabels && this.cellW >= 12) {
      for (let c = 0; c < sp.cols; c++) {
        const lab = h("div", { class: "wb-collabel", title: sp.colLabels[c] ?? "" }, sp.colLabels[c] ?? "");
        lab.style.width = `${this.cellW}px`;
        this.colBox.append(lab);
      }
    }
    clear(this.corner);
    if (sp.colTitle) this.corner.append(h("div", { class: "wb-axis wb-axis-col" }, `${sp.colTitle} →`));
    if (sp.rowTitle) this.corner.append(h("div", { class: "wb-axis wb-axis-row" }, `${sp.rowTitle} ↓`));
  }

  /** The colour bar of `spec.legend`: the scale's own colours from lo to hi, the end values and the label. */
  private drawLegend(theme: Theme): void {
    clear(this.legendBox);
    const lg = this.spec.legend;
    this.legendBox.hidden = !lg || this.spec.rows === 0;
    if (!lg || this.spec.rows === 0) return;
    const bar = h("canvas", { class: "wb-scale-bar", "data-testid": "wb-legend-bar", width: LEGEND_W, height: 10 });
    const ctx = bar.getContext("2d");
    if (ctx) {
      for (let x = 0; x < LEGEND_W; x++) {
        ctx.fillStyle = css(this.spec.color(lg.lo + ((lg.hi - lg.lo) * (x + 0.5)) / LEGEND_W, theme));
        ctx.fillRect(x, 0, 1, 10);
      }
    }
    this.legendBox.append(
      h("span", { class: "wb-scale-tick" }, lg.loText ?? tick(lg.lo)),
      bar,
      h("span", { class: "wb-scale-tick" }, lg.hiText ?? tick(lg.hi)),
      h("span", { class: "wb-scale-label", "data-testid": "wb-legend-label" }, lg.label),
    );
    if (lg.nanText) {
      const swatch = h("span", { class: "wb-scale-nan-swatch" });
      swatch.style.cssText = `display:inline-block;width:10px;height:10px;margin:0 4px 0 10px;vertical-align:middle;background:${css(this.spec.color(Number.NaN, theme))}`;
      this.legendBox.append(h("span", { class: "wb-scale-nan", "data-testid": "wb-legend-nan" }, swatch, lg.nanText));
    }
  }

  cellAt(clientX: number, clientY: number): [number, number] | null {
    const rect = this.canvas.getBoundingClientRect();
    const x = clientX - rect.left;
    const y = clientY - rect.top;
    if (x < 0 || y < 0 || x >= rect.width || y >= rect.height) return null;
    const c = Math.floor((x / rect.width) * this.spec.cols);
    const r = Math.floor((y / rect.height) * this.spec.rows);
    if (r < 0 || c < 0 || r >= this.spec.rows || c >= this.spec.cols) return null;
    return [r, c];
  }

  select(r: number, c: number, apply: boolean): void {
    this.selected = [r, c];
    this.draw();
    this.onSelect?.(r, c);
    if (apply) this.onApply?.(r, c);
  }

  setSelected(cell: [number, number] | null): void {
    this.selected = cell;
    this.draw();
  }

  private showTip(cell: [number, number] | null, ev?: MouseEvent): void {
    if (!cell || !this.spec.tooltip) {
      this.tip.hidden = true;
      return;
    }
    const lines = this.spec.tooltip(cell[0], cell[1]);
    clear(this.tip);
    for (const line of lines) this.tip.append(h("div", {}, line));
    this.tip.hidden = false;
    // live in the view's root (position: relative) so the heatmap's own scroll box does not clip it
    const host = (this.el.closest(".wb-root") as HTMLElement | null) ?? this.el;
    if (this.tip.parentElement !== host) host.append(this.tip);
    if (ev) {
      const box = host.getBoundingClientRect();
      this.tip.style.left = `${ev.clientX - box.left + host.scrollLeft + 14}px`;
      this.tip.style.top = `${ev.clientY - box.top + host.scrollTop + 14}px`;
    }
  }

  private bind(): void {
    const c = this.canvas;
    let lastHover = "";
    c.addEventListener("click", (ev) => {
      const cell = this.cellAt(ev.clientX, ev.clientY);
      if (!cell) return;
      c.focus({ preventScroll: true });
      if (ev.shiftKey && this.onToggle) {
        this.select(cell[0], cell[1], false);
        this.onToggle(cell[0], cell[1]);
        return;
      }
      this.select(cell[0], cell[1], this.applyOnClick);
    });
    c.addEventListener("mousemove", (ev) => {
      const cell = this.cellAt(ev.clientX, ev.clientY);
      const key = cell ? cell.join(",") : "";
      this.showTip(cell, ev);
      if (key !== lastHover) {
        lastHover = key;
        this.onHover?.(cell);
      }
    });
    c.addEventListener("mouseleave", () => {
      lastHover = "";
      this.showTip(null);
      this.onHover?.(null);
    });
    c.addEventListener("keydown", (ev) => {
      const { rows, cols } = this.spec;
      const [r, col] = this.selected ?? [0, 0];
      let nr = r;
      let nc = col;
      switch (ev.key) {
        case "ArrowUp":
          nr = Math.max(0, r - 1);
          break;
        case "ArrowDown":
          nr = Math.min(rows - 1, r + 1);
          break;
        case "ArrowLeft":
          nc = Math.max(0, col - 1);
          break;
        case "ArrowRight":
          nc = Math.min(cols - 1, col + 1);
          break;
        case "Enter":
        case " ":
          ev.preventDefault();
          ev.stopPropagation();
          if (!this.selected) return;
          if ((ev.key === " " || ev.shiftKey) && this.onToggle) this.onToggle(r, col);
          else if (ev.key === "Enter") this.onApply?.(r, col);
          return;
        default:
          return;
      }
      ev.preventDefault();
      ev.stopPropagation(); // the notebook must not also move its cell selection
      this.select(nr, nc, false);
    });
    c.addEventListener("pointerdown", (ev) => {
      if (!this.draggable) return;
      const cell = this.cellAt(ev.clientX, ev.clientY);
      if (!cell) return;
      this.dragFrom = { cell, x: ev.clientX, y: ev.clientY };
      const move = (e: PointerEvent) => this.dragMove(e);
      const up = (e: PointerEvent) => {
        window.removeEventListener("pointermove", move);
        window.removeEventListener("pointerup", up);
        this.dragEnd(e);
      };
      window.addEventListener("pointermove", move);
      window.addEventListener("pointerup", up);
    });
  }

  private dragMove(e: PointerEvent): void {
    if (!this.dragFrom) return;
    if (Math.abs(e.clientX - this.dragFrom.x) + Math.abs(e.clientY - this.dragFrom.y) < 5) return;
    if (!this.ghost) {
      const [r, c] = this.dragFrom.cell;
      this.ghost = h("div", { class: "wb-ghost" }, `${this.spec.rowLabels?.[r] ?? r} · ${this.spec.colLabels?.[c] ?? c}`);
      document.body.append(this.ghost);
    }
    this.ghost.style.left = `${e.clientX + 8}px`;
    this.ghost.style.top = `${e.clientY + 8}px`;
  }

  private dragEnd(e: PointerEvent): void {
    const from = this.dragFrom;
    this.dragFrom = null;
    this.ghost?.remove();
    const dragged = this.ghost !== null;
    this.ghost = null;
    if (!from || !dragged) return;
    const root = this.el.getRootNode(); // a shadow root in marimo: the document's elementFromPoint stops at its host
    const under = ("elementFromPoint" in root ? (root as Document | ShadowRoot) : document).elementFromPoint(e.clientX, e.clientY);
    const target = under ? registry.get(under) : undefined;
    if (!target || target === this || !target.onDrop) return;
    const to = target.cellAt(e.clientX, e.clientY);
    if (to) target.onDrop(this, from.cell, to);
  }

  /** Where exports put things: title, column labels, the cells, the legend (all in CSS pixels). */
  private exportLayout(title: string): { padL: number; padT: number; W: number; H: number; legendY: number; width: number; height: number; colLabels: boolean } {
    const sp = this.spec;
    const W = sp.cols * this.cellW;
    const H = sp.rows * this.cellH;
    const colLabels = !!sp.colLabels && this.cellW >= 12;
    const padL = 56;
    const padT = (title ? 22 : 6) + (sp.colTitle ? 14 : 0) + (colLabels ? 52 : 0);
    const legendY = padT + H + 10;
    const height = legendY + (sp.legend ? 30 : 0) + 6;
    const width = Math.max(W + padL + 6, sp.legend ? padL + LEGEND_W + 320 : 0, title ? 7 * title.length + padL : 0);
    return { padL, padT, W, H, legendY, width, height, colLabels };
  }

  /** The heatmap as an export figure: title, axis titles, row and column labels, the colour legend. */
  figure(title = ""): Figure {
    const L = this.exportLayout(title);
    return {
      width: L.width,
      height: L.height,
      paint: (ctx, theme) => this.paintExport(ctx, theme, title),
      svg: (theme) => {
        const svg = this.toSVG(title, theme);
        const g = s("g");
        while (svg.firstChild) g.append(svg.firstChild);
        return g;
      },
    };
  }

  /** PNG data URL of the heatmap as a figure (see `figure`). */
  toPNG(title = ""): string {
    const theme = this.theme ?? readTheme(document.body);
    const L = this.exportLayout(title);
    const scale = 2; // crisp text in papers and slides
    const out = document.createElement("canvas");
    out.width = L.width * scale;
    out.height = L.height * scale;
    const ctx = out.getContext("2d");
    if (!ctx) return "";
    ctx.scale(scale, scale);
    this.paintExport(ctx, theme, title);
    return out.toDataURL("image/png");
  }

  private paintExport(ctx: CanvasRenderingContext2D, theme: Theme, title: string): void {
    const sp = this.spec;
    const L = this.exportLayout(title);
    ctx.fillStyle = css(theme.bg);
    ctx.fillRect(0, 0, L.width, L.height);
    ctx.drawImage(this.canvas, L.padL, L.padT, L.W, L.H);
    ctx.fillStyle = css(theme.fg);
    ctx.textBaseline = "middle";
    if (title) {
      ctx.textAlign = "left";
      ctx.font = `bold 12px ${theme.font}`;
      ctx.fillText(title, 6, 11);
    }
    ctx.font = `10px ${theme.font}`;
    if (sp.colTitle) {
      ctx.textAlign = "left";
      ctx.fillText(`${sp.colTitle} →`, L.padL, (title ? 22 : 6) + 6);
    }
    if (sp.rowTitle) {
      ctx.textAlign = "right";
      ctx.fillText(`${sp.rowTitle} ↓`, L.padL - 4, L.padT - 6);
    }
    ctx.font = `11px ${theme.font}`;
    ctx.textAlign = "right";
    const step = Math.max(1, Math.ceil(12 / this.cellH));
    for (let r = 0; r < sp.rows; r += step) ctx.fillText(sp.rowLabels?.[r] ?? String(r), L.padL - 4, L.padT + r * this.cellH + this.cellH / 2);
    if (L.colLabels) {
      for (let c = 0; c < sp.cols; c++) {
        ctx.save();
        ctx.translate(L.padL + c * this.cellW + this.cellW / 2, L.padT - 4);
        ctx.rotate(-Math.PI / 3);
        ctx.textAlign = "left";
        ctx.fillText(sp.colLabels![c] ?? "", 0, 0);
        ctx.restore();
      }
    }
    const lg = sp.legend;
    if (lg) {
      ctx.font = `10px ${theme.font}`;
      ctx.textAlign = "right";
      ctx.fillText(lg.loText ?? tick(lg.lo), L.padL - 4, L.legendY + 5);
      for (let x = 0; x < LEGEND_W; x++) {
        ctx.fillStyle = css(sp.color(lg.lo + ((lg.hi - lg.lo) * (x + 0.5)) / LEGEND_W, theme));
        ctx.fillRect(L.padL + x, L.legendY, 1, 10);
      }
      ctx.fillStyle = css(theme.fg);
      ctx.textAlign = "left";
      ctx.fillText(lg.hiText ?? tick(lg.hi), L.padL + LEGEND_W + 4, L.legendY + 5);
      ctx.fillText(lg.label, L.padL, L.legendY + 22);
    }
  }

  /** Standalone SVG of the heatmap (vector cells and labels). */
  toSVG(title = "", theme: Theme = this.theme ?? readTheme(document.body)): SVGSVGElement {
    const sp = this.spec;
    const L = this.exportLayout(title);
    const { padL, padT } = L;
    const fg = css(theme.fg);
    const svg = document.createElementNS(SVG_NS, "svg") as SVGSVGElement;
    svg.setAttribute("xmlns", SVG_NS);
    svg.setAttribute("width", String(L.width));
    svg.setAttribute("height", String(L.height));
    svg.setAttribute("font-family", "sans-serif");
    svg.append(s("rect", { x: 0, y: 0, width: L.width, height: L.height, fill: css(theme.bg) }));
    if (title) svg.append(s("text", { x: 6, y: 15, "font-size": 12, "font-weight": "bold", fill: fg }, title));
    if (sp.colTitle) svg.append(s("text", { x: padL, y: (title ? 22 : 6) + 10, "font-size": 10, fill: fg }, `${sp.colTitle} →`));
    if (sp.rowTitle) svg.append(s("text", { x: padL - 4, y: padT - 4, "font-size": 10, "text-anchor": "end", fill: fg }, `${sp.rowTitle} ↓`));
    if (L.colLabels) {
      for (let c = 0; c < sp.cols; c++) {
        const x = padL + c * this.cellW + this.cellW / 2;
        svg.append(s("text", { x, y: padT - 4, "font-size": 10, fill: fg, transform: `rotate(-60 ${x} ${padT - 4})` }, sp.colLabels![c] ?? ""));
      }
    }
    const lg = sp.legend;
    if (lg) {
      const y = L.legendY;
      svg.append(s("text", { x: padL - 4, y: y + 9, "font-size": 10, "text-anchor": "end", fill: fg }, lg.loText ?? tick(lg.lo)));
      const steps = 48;
      for (let i = 0; i < steps; i++) {
        const v = lg.lo + ((lg.hi - lg.lo) * (i + 0.5)) / steps;
        svg.append(s("rect", { x: padL + (i * LEGEND_W) / steps, y, width: LEGEND_W / steps + 0.5, height: 10, fill: css(sp.color(v, theme)) }));
      }
      svg.append(s("text", { x: padL + LEGEND_W + 4, y: y + 9, "font-size": 10, fill: fg }, lg.hiText ?? tick(lg.hi)));
      svg.append(s("text", { x: padL, y: y + 24, "font-size": 10, fill: fg, "data-testid": "wb-legend-label" }, lg.label));
      if (lg.nanText) {
        const nx = padL + LEGEND_W + 40;
        svg.append(s("rect", { x: nx, y, width: 10, height: 10, fill: css(sp.color(Number.NaN, theme)), "data-testid": "wb-legend-nan" }));
        svg.append(s("text", { x: nx + 14, y: y + 9, "font-size": 10, fill: fg }, lg.nanText));
      }
    }
    const g = s("g", { transform: `translate(${padL},${padT})` });
    const labels = sp.cellLabel && this.cellW >= 22 && this.cellH >= 12;
    for (let r = 0; r < sp.rows; r++) {
      for (let c = 0; c < sp.cols; c++) {
        const rgb = sp.color(sp.values[r * sp.cols + c], theme);
        g.append(s("rect", { x: c * this.cellW, y: r * this.cellH, width: this.cellW, height: this.cellH, fill: css(rgb) }));
        if (labels) {
          const t = sp.cellLabel!(r, c);
          if (t)
            g.append(
              s(
                "text",
                { x: c * this.cellW + this.cellW / 2, y: r * this.cellH + this.cellH * 0.7, "font-size": Math.min(11, this.cellH - 3), "text-anchor": "middle", fill: textOn(rgb, theme) },
                t.slice(0, 8),
              ),
            );
        }
      }
      if (sp.rowLabels) svg.append(s("text", { x: padL - 4, y: padT + r * this.cellH + this.cellH * 0.7, "font-size": 10, "text-anchor": "end", fill: css(theme.fg) }, sp.rowLabels[r] ?? ""));
    }
    for (const o of this.outlined) {
      if (o.cell[0] >= sp.rows || o.cell[1] >= sp.cols) continue;
      const [r, c] = o.cell;
      g.append(
        s("rect", {
          x: c * this.cellW + 1.5,
          y: r * this.cellH + 1.5,
          width: Math.max(2, this.cellW - 3),
          height: Math.max(2, this.cellH - 3),
          fill: "none",
          stroke: outlineColor(o.role, theme.dark),
          "stroke-width": 2.5,
          "stroke-dasharray": o.role === "receiver" ? "3 2" : undefined,
          "data-outline": o.role,
        }),
      );
    }
    svg.append(g);
    return svg;
  }
}
