// Canvas heatmap: rows x cols cells, click selects and applies, arrows move, Enter applies,
// optional text in cells, a shaded region (causal cone), drag from one heatmap onto another.
import { css, readTheme, textOn, type RGB, type Theme } from "./colors";
import { clear, h, s, SVG_NS } from "./dom";

export interface Region {
  r0: number;
  c0: number;
  r1: number; // inclusive
  c1: number; // inclusive
}

export interface HeatmapSpec {
  rows: number;
  cols: number;
  values: ArrayLike<number>;
  color: (v: number, theme: Theme) => RGB;
  cellLabel?: (r: number, c: number) => string | null;
  rowLabels?: string[];
  colLabels?: string[];
  rowTitle?: string;
  colTitle?: string;
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
  cellW = 20;
  cellH = 16;
  onSelect: ((r: number, c: number) => void) | null = null;
  onApply: ((r: number, c: number) => void) | null = null;
  onHover: ((cell: [number, number] | null) => void) | null = null;
  /** Set on a drop target: called when a cell of another heatmap is dropped on a cell of this one. */
  onDrop: ((src: Heatmap, from: [number, number], to: [number, number]) => void) | null = null;
  draggable = false;
  /** When false a click only selects; Enter applies. */
  applyOnClick = true;
  lastDrawMs = 0;
  private tip: HTMLElement;
  private rowBox: HTMLElement;
  private colBox: HTMLElement;
  private theme: Theme | null = null;
  private dragFrom: { cell: [number, number]; x: number; y: number } | null = null;
  private ghost: HTMLElement | null = null;

  constructor(spec: HeatmapSpec) {
    this.spec = spec;
    this.canvas = h("canvas", { "data-testid": "wb-heatmap", tabindex: 0, class: "wb-canvas", "data-lm-suppress-shortcuts": "true" });
    this.tip = h("div", { class: "wb-tip", "data-testid": "wb-tooltip", hidden: true });
    this.rowBox = h("div", { class: "wb-rowlabels" });
    this.colBox = h("div", { class: "wb-collabels" });
    const grid = h("div", { class: "wb-hm-grid" }, h("div", { class: "wb-hm-corner" }), this.colBox, this.rowBox, h("div", { class: "wb-hm-cell" }, this.canvas));
    this.el = h("div", { class: "wb-heatmap" }, grid, this.tip);
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
    const theme = (this.theme = readTheme(this.el.isConnected ? this.el : document.body));
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
    const ctx = c.getContext("2d");
    if (ctx && rows > 0 && cols > 0) {
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      this.paint(ctx, theme, W, H);
    }
    this.drawLabels();
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
          const t = text.length > maxChars ? text.slice(0, Math.max(1, maxChars - 1)) + "…" : text;
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
    if (this.mark) ring(this.mark, theme.dark ? "#ffd54f" : "#e67e00");
    if (this.selected) ring(this.selected, css(theme.fg));
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
    if (sp.rowTitle) this.rowBox.setAttribute("title", sp.rowTitle);
    if (sp.colTitle) this.colBox.setAttribute("title", sp.colTitle);
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
        case "ArrowUp": nr = Math.max(0, r - 1); break;
        case "ArrowDown": nr = Math.min(rows - 1, r + 1); break;
        case "ArrowLeft": nc = Math.max(0, col - 1); break;
        case "ArrowRight": nc = Math.min(cols - 1, col + 1); break;
        case "Enter":
          ev.preventDefault();
          ev.stopPropagation();
          if (this.selected) this.onApply?.(r, col);
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
    const under = document.elementFromPoint(e.clientX, e.clientY);
    const target = under ? registry.get(under) : undefined;
    if (!target || target === this || !target.onDrop) return;
    const to = target.cellAt(e.clientX, e.clientY);
    if (to) target.onDrop(this, from.cell, to);
  }

  /** PNG data URL of the heatmap with its row labels and a title. */
  toPNG(title = ""): string {
    const theme = this.theme ?? readTheme(document.body);
    const padL = 48;
    const padT = title ? 24 : 6;
    const W = this.spec.cols * this.cellW;
    const H = this.spec.rows * this.cellH;
    const out = document.createElement("canvas");
    out.width = W + padL + 6;
    out.height = H + padT + 6;
    const ctx = out.getContext("2d");
    if (!ctx) return "";
    ctx.fillStyle = css(theme.bg);
    ctx.fillRect(0, 0, out.width, out.height);
    ctx.drawImage(this.canvas, padL, padT, W, H);
    ctx.fillStyle = css(theme.fg);
    ctx.font = `11px ${theme.font}`;
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    const step = Math.max(1, Math.ceil(12 / this.cellH));
    for (let r = 0; r < this.spec.rows; r += step) ctx.fillText(this.spec.rowLabels?.[r] ?? String(r), padL - 4, padT + r * this.cellH + this.cellH / 2);
    if (title) {
      ctx.textAlign = "left";
      ctx.font = `bold 12px ${theme.font}`;
      ctx.fillText(title, padL, 12);
    }
    return out.toDataURL("image/png");
  }

  /** Standalone SVG of the heatmap (vector cells and labels). */
  toSVG(title = ""): SVGSVGElement {
    const theme = this.theme ?? readTheme(document.body);
    const sp = this.spec;
    const padL = 48;
    const padT = title ? 24 : 6;
    const W = sp.cols * this.cellW;
    const H = sp.rows * this.cellH;
    const svg = document.createElementNS(SVG_NS, "svg") as SVGSVGElement;
    svg.setAttribute("xmlns", SVG_NS);
    svg.setAttribute("width", String(W + padL + 6));
    svg.setAttribute("height", String(H + padT + 6));
    svg.setAttribute("font-family", "sans-serif");
    svg.append(s("rect", { x: 0, y: 0, width: W + padL + 6, height: H + padT + 6, fill: css(theme.bg) }));
    if (title) svg.append(s("text", { x: padL, y: 14, "font-size": 12, "font-weight": "bold", fill: css(theme.fg) }, title));
    const g = s("g", { transform: `translate(${padL},${padT})` });
    const labels = sp.cellLabel && this.cellW >= 22 && this.cellH >= 12;
    for (let r = 0; r < sp.rows; r++) {
      for (let c = 0; c < sp.cols; c++) {
        const rgb = sp.color(sp.values[r * sp.cols + c], theme);
        g.append(s("rect", { x: c * this.cellW, y: r * this.cellH, width: this.cellW, height: this.cellH, fill: css(rgb) }));
        if (labels) {
          const t = sp.cellLabel!(r, c);
          if (t) g.append(s("text", { x: c * this.cellW + this.cellW / 2, y: r * this.cellH + this.cellH * 0.7, "font-size": Math.min(11, this.cellH - 3), "text-anchor": "middle", fill: textOn(rgb, theme) }, t.slice(0, 8)));
        }
      }
      if (sp.rowLabels) svg.append(s("text", { x: padL - 4, y: padT + r * this.cellH + this.cellH * 0.7, "font-size": 10, "text-anchor": "end", fill: css(theme.fg) }, sp.rowLabels[r] ?? ""));
    }
    svg.append(g);
    return svg;
  }
}
