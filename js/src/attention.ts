// AttentionView: layers x heads grid of thumbnails; a click opens the full pattern and a head view.
import { at, maybeUnpack, type NDArray } from "./arrays";
import { css, readTheme, sequential, warm } from "./colors";
import { button, clear, debounce, fmt, h, select } from "./dom";
import { drawing, type Figure, type Item } from "./export";
import { Heatmap } from "./heatmap";
import type { AnyModel } from "./model";
import type { AttentionRequest } from "./protocol";
import type { AttentionTraits } from "./traits";
import { tokenStrip, visibleToken } from "./tokens";
import { View } from "./view";

/** Paint [L, H, S, S] thumbnails into one image (H*S wide, L*S tall), each scaled to its own max. */
export function thumbnailImage(th: NDArray, fg: [number, number, number], bg: [number, number, number]): HTMLCanvasElement {
  const [L, H, S] = th.shape;
  const c = document.createElement("canvas");
  c.width = H * S;
  c.height = L * S;
  const ctx = c.getContext("2d");
  if (!ctx) return c;
  const img = ctx.createImageData(H * S, L * S);
  for (let l = 0; l < L; l++) {
    for (let hd = 0; hd < H; hd++) {
      const base = (l * H + hd) * S * S;
      let mx = 1e-9;
      for (let i = 0; i < S * S; i++) mx = Math.max(mx, th.data[base + i]);
      for (let q = 0; q < S; q++) {
        for (let k = 0; k < S; k++) {
          const t = Math.sqrt(Math.max(0, th.data[base + q * S + k]) / mx);
          const o = ((l * S + q) * H * S + hd * S + k) * 4;
          img.data[o] = bg[0] + (fg[0] - bg[0]) * t;
          img.data[o + 1] = bg[1] + (fg[1] - bg[1]) * t;
          img.data[o + 2] = bg[2] + (fg[2] - bg[2]) * t;
          img.data[o + 3] = 255;
        }
      }
    }
  }
  ctx.putImageData(img, 0, 0);
  return c;
}

/** The head view as an export figure: query tokens left, key tokens right, a line per weight (width and opacity
 *  grow with it); with a focused query row only that row's lines. */
export function headViewFigure(heading: string, toks: string[], pat: NDArray, focusRow: number | null, color: [number, number, number]): Figure {
  const T = pat.shape[0];
  const rowH = 16;
  const top = heading ? 22 : 4;
  const tokW = Math.min(180, 10 + 7 * Math.max(1, ...toks.map((t) => visibleToken(t).length)));
  const linesW = 140;
  const items: Item[] = heading ? [{ t: "text", x: 6, y: 14, text: heading, size: 12, bold: true }] : [];
  const rows = focusRow === null ? Array.from({ length: T }, (_, i) => i) : [focusRow];
  for (const q of rows) {
    for (let k = 0; k <= q && k < T; k++) {
      const w = pat.data[q * T + k];
      if (w < (focusRow === null ? 0.05 : 0.005)) continue;
      items.push({
        t: "line",
        x1: tokW + 4,
        y1: top + q * rowH + rowH / 2,
        x2: tokW + 4 + linesW,
        y2: top + k * rowH + rowH / 2,
        color: `rgba(${color.join(",")},${Math.min(1, w).toFixed(3)})`,
        width: 1 + 2 * w,
      });
    }
  }
  for (let i = 0; i < T; i++) {
    const y = top + i * rowH + rowH * 0.7;
    const text = visibleToken(toks[i] ?? "");
    items.push({ t: "text", x: tokW, y, text, size: 11, anchor: "end", bold: i === focusRow });
    items.push({ t: "text", x: tokW + linesW + 8, y, text, size: 11 });
  }
  return drawing(2 * tokW + linesW + 12, top + T * rowH + 4, items);
}

/** The head detectors the view can colour by: [trait value, label]. */
export const DETECTORS: [string, string][] = [
  ["", "none"],
  ["induction", "induction"],
  ["previous_token", "previous token"],
  ["duplicate_token", "duplicate token"],
];

export class AttentionView extends View<AttentionTraits, AttentionRequest> {
  grid: Heatmap;
  private detectorSel: HTMLSelectElement;
  private topBox: HTMLElement;
  pattern: Heatmap;
  private stripBox: HTMLElement;
  private detail: HTMLElement;
  private headView: HTMLElement;
  private thumbs: HTMLCanvasElement | null = null;
  private focusRow: number | null = null;

  constructor(model: AnyModel<AttentionTraits>, el: HTMLElement) {
    super(model, el, "Attention");
    this.stripBox = h("div");
    this.grid = new Heatmap({ rows: 0, cols: 0, values: new Float32Array(0), color: () => [0, 0, 0] });
    this.grid.canvas.setAttribute("data-role", "heads");
    this.grid.onApply = (l, hd) => {
      this.setTrait("selected", [l, hd]);
      this.send("head", { layer: l, head: hd });
    };
    this.pattern = new Heatmap({ rows: 0, cols: 0, values: new Float32Array(0), color: () => [0, 0, 0] });
    this.pattern.canvas.setAttribute("data-role", "pattern");
    this.pattern.applyOnClick = false;
    const hl = debounce((r: number | null) => this.highlight(r), 16);
    this.pattern.onHover = (cell) => hl(cell ? cell[0] : null);
    this.pattern.onSelect = (r) => this.highlight(r);
    this.headView = h("div", { class: "wb-headview", "data-testid": "wb-headview" });
    this.detail = h("div", { class: "wb-attn-detail" });
    this.detectorSel = select(DETECTORS, String(this.model.get("detector") ?? ""), (v) => this.setTrait("detector", v), {
      "data-testid": "wb-detector",
      title: "Colour each head by a detector's score (mean attention on the detector's target keys, on repeated random tokens)",
    });
    this.topBox = h("div", { class: "wb-detector-top", "data-testid": "wb-detector-list" });
    const controls = h("div", { class: "wb-row" }, h("label", {}, "colour heads by: ", this.detectorSel));
    this.body.append(
      this.promptRow(),
      this.stripBox,
      h("div", { class: "wb-panes" }, h("div", { class: "wb-pane" }, h("div", { class: "wb-subtitle" }, "Layers × heads (click a head)"), controls, this.grid.el, this.topBox), this.detail),
    );
    this.listen("thumbs", () => this.renderGrid());
    this.listen("tokens", () => this.renderGrid());
    this.listen("detector", () => {
      this.detectorSel.value = String(this.model.get("detector") ?? "");
      this.renderGrid();
    });
    this.listen("detector_scores", () => this.renderGrid());
    this.listen("pattern", () => this.renderDetail());
    this.followSelection(this.grid);
    this.renderGrid();
    this.renderDetail();
  }

  title(): string {
    const p = this.model.get("pattern");
    return p?.data ? `Attention L${p.layer} H${p.head} · prompt "${String(this.model.get("prompt") ?? "")}"`.slice(0, 200) : "Attention heads";
  }
  /** Export: the open head's pattern and its head view, or the grid of heads when none is open. */
  figures(): Figure[] {
    const p = this.model.get("pattern");
    const pat = p?.data ? maybeUnpack(p.data) : null;
    if (!p || !pat) return [this.grid.figure("Layers × heads")];
    const toks = p.tokens ?? this.model.get("tokens") ?? [];
    const theme = readTheme(this.el.isConnected ? this.el : document.body);
    const heading = this.focusRow === null ? "Head view" : `Head view: query ${this.focusRow} (${visibleToken(toks[this.focusRow] ?? "")})`;
    return [this.pattern.figure(`Layer ${p.layer}, head ${p.head}: query (rows) × key (columns)`), headViewFigure(heading, toks, pat, this.focusRow, theme.dark ? [120, 180, 255] : [20, 70, 160])];
  }

  private renderGrid(): void {
    const toks = this.model.get("tokens") ?? [];
    clear(this.stripBox);
    this.stripBox.append(tokenStrip(toks, { label: "tokens:" }));
    const th = maybeUnpack(this.model.get("thumbs"));
    const L = Number(this.model.get("n_layers") ?? 0);
    const H = Number(this.model.get("n_heads") ?? 0);
    let key = "";
    const image = (): HTMLCanvasElement | null => {
      // rebuilt when the theme changes, so the thumbnails follow light/dark
      const theme = readTheme(this.el.isConnected ? this.el : document.body);
      const k = theme.bg.join(",");
      if (th && (k !== key || !this.thumbs)) {
        this.thumbs = thumbnailImage(th, theme.dark ? [120, 180, 255] : [20, 70, 160], theme.bg);
        key = k;
      }
      return th ? this.thumbs : null;
    };
    this.thumbs = null;
    const det = this.detectorState(L, H);
    // with a detector, each cell is tinted by the head's score and the thumbnail sits inside a wider ring of it
    const inset = det.scores ? 5 : 2;
    this.grid.setSpec({
      rows: L,
      cols: H,
      values: det.scores ?? new Float32Array(L * H),
      color: det.scores ? (v, t) => warm(t)(v) : (_v, t) => t.bg,
      overlay: th
        ? (ctx, _W, _H, cw, ch) => {
            const img = image();
            if (!img) return;
            const S = th.shape[2];
            ctx.imageSmoothingEnabled = false;
            for (let l = 0; l < L; l++) for (let hd = 0; hd < H; hd++) ctx.drawImage(img, hd * S, l * S, S, S, hd * cw + inset, l * ch + inset, cw - 2 * inset, ch - 2 * inset);
          }
        : undefined,
      rowLabels: Array.from({ length: L }, (_, i) => `L${i}`),
      colLabels: Array.from({ length: H }, (_, i) => `H${i}`),
      legend: det.scores ? { lo: 0, hi: 1, label: `${det.label} score (ring colour)` } : undefined,
      tooltip: (l, hd) => (det.scores ? [`layer ${l}, head ${hd}`, `${det.label} score ${fmt(det.scores[l * H + hd], 2)}`, "click to open"] : [`layer ${l}, head ${hd}`, "click to open"]),
      cellW: 30,
      cellH: 30,
      maxWidth: 420,
      name: "attention heads",
    });
    const sel = this.model.get("selected") ?? [];
    if (sel.length === 2 && sel[0] < L && sel[1] < H) this.grid.setSelected([sel[0], sel[1]]);
    this.grid.canvas.setAttribute("data-detector", det.scores ? det.name : "");
    this.renderTop(det);
  }

  /** The chosen detector, its label and (once the kernel sent them for it) its scores [L * H]. */
  private detectorState(L: number, H: number): { name: string; label: string; scores: Float32Array | null; top: [number, number, number][]; source: string } {
    const name = String(this.model.get("detector") ?? "");
    const label = DETECTORS.find(([v]) => v === name)?.[1] ?? name;
    const got = this.model.get("detector_scores");
    const arr = got?.scores ? maybeUnpack(got.scores) : null;
    const ok = Boolean(name) && got?.name === name && arr !== null && arr.data.length === L * H;
    return { name, label, scores: ok && arr ? Float32Array.from(arr.data) : null, top: ok ? (got?.top ?? []) : [], source: ok ? String(got?.source ?? "") : "" };
  }

  /** The top heads of the chosen detector as buttons (a click opens the head), or what is pending. */
  private renderTop(det: ReturnType<AttentionView["detectorState"]>): void {
    clear(this.topBox);
    if (!det.name) return;
    if (!det.scores) {
      this.topBox.append(h("div", { class: "wb-hint" }, `computing ${det.label} scores…`));
      return;
    }
    const list = h("div", { class: "wb-row", "data-testid": "wb-detector-heads" });
    for (const [l, hd, v] of det.top) {
      list.append(
        button(
          `L${l}H${hd} ${fmt(v, 2)}`,
          () => {
            this.setTrait("selected", [l, hd]);
            this.grid.setSelected([l, hd]);
            this.send("head", { layer: l, head: hd });
          },
          { "data-testid": "wb-detector-head", "data-layer": l, "data-head": hd, title: `open layer ${l}, head ${hd}` },
        ),
      );
    }
    this.topBox.append(h("div", { class: "wb-subtitle" }, `Top ${det.label} heads`), list, h("div", { class: "wb-caption" }, `on ${det.source}`));
  }

  private renderDetail(): void {
    clear(this.detail);
    const p = this.model.get("pattern");
    const pat = p ? maybeUnpack(p.data) : null;
    if (!p || !pat) {
      this.detail.append(h("div", { class: "wb-hint" }, "Click a head to see its full query × key pattern and head view."));
      return;
    }
    const toks = p.tokens ?? this.model.get("tokens") ?? [];
    const T = pat.shape[0];
    let mx = 1e-9;
    for (let i = 0; i < pat.data.length; i++) mx = Math.max(mx, pat.data[i]);
    this.pattern.shade = null;
    this.pattern.setSpec({
      rows: T,
      cols: T,
      values: pat.data,
      color: (v, th) => sequential(th, 0, mx)(v),
      rowLabels: toks.map(visibleToken),
      colLabels: toks.map(visibleToken),
      rowTitle: "query",
      colTitle: "key",
      legend: { lo: 0, hi: mx, label: "attention probability" },
      tooltip: (q, k) => [`query ${q} (${visibleToken(toks[q] ?? "")}) → key ${k} (${visibleToken(toks[k] ?? "")})`, `weight ${fmt(at(pat, q, k))}`],
      cellW: 22,
      cellH: T > 64 ? Math.max(2, Math.floor(512 / T)) : 18,
      maxWidth: 520,
      overlay: () => this.drawLines(), // head-view lines follow the theme with the pattern
      name: `pattern L${p.layer} H${p.head}`,
    });
    this.detail.append(
      h("div", { class: "wb-subtitle", "data-testid": "wb-pattern-title" }, `Layer ${p.layer}, head ${p.head}: query (rows) × key (columns)`),
      this.pattern.el,
      h("div", { class: "wb-subtitle" }, "Head view (hover a token)"),
      this.headView,
    );
    this.buildHeadView(toks, pat);
  }

  private headTokens: HTMLElement[][] = [[], []];
  private lines: HTMLCanvasElement | null = null;
  private pat: NDArray | null = null;

  private buildHeadView(toks: string[], pat: NDArray): void {
    clear(this.headView);
    this.pat = pat;
    const T = pat.shape[0];
    const rowH = 16;
    const left = h("div", { class: "wb-hv-col" });
    const right = h("div", { class: "wb-hv-col" });
    this.headTokens = [[], []];
    for (let i = 0; i < T; i++) {
      const a = h("div", { class: "wb-hv-tok", "data-testid": "wb-token", "data-pos": i, "data-side": "query" }, visibleToken(toks[i] ?? ""));
      const b = h("div", { class: "wb-hv-tok", "data-pos": i, "data-side": "key" }, visibleToken(toks[i] ?? ""));
      a.style.height = b.style.height = `${rowH}px`;
      a.addEventListener("mouseenter", () => this.highlight(i));
      left.append(a);
      right.append(b);
      this.headTokens[0].push(a);
      this.headTokens[1].push(b);
    }
    left.addEventListener("mouseleave", () => this.highlight(null));
    this.lines = h("canvas", { class: "wb-hv-lines" });
    this.lines.width = 140;
    this.lines.height = T * rowH;
    this.lines.style.height = `${T * rowH}px`;
    this.headView.append(left, this.lines, right);
    this.drawLines();
  }

  /** Highlight a query row in the pattern and its lines in the head view. */
  highlight(row: number | null): void {
    if (this.focusRow === row) return;
    const prev = this.focusRow;
    this.focusRow = row;
    if (prev !== null) this.headTokens[0][prev]?.classList.remove("wb-hl");
    if (row !== null) this.headTokens[0][row]?.classList.add("wb-hl");
    const T = this.pat?.shape[0] ?? 0;
    this.pattern.shade = row === null ? null : { r0: row, r1: row, c0: 0, c1: T - 1 };
    this.pattern.draw(); // its overlay redraws the head-view lines
    this.pattern.canvas.setAttribute("data-highlight", row === null ? "" : String(row));
  }

  private drawLines(): void {
    const c = this.lines;
    const pat = this.pat;
    if (!c || !pat) return;
    const ctx = c.getContext("2d");
    if (!ctx) return;
    const T = pat.shape[0];
    const rowH = 16;
    const theme = readTheme(this.el.isConnected ? this.el : document.body);
    ctx.clearRect(0, 0, c.width, c.height);
    const color = theme.dark ? [120, 180, 255] : [20, 70, 160];
    const rows = this.focusRow === null ? Array.from({ length: T }, (_, i) => i) : [this.focusRow];
    for (const q of rows) {
      for (let k = 0; k <= q && k < T; k++) {
        const w = pat.data[q * T + k];
        if (w < (this.focusRow === null ? 0.05 : 0.005)) continue;
        ctx.strokeStyle = `rgba(${color.join(",")},${Math.min(1, w).toFixed(3)})`;
        ctx.lineWidth = 1 + 2 * w;
        ctx.beginPath();
        ctx.moveTo(0, q * rowH + rowH / 2);
        ctx.lineTo(c.width, k * rowH + rowH / 2);
        ctx.stroke();
      }
    }
    for (let k = 0; k < T; k++) {
      const b = this.headTokens[1][k];
      if (!b) continue;
      const w = this.focusRow === null ? 0 : pat.data[this.focusRow * T + k];
      b.style.background = w > 0.005 ? `rgba(${color.join(",")},${Math.min(0.8, w).toFixed(3)})` : "";
    }
    void css;
  }
}
