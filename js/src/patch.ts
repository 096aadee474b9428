// PatchView: clean/corrupt token strips, site picker, sweep heatmap, click/drag to patch or ablate.
import { finiteRange, maybeUnpack } from "./arrays";
import { diverging, sequential } from "./colors";
import { button, clear, debounce, fmt, h, select } from "./dom";
import { Heatmap, type Region } from "./heatmap";
import { decodeLens, lensTooltip, top1Label } from "./lens";
import type { AnyModel } from "./model";
import { tokenStrip, visibleToken } from "./tokens";
import { View } from "./view";

export const SITES: [string, string][] = [
  ["resid_pre", "resid_pre"],
  ["resid_post", "resid_post"],
  ["attn_out", "attn_out"],
  ["mlp_out", "mlp_out"],
  ["head", "heads"],
];

/** Causal cone of a patch in a layers x positions lens: the patched layer and later, same and later positions. */
export function causalCone(site: string, layer: number, position: number | null, L: number, T: number): Region {
  // resid_pre[l] feeds block l, so resid_post[l] (lens row l) is already affected; the others act inside block l too
  const r0 = Math.max(0, Math.min(L - 1, layer));
  const c0 = position === null || position === undefined || position < 0 ? 0 : Math.min(T - 1, position);
  void site;
  return { r0, c0, r1: L - 1, c1: T - 1 };
}

/** A text field bound to a trait: commits on Enter/blur and, debounced, while the user types (so the kernel can
 *  check it at once). The kernel's value is shown unless the user is typing in the field. */
interface Field {
  label: HTMLElement;
  caption: HTMLElement;
  input: HTMLInputElement;
  sync(value: string): void;
}
function inputField(label: string, value: string, testid: string, onCommit: (v: string) => void, wide = false): Field {
  const inp = h("input", { class: `wb-input${wide ? " wb-wide" : ""}`, "data-testid": testid, spellcheck: "false" });
  inp.value = value;
  // a typed ␣ (the marker the token strips show) means a space
  const commit = () => onCommit(inp.value.replace(/\u2423/g, " "));
  const typed = debounce(commit, 450);
  inp.addEventListener("input", () => typed());
  inp.addEventListener("change", commit);
  const caption = h("span", {}, label);
  return {
    label: h("label", { class: "wb-field" }, caption, inp),
    caption,
    input: inp,
    sync(v: string) {
      if (document.activeElement !== inp && inp.value.replace(/\u2423/g, " ") !== v) inp.value = v;
    },
  };
}

interface WordInfo {
  text?: string;
  tokens?: string[];
  warning?: string;
  error?: string;
}

export class PatchView extends View {
  heatmap: Heatmap;
  source: Heatmap;
  lens: Heatmap;
  private controls: HTMLElement;
  private strips: HTMLElement;
  private resultBox: HTMLElement;
  private sourceBox: HTMLElement;
  private caption: HTMLElement;
  private clickedAt: number | null = null;
  private fields: Record<string, Field>;
  private words: HTMLElement;
  private warnings: HTMLElement;
  private modeSel: HTMLSelectElement;
  private siteSel: HTMLSelectElement;
  private methodSel: HTMLSelectElement;
  private methodField: HTMLElement;

  constructor(model: AnyModel, el: HTMLElement) {
    super(model, el, "Activation patching");
    this.controls = h("div", { class: "wb-controls" });
    this.strips = h("div", { class: "wb-strips" });
    this.caption = h("div", { class: "wb-caption", "data-testid": "wb-caption" });
    this.resultBox = h("div", { class: "wb-result", "data-testid": "wb-result" });
    this.heatmap = new Heatmap({ rows: 0, cols: 0, values: new Float32Array(0), color: () => [0, 0, 0] });
    this.heatmap.canvas.setAttribute("data-role", "sweep");
    const sendSel = debounce((r: number, c: number) => this.setTrait("selected", [r, c]), 120);
    this.heatmap.onSelect = sendSel;
    this.heatmap.onApply = (r, c) => this.apply(r, c, null);
    this.heatmap.onDrop = (_src, from, to) => this.apply(to[0], to[1], from);
    this.source = new Heatmap({ rows: 0, cols: 0, values: new Float32Array(0), color: () => [0, 0, 0] });
    this.source.canvas.setAttribute("data-role", "clean");
    this.source.draggable = true;
    this.source.applyOnClick = false;
    this.sourceBox = h("div", { class: "wb-source" });
    this.lens = new Heatmap({ rows: 0, cols: 0, values: new Float32Array(0), color: () => [0, 0, 0] });
    this.lens.canvas.setAttribute("data-role", "patched-lens");
    this.lens.applyOnClick = false;
    // the controls are built once (re-building them would steal the caret from a field being typed in)
    const m = model;
    this.fields = {
      clean: inputField("clean", String(m.get("clean") ?? ""), "wb-clean", (v) => this.commit("clean", v), true),
      corrupt: inputField("corrupt", String(m.get("corrupt") ?? ""), "wb-corrupt", (v) => this.commit("corrupt", v), true),
      target: inputField("target", String(m.get("target") ?? ""), "wb-target", (v) => this.commit("target", v)),
      foil: inputField("foil", String(m.get("foil") ?? ""), "wb-foil", (v) => this.commit("foil", v)),
    };
    this.modeSel = select(
      [
        ["patch", "patch"],
        ["ablate", "ablate"],
      ],
      String(m.get("mode") ?? "patch"),
      (v) => this.setTrait("mode", v),
      { "data-testid": "wb-mode" },
    );
    this.siteSel = select(SITES, String(m.get("site") ?? "resid_pre"), (v) => this.setTrait("site", v), { "data-testid": "wb-site" });
    this.methodSel = select(
      [
        ["zero", "zero"],
        ["mean", "mean"],
        ["resample", "resample"],
      ],
      String(m.get("method") ?? "zero"),
      (v) => this.setTrait("method", v),
      { "data-testid": "wb-method" },
    );
    this.methodField = h("label", { class: "wb-field" }, h("span", {}, "method"), this.methodSel);
    this.words = h("div", { class: "wb-words", "data-testid": "wb-words" });
    this.warnings = h("div", { class: "wb-warn", "data-testid": "wb-warning", role: "status", hidden: true });
    this.controls.append(
      h("div", { class: "wb-row" }, this.fields.clean.label, this.fields.corrupt.label),
      h(
        "div",
        { class: "wb-row" },
        this.fields.target.label,
        this.fields.foil.label,
        h("label", { class: "wb-field" }, h("span", {}, "mode"), this.modeSel),
        h("label", { class: "wb-field" }, h("span", {}, "site"), this.siteSel),
        this.methodField,
        button("Sweep", () => this.send("sweep", {}), { "data-testid": "wb-sweep", class: "wb-btn wb-primary", title: "Patch every cell and fill the heatmap" }),
      ),
      this.words,
      this.warnings,
    );
    this.body.append(this.controls, this.strips, this.caption, h("div", { class: "wb-panes" }, h("div", { class: "wb-pane" }, this.heatmap.el, this.sourceBox), this.resultBox));
    for (const t of ["clean", "corrupt", "target", "foil", "site", "mode", "method", "tokens_clean", "tokens_corrupt", "inputs"]) this.listen(`change:${t}`, () => this.renderAll());
    this.listen("change:sweep", () => this.renderHeatmap());
    this.listen("change:clean_lens", () => this.renderHeatmap());
    this.listen("change:result", () => this.renderResult());
    this.followSelection(this.heatmap);
    this.renderAll();
  }

  /** The metric as the kernel scores it (target and foil shown as tokens, with their spaces). */
  private metricName(): string {
    return `logit_diff(${visibleToken(String(this.model.get("target") ?? ""))}, ${visibleToken(String(this.model.get("foil") ?? ""))})`;
  }

  title(): string {
    const mode = String(this.model.get("mode"));
    const site = String(this.model.get("site"));
    const method = mode === "ablate" ? `, ${String(this.model.get("method"))} ablation` : "";
    const prompts = mode === "ablate" ? `prompt "${String(this.model.get("clean"))}"` : `clean "${String(this.model.get("clean"))}" → corrupt "${String(this.model.get("corrupt"))}"`;
    return `${mode === "ablate" ? "Ablation" : "Patching"} · site ${site}${method} · ${this.metricName()} · ${prompts}`.slice(0, 200);
  }
  mainHeatmap(): Heatmap {
    return this.heatmap;
  }

  private isHead(): boolean {
    return String(this.model.get("site")) === "head";
  }

  private apply(r: number, c: number, from: [number, number] | null): void {
    const mode = String(this.model.get("mode") ?? "patch");
    const payload: Record<string, unknown> = { layer: r, position: this.isHead() ? null : c, head: this.isHead() ? c : null, cell: [r, c] };
    if (from) {
      payload.source_layer = from[0];
      payload.source_position = from[1];
    }
    this.clickedAt = performance.now();
    this.send(mode === "ablate" ? "ablate" : "patch", payload);
  }

  private commit(name: string, value: string): void {
    if (String(this.model.get(name) ?? "") !== value) this.setTrait(name, value);
  }

  private renderAll(): void {
    const m = this.model;
    const mode = String(m.get("mode") ?? "patch");
    for (const name of ["clean", "corrupt", "target", "foil"]) this.fields[name].sync(String(m.get(name) ?? ""));
    this.fields.corrupt.caption.textContent = mode === "ablate" ? "reference" : "corrupt";
    this.modeSel.value = mode;
    this.siteSel.value = String(m.get("site") ?? "resid_pre");
    this.methodSel.value = String(m.get("method") ?? "zero");
    this.methodField.hidden = mode !== "ablate";
    this.renderWords();
    clear(this.strips);
    const tc = (m.get("tokens_clean") ?? []) as string[];
    const tk = (m.get("tokens_corrupt") ?? []) as string[];
    this.strips.append(tokenStrip(tc, { label: "clean:", testid: "wb-tokens-clean" }));
    if (mode !== "ablate") this.strips.append(tokenStrip(tk, { label: "corrupt:", testid: "wb-tokens-corrupt" }));
    this.renderHeatmap();
    this.renderResult();
  }

  /** Target and foil as the model sees them (␣ = the leading space), and a warning when that may surprise. */
  private renderWords(): void {
    const info = (this.model.get("inputs") ?? {}) as Record<string, WordInfo>;
    clear(this.words);
    const warn: string[] = [];
    for (const name of ["target", "foil"]) {
      const w = info[name];
      if (!w?.text) continue;
      const toks = w.tokens ?? [];
      const item = h("span", { class: "wb-word", "data-testid": `wb-${name}-tokens` }, h("span", {}, `${name} scores`));
      for (const t of toks) item.append(h("span", { class: `wb-word-tok${w.error ? " wb-word-bad" : ""}`, "data-testid": "wb-word-token" }, visibleToken(t)));
      if (w.error) item.append(h("span", { class: "wb-word-bad" }, `(${toks.length} tokens: must be one)`));
      this.words.append(item);
      if (w.warning) warn.push(`${name}: ${w.warning}`);
    }
    this.warnings.hidden = warn.length === 0;
    this.warnings.textContent = warn.join("\n");
  }

  private grid(): { rows: number; cols: number; colLabels: string[] } {
    const L = Number(this.model.get("n_layers") ?? 0);
    if (this.isHead()) {
      const H = Number(this.model.get("n_heads") ?? 0);
      return { rows: L, cols: H, colLabels: Array.from({ length: H }, (_, i) => `H${i}`) };
    }
    const mode = String(this.model.get("mode"));
    const toks = (this.model.get(mode === "ablate" ? "tokens_clean" : "tokens_corrupt") ?? []) as string[];
    return { rows: L, cols: toks.length, colLabels: toks.map(visibleToken) };
  }

  private renderHeatmap(): void {
    const g = this.grid();
    const sw = this.model.get("sweep") as any;
    let values: Float32Array = new Float32Array(g.rows * g.cols).fill(NaN);
    let absMax = 1;
    let unit = "patch effect: run a sweep or click a cell";
    let caption = "Click a cell to patch it (or press Sweep to fill the map). Arrow keys move, Enter applies.";
    const mode = String(this.model.get("mode"));
    if (mode === "ablate") caption = "Click a cell to ablate it (or press Sweep). Arrow keys move, Enter applies.";
    if (sw?.values && sw.site === this.model.get("site") && sw.mode === mode) {
      const arr = maybeUnpack(sw.normalized) ?? maybeUnpack(sw.values);
      if (arr && arr.shape[0] === g.rows && arr.shape[1] === g.cols) {
        values = Float32Array.from(arr.data);
        if (mode === "ablate" && typeof sw.clean === "number") for (let i = 0; i < values.length; i++) values[i] -= sw.clean;
        const [lo, hi] = finiteRange(values);
        absMax = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
        unit = mode === "ablate" ? `ablation effect: ${this.metricName()} − unablated` : sw.normalized ? `normalised effect of ${this.metricName()} (1 = clean, 0 = corrupt)` : this.metricName();
        caption =
          mode === "ablate"
            ? `effect of ablation (metric − unablated ${fmt(sw.clean)}). Click a cell to apply that ablation.`
            : `${sw.normalized ? "normalised effect (1 = clean, 0 = corrupt)" : "metric"}; clean ${fmt(sw.clean)}, corrupt ${fmt(sw.corrupt)}. Click a cell to apply that patch.`;
      }
    }
    this.caption.textContent = caption;
    this.heatmap.setSpec({
      rows: g.rows,
      cols: g.cols,
      values,
      color: (v, th) => diverging(th, absMax)(v),
      rowLabels: Array.from({ length: g.rows }, (_, i) => `L${i}`),
      colLabels: g.colLabels,
      rowTitle: "layer",
      colTitle: this.isHead() ? "head" : "position",
      legend: { lo: -absMax, hi: absMax, label: unit },
      tooltip: (r, c) => [
        `layer ${r}, ${this.isHead() ? "head" : "position"} ${c}${this.isHead() ? "" : ` (${g.colLabels[c] ?? ""})`}`,
        Number.isFinite(values[r * g.cols + c]) ? `effect ${fmt(values[r * g.cols + c])}` : "click to run",
      ],
      cellW: 34,
      cellH: 16,
      maxWidth: 760,
      name: "patching effect",
    });
    // the clean run's cells, draggable onto the corrupt run's map (patch across positions or layers); drawn as the
    // clean run's logit lens (top-1 token and its probability) so the user sees what they drag
    clear(this.sourceBox);
    const tc = (this.model.get("tokens_clean") ?? []) as string[];
    if (mode !== "ablate" && !this.isHead() && tc.length) {
      const d = decodeLens(this.model.get("clean_lens"));
      const ok = d !== null && d.T === tc.length && d.L === g.rows;
      const vals = new Float32Array(g.rows * tc.length).fill(NaN);
      if (ok) for (let i = 0; i < vals.length; i++) vals[i] = d.topProbs.data[i * d.k];
      this.source.setSpec({
        rows: g.rows,
        cols: tc.length,
        values: vals,
        color: (v, th) => sequential(th, 0, 1)(Number.isFinite(v) ? v : 0.15),
        // with no lens yet (or none for remote models) the cells show the clean tokens themselves
        cellLabel: ok ? top1Label(d) : (_r, c) => visibleToken(tc[c] ?? ""),
        rowLabels: Array.from({ length: g.rows }, (_, i) => `L${i}`),
        colLabels: tc.map(visibleToken),
        rowTitle: "layer",
        colTitle: "position",
        legend: ok ? { lo: 0, hi: 1, label: "clean run: probability of the top-1 token (logit lens)" } : undefined,
        tooltip: (r, c) => [
          ...(ok ? lensTooltip(d)(r, c).map((x, i) => (i === 0 ? `clean run: ${x}` : x)) : [`clean run: layer ${r}, position ${c} (${visibleToken(tc[c] ?? "")})`]),
          "drag onto a cell of the map above",
        ],
        cellW: 34,
        cellH: 15,
        maxWidth: 760,
        name: "clean run (drag source)",
      });
      this.source.canvas.setAttribute("data-lens", ok ? "1" : "0");
      this.sourceBox.append(h("div", { class: "wb-subtitle" }, "Clean run (its logit lens: top-1 token per layer) — drag a cell onto the map above to patch between positions or layers"));
      const note = (this.model.get("clean_lens") as { note?: unknown } | null)?.note;
      if (!ok)
        this.sourceBox.append(
          h("div", { class: "wb-hint", "data-testid": "wb-clean-note" }, typeof note === "string" ? `(${note}; the cells are the clean tokens)` : "computing the clean run's lens…"),
        );
      this.sourceBox.append(this.source.el);
    }
  }

  private renderResult(): void {
    clear(this.resultBox);
    const res = this.model.get("result") as any;
    if (!res || res.value === undefined) {
      this.resultBox.append(h("div", { class: "wb-hint" }, "No intervention yet."));
      this.lens.shade = null;
      return;
    }
    const probs = maybeUnpack(res.top_probs);
    const toks = (res.top_tokens ?? []) as string[];
    const pred = h("div", { class: "wb-prediction", "data-testid": "wb-prediction", "data-top": toks[0] ?? "" });
    pred.append(h("b", {}, "prediction: "));
    toks.forEach((t, i) => {
      pred.append(h("span", { class: "wb-pred-tok", "data-testid": "wb-pred-token" }, visibleToken(t)), h("span", { class: "wb-pred-p" }, probs ? ` ${fmt(probs.data[i], 3)}  ` : "  "));
    });
    this.resultBox.append(
      h("div", { class: "wb-subtitle", "data-testid": "wb-result-label" }, String(res.label ?? "")),
      pred,
      h("div", { class: "wb-metric", "data-testid": "wb-metric", "data-value": String(res.value) }, `metric ${fmt(res.value)} (clean ${fmt(res.clean)}, corrupt/unablated ${fmt(res.corrupt)})`),
    );
    const d = decodeLens(res.lens);
    if (d) {
      const vals = new Float32Array(d.L * d.T);
      for (let i = 0; i < vals.length; i++) vals[i] = d.topProbs.data[i * d.k];
      const pos = res.position === null || res.position === undefined ? null : Number(res.position);
      this.lens.shade = causalCone(String(res.site), Number(res.layer), pos, d.L, d.T);
      this.lens.setSpec({
        rows: d.L,
        cols: d.T,
        values: vals,
        color: (v, th) => sequential(th, 0, 1)(v),
        cellLabel: top1Label(d),
        rowLabels: Array.from({ length: d.L }, (_, i) => `L${i}`),
        colLabels: d.tokens.map(visibleToken),
        rowTitle: "layer",
        colTitle: "position",
        legend: { lo: 0, hi: 1, label: "patched run: probability of the top-1 token (logit lens)" },
        tooltip: lensTooltip(d),
        cellW: 46,
        cellH: 16, // 12 px text (it was 9 px at 12 px rows)
        maxWidth: 620,
        name: "logit lens of the patched run",
      });
      this.resultBox.append(h("div", { class: "wb-subtitle" }, "Logit lens of the patched run (shaded: causal cone of the patch)"), this.lens.el);
    }
    if (this.clickedAt !== null) {
      // click -> kernel -> engine -> result trait -> redrawn; compute_ms is the engine's share
      this.resultBox.setAttribute("data-latency-ms", (performance.now() - this.clickedAt).toFixed(1));
      this.resultBox.setAttribute("data-compute-ms", String(res.compute_ms ?? ""));
      this.clickedAt = null;
    }
    const cell = res.cell as number[] | undefined;
    if (cell && cell.length === 2 && !res.source_layer && res.source_layer !== 0) this.heatmap.setSelected([cell[0], cell[1]]);
  }
}
