// LensView: layers x tokens heatmap of the logit lens.
import { at, finiteRange, maybeUnpack, type NDArray } from "./arrays";
import { sequential } from "./colors";
import { chartFigure, lineChart, type Series } from "./chart";
import { button, clear, debounce, fmt, h, select } from "./dom";
import { Heatmap, type Legend } from "./heatmap";
import type { Figure } from "./export";
import type { AnyModel } from "./model";
import type { LensTraits, Maybe, PackedLens } from "./traits";
import { tokenStrip, visibleToken } from "./tokens";
import { View } from "./view";

export interface LensData {
  tokens: string[];
  topIds: NDArray;
  topProbs: NDArray;
  entropy: NDArray | null;
  kl: NDArray | null;
  idText: Record<string, string>;
  pinned: Record<string, { prob: NDArray | null; rank: NDArray | null }>;
  L: number;
  T: number;
  k: number;
}

export function decodeLens(raw: Maybe<PackedLens> | null | undefined): LensData | null {
  if (!raw?.top_ids || !raw.top_probs) return null;
  const topIds = maybeUnpack(raw.top_ids)!;
  const topProbs = maybeUnpack(raw.top_probs)!;
  const [L, T, k] = topIds.shape;
  const pinned: LensData["pinned"] = {};
  for (const [tok, v] of Object.entries(raw.pinned ?? {})) pinned[tok] = { prob: maybeUnpack(v?.prob), rank: maybeUnpack(v?.rank) };
  return { tokens: raw.tokens ?? [], topIds, topProbs, entropy: maybeUnpack(raw.entropy), kl: maybeUnpack(raw.kl), idText: raw.id_text ?? {}, pinned, L, T, k };
}

export function tokText(d: LensData, id: number): string {
  return d.idText[String(id)] ?? `#${id}`;
}

export function top1Label(d: LensData) {
  return (r: number, c: number) => visibleToken(tokText(d, at(d.topIds, r, c, 0)));
}

export function lensTooltip(d: LensData, rowName = "layer") {
  return (r: number, c: number): string[] => {
    const lines = [`${rowName} ${r}, position ${c} (${visibleToken(d.tokens[c] ?? "")})`];
    for (let j = 0; j < d.k; j++) lines.push(`${j + 1}. ${visibleToken(tokText(d, at(d.topIds, r, c, j)))}  ${fmt(at(d.topProbs, r, c, j))}`);
    if (d.entropy) lines.push(`entropy ${fmt(at(d.entropy, r, c))}`);
    return lines;
  };
}

/** Values [L*T] shown as colour for a mode. */
export function modeValues(d: LensData, mode: string, focus: string): { values: Float32Array; lo: number; hi: number; reverse: boolean; shown: string } {
  const n = d.L * d.T;
  const out = new Float32Array(n);
  const shown = mode;
  if (mode === "entropy" && d.entropy) {
    out.set(d.entropy.data);
  } else if (mode === "kl" && d.kl) {
    out.set(d.kl.data);
  } else if (mode === "rank" && d.pinned[focus]?.rank) {
    const rk = d.pinned[focus].rank!.data;
    for (let i = 0; i < n; i++) out[i] = -Math.log10(1 + rk[i]);
    return { values: out, lo: -5, hi: 0, reverse: false, shown };
  } else if (mode === "pinned" && d.pinned[focus]?.prob) {
    out.set(d.pinned[focus].prob!.data);
    return { values: out, lo: 0, hi: 1, reverse: false, shown };
  } else {
    for (let i = 0; i < n; i++) out[i] = d.topProbs.data[i * d.k];
    return { values: out, lo: 0, hi: 1, reverse: false, shown: "prob" };
  }
  const [lo, hi] = finiteRange(out);
  return { values: out, lo, hi, reverse: false, shown };
}

/** What the lens heatmap's colours mean in each mode (the colour legend). */
export function modeLegend(mode: string, focus: string, lo: number, hi: number): Legend {
  const tok = visibleToken(focus);
  if (mode === "entropy") return { lo, hi, label: "entropy of the next-token distribution (nats)" };
  if (mode === "kl") return { lo, hi, label: "KL to the last layer's distribution (nats)" };
  if (mode === "rank" && focus) return { lo, hi, label: `rank of ${tok} (log scale, 1 = top)`, loText: "≥ 1e5", hiText: "1" };
  if (mode === "pinned" && focus) return { lo, hi, label: `probability of ${tok}` };
  return { lo, hi, label: "probability of the top-1 token" };
}

export class LensView extends View<LensTraits> {
  heatmap: Heatmap;
  private data: LensData | null = null;
  private controls: HTMLElement;
  private strip: HTMLElement;
  private chartBox: HTMLElement;
  private pins: HTMLElement;
  private pinInput: HTMLInputElement;

  constructor(model: AnyModel<LensTraits>, el: HTMLElement) {
    super(model, el, "Logit lens");
    this.pinInput = h("input", { class: "wb-input", "data-testid": "wb-pin-input", placeholder: "token to pin, e.g. ␣Paris" });
    this.pinInput.addEventListener("keydown", (e) => {
      if (e.key === "Enter") this.pin(this.pinInput.value);
    });
    this.pins = h("span", { class: "wb-pins" });
    this.controls = h("div", { class: "wb-controls" });
    this.strip = h("div");
    this.chartBox = h("div");
    this.heatmap = new Heatmap({ rows: 0, cols: 0, values: new Float32Array(0), color: () => [0, 0, 0], name: "lens" });
    this.heatmap.canvas.setAttribute("data-role", "lens");
    this.heatmap.applyOnClick = false;
    const sendSel = debounce((r: number, c: number) => this.setTrait("selected", [r, c]), 120);
    this.heatmap.onSelect = (r, c) => {
      sendSel(r, c);
      this.renderChart();
      this.renderStrip();
    };
    this.heatmap.onApply = (r, c) => this.pin(tokText(this.data!, at(this.data!.topIds, r, c, 0)));
    const sendHover = debounce((cell: [number, number] | null) => this.setTrait("hover", cell ?? []), 150);
    this.heatmap.onHover = sendHover;
    this.body.append(
      this.promptRow(),
      this.controls,
      h(
        "div",
        { class: "wb-row" },
        this.pinInput,
        button("Pin", () => this.pin(this.pinInput.value), { "data-testid": "wb-pin" }),
        this.pins,
      ),
      this.strip,
      this.heatmap.el,
      this.chartBox,
    );
    for (const t of ["data", "mode", "focus"] as const) this.listen(t, () => this.render());
    this.followSelection(this.heatmap);
    this.render();
  }

  title(): string {
    // the prompt of the data drawn (the box may hold an edit that has not run yet)
    const raw = this.model.get("data");
    const shown = raw && typeof raw.prompt === "string" ? raw.prompt : String(this.model.get("prompt") ?? "");
    const mode = String(this.model.get("mode") ?? "top");
    const focus = String(this.model.get("focus") ?? "");
    return `Logit lens · ${modeLegend(mode, focus, 0, 1).label} · prompt "${shown}"`.slice(0, 200);
  }
  /** Export: the lens heatmap, and the pinned tokens' chart at the selected position. */
  figures(): Figure[] {
    if (!this.data) return [];
    const figs = [this.heatmap.figure()];
    const chart = this.chartSeries();
    if (chart) figs.push(chartFigure(chart.heading, chart.series, "layer", "probability"));
    return figs;
  }

  private pin(tok: string): void {
    const t = tok.replace(/\u2423/g, " ");
    if (!t) return;
    const pinned = [...(this.model.get("pinned") ?? [])];
    if (!pinned.includes(t)) pinned.push(t);
    this.model.set("focus", t);
    this.setTrait("pinned", pinned);
    this.pinInput.value = "";
  }

  private unpin(tok: string): void {
    const pinned = (this.model.get("pinned") ?? []).filter((x) => x !== tok);
    this.setTrait("pinned", pinned);
  }

  render(): void {
    this.data = decodeLens(this.model.get("data"));
    const mode = String(this.model.get("mode") ?? "prob");
    const pinned = this.model.get("pinned") ?? [];
    const focus = String(this.model.get("focus") || pinned[0] || "");
    clear(this.controls);
    this.controls.append(
      h("label", {}, "colour: "),
      select(
        [
          ["prob", "top-1 probability"],
          ["rank", "rank of pinned token"],
          ["pinned", "pinned token probability"],
          ["entropy", "entropy"],
          ["kl", "KL to final"],
        ],
        mode,
        (v) => this.setTrait("mode", v),
        { "data-testid": "wb-mode" },
      ),
    );
    if (pinned.length) {
      this.controls.append(
        h("label", {}, " token: "),
        select(
          pinned.map((p) => [p, visibleToken(p)] as [string, string]),
          focus,
          (v) => this.setTrait("focus", v),
          { "data-testid": "wb-focus" },
        ),
      );
    }
    clear(this.pins);
    for (const p of pinned) {
      this.pins.append(
        h(
          "span",
          { class: "wb-chip", "data-testid": "wb-pinned" },
          visibleToken(p),
          button("×", () => this.unpin(p), { class: "wb-chip-x", title: "unpin" }),
        ),
      );
    }
    const d = this.data;
    if (!d) {
      this.heatmap.setSpec({ rows: 0, cols: 0, values: new Float32Array(0), color: () => [0, 0, 0] });
      this.renderStrip();
      clear(this.chartBox);
      return;
    }
    const mv = modeValues(d, mode, focus);
    const sel = this.model.get("selected") ?? [];
    if (sel.length === 2 && !this.heatmap.selected && sel[0] < d.L && sel[1] < d.T) this.heatmap.selected = [sel[0], sel[1]];
    this.heatmap.setSpec({
      rows: d.L,
      cols: d.T,
      values: mv.values,
      color: (v, th) => sequential(th, mv.lo, mv.hi)(v),
      cellLabel: top1Label(d),
      rowLabels: Array.from({ length: d.L }, (_, i) => `L${i}`),
      colLabels: d.tokens.map(visibleToken),
      rowTitle: "layer",
      colTitle: "position",
      legend: modeLegend(mv.shown, focus, mv.lo, mv.hi),
      tooltip: lensTooltip(d),
      cellW: 56,
      minCellW: 44, // long prompts scroll sideways rather than lose the cell text
      cellH: d.L > 40 ? undefined : 18,
      maxWidth: Math.max(600, (this.el.clientWidth || 900) - 80),
      name: "logit lens",
    });
    this.renderStrip();
    this.renderChart();
  }

  private renderStrip(): void {
    clear(this.strip);
    if (!this.data) return;
    const col = this.heatmap.selected?.[1] ?? null;
    this.strip.append(tokenStrip(this.data.tokens, { label: "tokens:", selected: col, onClick: (p) => this.heatmap.select(this.heatmap.selected?.[0] ?? this.data!.L - 1, p, false) }));
  }

  /** The pinned tokens' probability through the layers at the selected position (null with no pins). */
  private chartSeries(): { heading: string; series: Series[] } | null {
    const d = this.data;
    if (!d) return null;
    const pos = this.heatmap.selected?.[1] ?? d.T - 1;
    const series = Object.entries(d.pinned)
      .filter(([, v]) => v.prob)
      .map(([name, v]) => ({ name, values: Array.from({ length: d.L }, (_, l) => at(v.prob!, l, pos)) }));
    return series.length ? { heading: `Pinned tokens at position ${pos} (${visibleToken(d.tokens[pos] ?? "")})`, series } : null;
  }

  private renderChart(): void {
    clear(this.chartBox);
    if (!this.data) return;
    const chart = this.chartSeries();
    if (!chart) {
      this.chartBox.append(h("div", { class: "wb-hint" }, "Pin a token (press Enter on a cell, or type one) to follow its probability through the layers."));
      return;
    }
    this.chartBox.append(h("div", { class: "wb-subtitle" }, chart.heading), lineChart(chart.series, "layer", "probability"));
  }
}
