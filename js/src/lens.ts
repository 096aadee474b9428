// LensView: layers x tokens heatmap of the logit lens.
import { at, finiteRange, maybeUnpack, type NDArray } from "./arrays";
import { sequential } from "./colors";
import { chartFigure, lineChart, type Series } from "./chart";
import { cellColumn, type Distribution, distributionFigure, distributionPanel, exampleText, meanSem, unitsOf } from "./dataset";
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
  private single: HTMLElement;
  private dsBox: HTMLElement;
  private listBox: HTMLElement;
  private distBox: HTMLElement;
  private exampleBar: HTMLElement;
  private alignSel: HTMLSelectElement;
  /** Over a dataset: the cell whose per-example values are shown. */
  private drill: [number, number] | null = null;

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
      if (this.overDataset()) {
        this.drill = [r, c];
        this.renderDistribution();
        return;
      }
      this.renderChart();
      this.renderStrip();
    };
    this.heatmap.onApply = (r, c) => this.overDataset() || this.pin(tokText(this.data!, at(this.data!.topIds, r, c, 0)));
    const sendHover = debounce((cell: [number, number] | null) => this.setTrait("hover", cell ?? []), 150);
    this.heatmap.onHover = sendHover;
    this.alignSel = select(
      [
        ["exact", "exact (same positions)"],
        ["right", "right (aligned at the end)"],
        ["roles", "roles (template fields)"],
      ],
      "exact",
      (v) => this.setTrait("align", v),
      { "data-testid": "wb-align", title: "How the examples' positions line up into the map's columns" },
    );
    this.exampleBar = h("div", { class: "wb-row wb-example-bar", "data-testid": "wb-example-bar", hidden: true });
    this.dsBox = h("div", { class: "wb-row", "data-testid": "wb-ds-controls", hidden: true }, h("label", { class: "wb-field" }, h("span", {}, "align"), this.alignSel));
    this.listBox = h("div", { "data-testid": "wb-ds-list" });
    this.distBox = h("div");
    this.single = h(
      "div",
      {},
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
    );
    this.body.append(this.exampleBar, this.dsBox, this.single, this.heatmap.el, this.chartBox, this.distBox, this.listBox);
    for (const t of ["data", "mode", "focus", "dataset", "ds_lens", "align", "example"] as const) this.listen(t, () => this.render());
    this.followSelection(this.heatmap);
    this.render();
  }

  /** Whether the view shows a dataset's mean lens (not one prompt, nor one of its examples). */
  overDataset(): boolean {
    return Number(this.model.get("dataset")?.n ?? 0) > 0 && Number(this.model.get("example") ?? -1) < 0;
  }

  title(): string {
    if (this.overDataset()) {
      const dl = this.model.get("ds_lens");
      const n = Number(this.model.get("dataset")?.n ?? 0);
      return `Logit lens · mean ${dl?.metric ?? "target probability"} over ${n} examples (align ${String(this.model.get("align") ?? "exact")})`;
    }
    // the prompt of the data drawn (the box may hold an edit that has not run yet)
    const raw = this.model.get("data");
    const shown = raw && typeof raw.prompt === "string" ? raw.prompt : String(this.model.get("prompt") ?? "");
    const mode = String(this.model.get("mode") ?? "top");
    const focus = String(this.model.get("focus") ?? "");
    return `Logit lens · ${modeLegend(mode, focus, 0, 1).label} · prompt "${shown}"`.slice(0, 200);
  }
  /** Export: the lens heatmap, and the pinned tokens' chart at the selected position. */
  figures(): Figure[] {
    if (this.overDataset()) {
      const figs = this.model.get("ds_lens")?.values ? [this.heatmap.figure()] : [];
      const d = this.distribution();
      if (d) figs.push(distributionFigure(d, this.model.get("dataset")?.examples ?? [], document.body.getAttribute("data-jp-theme-light") === "false"));
      return figs;
    }
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
    this.renderDataset();
    if (this.overDataset()) {
      this.renderMean();
      return;
    }
    this.drill = null;
    clear(this.distBox);
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

  /** The dataset's controls, the bar of an opened example (back), and the list of examples. */
  private renderDataset(): void {
    const d = this.model.get("dataset");
    const n = Number(d?.n ?? 0);
    const ex = Number(this.model.get("example") ?? -1);
    const over = this.overDataset();
    this.single.hidden = over;
    this.chartBox.hidden = over;
    this.dsBox.hidden = !over;
    this.exampleBar.hidden = !(n > 0 && ex >= 0);
    clear(this.exampleBar);
    clear(this.listBox);
    if (!n || !d) return;
    if (ex >= 0) {
      this.exampleBar.append(
        button(`← back to the dataset (${n} examples)`, () => this.setTrait("example", -1), { "data-testid": "wb-back", class: "wb-btn wb-primary" }),
        h("span", { class: "wb-subtitle", "data-testid": "wb-example-title", "data-example": ex }, `Example #${ex} of ${n}`),
      );
      return;
    }
    for (const o of Array.from(this.alignSel.options)) {
      const why = d.aligns?.[o.value] ?? "";
      o.disabled = Boolean(why);
      o.title = why;
    }
    this.alignSel.value = String(this.model.get("align") ?? "exact");
    const list = h("ol", { class: "wb-ex-list", "data-testid": "wb-ds-examples" });
    for (let i = 0; i < Math.min(n, 200); i++) {
      const li = h(
        "li",
        { class: "wb-ex", "data-testid": "wb-ds-example", "data-example": i, tabindex: 0, title: "open this example's own logit lens" },
        h("span", { class: "wb-ex-val" }, `#${i}`),
        h("span", { class: "wb-ex-text" }, exampleText(d.examples?.[i])),
      );
      li.addEventListener("click", () => this.setTrait("example", i));
      li.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter") this.setTrait("example", i);
      });
      list.append(li);
    }
    this.listBox.append(h("div", { class: "wb-subtitle" }, `Examples (${n}${n > 200 ? ", first 200 listed" : ""}) — click one to open its own lens`), list);
  }

  /** The dataset lens decoded (null until computed, or when its arrays disagree). */
  private dsLens(): { mean: NDArray; per: NDArray; columns: string[]; metric: string } | null {
    const dl = this.model.get("ds_lens");
    const mean = maybeUnpack(dl?.values);
    const per = maybeUnpack(dl?.per_example);
    if (!dl || !mean || !per || per.shape[1] !== mean.shape[0] || per.shape[2] !== mean.shape[1]) return null;
    return { mean, per, columns: dl.columns ?? [], metric: dl.metric ?? "target probability" };
  }

  /** Over a dataset: the mean map (layers x columns), mean ± sem and n on hover. */
  private renderMean(): void {
    const g = this.dsLens();
    if (!g) {
      this.heatmap.setSpec({ rows: 0, cols: 0, values: new Float32Array(0), color: () => [0, 0, 0] });
      clear(this.distBox);
      return;
    }
    const [L, C] = g.mean.shape;
    const values = Float32Array.from(g.mean.data);
    let [lo, hi] = finiteRange(values);
    if (lo >= 0 && hi <= 1) [lo, hi] = [0, 1];
    const spread = (r: number, c: number) => meanSem(cellColumn(g.per, r * C + c));
    const n = g.per.shape[0];
    this.heatmap.setSpec({
      rows: L,
      cols: C,
      values,
      color: (v, th) => sequential(th, lo, hi)(v),
      // probabilities to two decimals (a column of "7.72e-…" reads worse than 0.00; the hover has the value)
      cellLabel: (r, c) => {
        const v = at(g.mean, r, c);
        return !Number.isFinite(v) ? "" : lo >= 0 && hi <= 1 ? v.toFixed(2) : fmt(v, 2);
      },
      rowLabels: Array.from({ length: L }, (_, i) => `L${i}`),
      colLabels: g.columns.map((x) => visibleToken(x)),
      rowTitle: "layer",
      colTitle: "column",
      legend: { lo, hi, label: `mean ${g.metric} over ${n} examples` },
      tooltip: (r, c) => {
        const st = spread(r, c);
        return [`layer ${r}, column ${visibleToken(g.columns[c] ?? String(c))}`, `mean ± sem: ${fmt(st.mean)} ± ${fmt(st.sem)}, n = ${st.n}`, "click: every example's value"];
      },
      cellW: 56,
      minCellW: 44,
      cellH: L > 40 ? undefined : 18,
      maxWidth: Math.max(600, (this.el.clientWidth || 900) - 80),
      name: "logit lens (mean over the dataset)",
    });
    if (this.drill && (this.drill[0] >= L || this.drill[1] >= C)) this.drill = null;
    this.renderDistribution();
  }

  /** The per-example values at the drilled cell. */
  private distribution(): Distribution | null {
    const g = this.dsLens();
    if (!g || !this.drill) return null;
    const [r, c] = this.drill;
    const C = g.mean.shape[1];
    const n = g.per.shape[0];
    return {
      title: `Per-example ${g.metric} at layer ${r}, column ${visibleToken(g.columns[c] ?? String(c))}`,
      values: cellColumn(g.per, r * C + c),
      ids: Int32Array.from({ length: n }, (_, i) => i),
      units: unitsOf("metric", null, null, null),
      label: g.metric,
      noun: g.metric,
    };
  }

  private renderDistribution(): void {
    clear(this.distBox);
    const d = this.distribution();
    if (!d) return;
    this.distBox.append(distributionPanel(d, this.model.get("dataset")?.examples ?? [], (id) => this.setTrait("example", id)));
  }
}
