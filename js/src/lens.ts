// LensView: layers x tokens heatmap of the logit lens.
import { at, finiteRange, maybeUnpack, type NDArray } from "./arrays";
import { css, inkOn, type RGB, readTheme, sequential, viridis } from "./colors";
import { chartFigure, lineChart, type Series } from "./chart";
import { cellColumn, type Distribution, distributionFigure, distributionPanel, exampleText, meanSem, unitsOf } from "./dataset";
import { button, clear, debounce, fmt, h, select } from "./dom";
import { Heatmap, type Legend } from "./heatmap";
import { drawing, type Figure, type Item } from "./export";
import type { AnyModel } from "./model";
import type { LensRequest } from "./protocol";
import type { GenerationState, LensKind, LensTraits, Maybe, PackedFuture, PackedLens } from "./traits";
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
export function modeLegend(mode: string, focus: string, lo: number, hi: number, lens: string = "logit"): Legend {
  const tok = visibleToken(focus);
  if (lens === "future") return { lo, hi, label: "probability of the t+1 prediction (cells: the next tokens predicted)", nanText: "no probability" };
  if (lens === "patchscope" && mode === "prob") return { lo, hi, label: "probability of the top-1 token the target prompt says next" };
  if (lens === "tuned" && mode === "prob") return { lo, hi, label: "probability of the tuned lens's top-1 token" };
  if (mode === "entropy") return { lo, hi, label: "entropy of the next-token distribution (nats)" };
  if (mode === "kl") return { lo, hi, label: "KL to the last layer's distribution (nats)" };
  if (mode === "rank" && focus) return { lo, hi, label: `rank of ${tok} (log scale, 1 = top)`, loText: "≥ 1e5", hiText: "1" };
  if (mode === "pinned" && focus) return { lo, hi, label: `probability of ${tok}` };
  return { lo, hi, label: "probability of the top-1 token" };
}

/** The lens switcher's options, in order. */
export const LENS_OPTIONS: [LensKind, string][] = [
  ["logit", "logit lens"],
  ["tuned", "tuned lens"],
  ["patchscope", "patchscope"],
  ["future", "future lens"],
];

/** The name of a lens as the header and the export title say it. */
export function lensName(lens: string): string {
  return { tuned: "Tuned lens", patchscope: "Patchscope", future: "Future Lens" }[lens] ?? "Logit lens";
}

export interface FutureData {
  /** int32 [L, T, n]. */
  ids: NDArray;
  probs: NDArray | null;
  /** float32 [L, n]. */
  accuracy: NDArray | null;
  n: number;
  method: string;
}

export function decodeFuture(raw: Maybe<PackedFuture> | null | undefined): FutureData | null {
  const ids = maybeUnpack(raw?.ids);
  if (!raw || !ids || ids.shape.length !== 3) return null;
  const n = ids.shape[2];
  const probs = maybeUnpack(raw.probs);
  const accuracy = maybeUnpack(raw.accuracy);
  return {
    ids,
    probs: probs && probs.data.length === ids.data.length ? probs : null,
    accuracy: accuracy && accuracy.shape[1] === n ? accuracy : null,
    n,
    method: String(raw.method ?? ""),
  };
}

/** The tokens a Future Lens cell predicts for t+1..t+n (visible text). */
export function futureTokens(d: LensData, f: FutureData, r: number, c: number): string[] {
  return Array.from({ length: f.n }, (_, j) => visibleToken(tokText(d, at(f.ids, r, c, j))));
}

/** A Future Lens cell's compact label: the next n tokens joined by "·". */
export function futureLabel(d: LensData, f: FutureData) {
  return (r: number, c: number) => futureTokens(d, f, r, c).join("·");
}

export function futureTooltip(d: LensData, f: FutureData) {
  return (r: number, c: number): string[] => {
    const lines = [`layer ${r}, position ${c} (${visibleToken(d.tokens[c] ?? "")}): the state predicts`];
    futureTokens(d, f, r, c).forEach((tok, j) => {
      lines.push(`t+${j + 1}: ${tok}${f.probs ? `  ${fmt(at(f.probs, r, c, j))}` : ""}`);
    });
    return lines;
  };
}

/** The generation lens decoded (null until generated, or when its arrays disagree). */
export interface GenerationData {
  tokens: string[];
  commit: NDArray;
  confident: NDArray | null;
  prob: NDArray | null;
  L: number;
  nPrompt: number;
  text: string;
  prompt: string;
  eos: boolean;
}

export function decodeGeneration(raw: Maybe<GenerationState> | null | undefined): GenerationData | null {
  const commit = maybeUnpack(raw?.commit_layer);
  if (!raw || !commit || !Array.isArray(raw.tokens) || commit.data.length !== raw.tokens.length) return null;
  const prob = maybeUnpack(raw.prob);
  return {
    tokens: raw.tokens,
    commit,
    confident: maybeUnpack(raw.confident_layer),
    prob: prob && prob.shape[1] === raw.tokens.length ? prob : null,
    L: Number(raw.n_layers ?? 0),
    nPrompt: Number(raw.n_prompt ?? 0),
    text: String(raw.text ?? ""),
    prompt: String(raw.prompt ?? ""),
    eos: Boolean(raw.stopped_at_eos),
  };
}

/** The colour of a commit layer (viridis: early purple -> late yellow); null for -1 (never stays top-1). */
export function commitColor(layer: number, L: number): RGB | null {
  if (!(layer >= 0) || L <= 0) return null;
  return viridis(L <= 1 ? 1 : layer / (L - 1));
}

/** What hovering a generated token says. */
export function generatedTitle(g: GenerationData, i: number): string {
  const c = g.commit.data[i];
  const cf = g.confident ? g.confident.data[i] : -1;
  const parts = [`generated token ${i + 1}: ${JSON.stringify(g.tokens[i])}`, c >= 0 ? `top-1 from layer ${c} on (committed)` : "not top-1 at the last layer (a tie): no commit layer"];
  parts.push(cf >= 0 ? `p > 0.5 from layer ${cf}` : "p never above 0.5");
  if (g.prob && g.L > 0) parts.push(`p at the last layer ${fmt(at(g.prob, g.L - 1, i))}`);
  return parts.join(" · ");
}

/** The generated tokens as a strip, each coloured by its commit layer, and the legend (early -> late layer). */
export function generationStrip(g: GenerationData, onClick?: (i: number) => void): HTMLElement {
  const strip = h("div", { class: "wb-strip wb-gen-strip", "data-testid": "wb-gen-strip" }, h("span", { class: "wb-strip-label" }, "generated:"));
  g.tokens.forEach((tok, i) => {
    const layer = g.commit.data[i];
    const span = h("span", { class: "wb-token wb-gen-token", "data-testid": "wb-gen-token", "data-pos": i, "data-commit": layer, title: generatedTitle(g, i) }, visibleToken(tok));
    const c = commitColor(layer, g.L);
    if (c) {
      span.style.background = css(c);
      span.style.color = inkOn(c);
      span.style.borderColor = css(c);
    } else span.classList.add("wb-gen-none");
    if (onClick) {
      span.addEventListener("click", () => onClick(i));
      span.style.cursor = "pointer";
    }
    strip.append(span);
  });
  const bar = h("canvas", { class: "wb-scale-bar", "data-testid": "wb-gen-legend-bar", width: 160, height: 10 });
  const ctx = bar.getContext("2d");
  if (ctx) {
    for (let x = 0; x < 160; x++) {
      ctx.fillStyle = css(viridis((x + 0.5) / 160));
      ctx.fillRect(x, 0, 1, 10);
    }
  }
  const legend = h(
    "div",
    { class: "wb-scale", "data-testid": "wb-gen-legend" },
    h("span", {}, "commit layer: early L0"),
    bar,
    h("span", {}, `late L${Math.max(0, g.L - 1)}`),
    h("span", { class: "wb-gen-token wb-gen-none wb-token" }, "tok"),
    h("span", {}, "never stays top-1"),
  );
  const note = `${g.tokens.length} tokens, greedy${g.eos ? ", stopped at end of text" : ""}; the commit layer is the first from which the logit lens's top-1 is the generated token through the last layer. Click a token to select the cell that predicts it.`;
  return h("div", { class: "wb-gen", "data-testid": "wb-generation" }, strip, legend, h("div", { class: "wb-hint" }, note));
}

/** The generation strip as an export figure: the tokens in their commit colours, and the legend. */
export function generationFigure(g: GenerationData, width = 720): Figure {
  const items: Item[] = [{ t: "text", x: 0, y: 12, text: "Generated tokens, coloured by commit layer (early L0 → late)", size: 12, bold: true }];
  let x = 0;
  let y = 22;
  const H = 18;
  g.tokens.forEach((tok, i) => {
    const text = visibleToken(tok);
    const w = Math.max(14, text.length * 7 + 8);
    if (x + w > width) {
      x = 0;
      y += H + 4;
    }
    const c = commitColor(g.commit.data[i], g.L);
    items.push({ t: "rect", x, y, w, h: H, fill: c ? css(c) : "rgba(128,128,128,0.35)" });
    items.push({ t: "text", x: x + w / 2, y: y + 13, text, size: 11, anchor: "middle", color: c ? inkOn(c) : undefined });
    x += w + 3;
  });
  y += H + 10;
  for (let k = 0; k < 160; k += 4) items.push({ t: "rect", x: 40 + k, y, w: 4, h: 10, fill: css(viridis((k + 2) / 160)) });
  items.push({ t: "text", x: 0, y: y + 9, text: "L0", size: 10 });
  items.push({ t: "text", x: 206, y: y + 9, text: `L${Math.max(0, g.L - 1)}  (grey: never stays top-1)`, size: 10 });
  return drawing(width, y + 16, items);
}

export class LensView extends View<LensTraits, LensRequest> {
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
  private lensRow: HTMLElement;
  private lensSel: HTMLSelectElement;
  private lensBox: HTMLElement;
  private targetInput: HTMLTextAreaElement;
  private psBox: HTMLElement;
  private futureBox: HTMLElement;
  private nFutureInput: HTMLInputElement;
  private methodSel: HTMLSelectElement;
  private maxNewInput: HTMLInputElement;
  private genBox: HTMLElement;
  private future: FutureData | null = null;
  private gen: GenerationData | null = null;

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
    // the lens switcher, the generate button, and each lens's own settings
    this.lensSel = select(
      LENS_OPTIONS.map(([v, label]) => [v, label] as [string, string]),
      String(this.model.get("lens") ?? "logit"),
      (v) => this.setTrait("lens", v as LensKind),
      { "data-testid": "wb-lens", title: "Which decoder reads each (layer, position) state" },
    );
    this.maxNewInput = h("input", { class: "wb-input wb-num", "data-testid": "wb-max-new", type: "number", min: 1, max: 256, step: 1, title: "how many tokens to generate (greedy)" });
    this.maxNewInput.value = String(this.model.get("max_new_tokens") ?? 20);
    this.maxNewInput.addEventListener("keydown", (e) => {
      if (e.key === "Enter") this.generate();
    });
    this.lensRow = h(
      "div",
      { class: "wb-row" },
      h("label", { class: "wb-field" }, h("span", {}, "lens"), this.lensSel),
      h("span", { class: "wb-spacer" }),
      h("label", { class: "wb-field" }, h("span", {}, "new tokens"), this.maxNewInput),
      button("Generate", () => this.generate(), {
        "data-testid": "wb-generate",
        class: "wb-btn wb-primary",
        title: "Generate greedily and show, for each new token, the layer where it committed (wb.generation_lens)",
      }),
    );
    this.targetInput = h("textarea", { class: "wb-prompt wb-target", "data-testid": "wb-target-prompt", rows: 4, spellcheck: "false", title: "Enter runs, Shift+Enter breaks the line" });
    this.targetInput.value = String(this.model.get("target_prompt") ?? "");
    const runTarget = () => this.setTrait("target_prompt", this.targetInput.value);
    this.targetInput.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) {
        e.preventDefault();
        runTarget();
      }
    });
    this.psBox = h(
      "div",
      { "data-testid": "wb-ps-controls", hidden: true },
      h(
        "div",
        { class: "wb-hint" },
        "Target prompt: each state of the prompt is written into its last token, in the same layer; a cell shows the next token the model then says (Enter runs, Shift+Enter breaks the line).",
      ),
      h("div", { class: "wb-row" }, this.targetInput, button("Run", runTarget, { "data-testid": "wb-target-run" })),
    );
    this.nFutureInput = h("input", { class: "wb-input wb-num", "data-testid": "wb-n-future", type: "number", min: 1, max: 8, step: 1, title: "how many tokens ahead each state is read" });
    this.nFutureInput.addEventListener("change", () => {
      const n = Math.round(Number(this.nFutureInput.value));
      if (Number.isFinite(n)) this.setTrait("n_future", n);
    });
    this.methodSel = select(
      [
        ["fixed", "fixed (a generic context)"],
        ["learned", "learned (a trained prompt; minutes)"],
      ],
      String(this.model.get("future_method") ?? "fixed"),
      (v) => this.setTrait("future_method", v),
      { "data-testid": "wb-future-method" },
    );
    this.futureBox = h(
      "div",
      { class: "wb-row", "data-testid": "wb-future-controls", hidden: true },
      h("label", { class: "wb-field" }, h("span", {}, "tokens ahead"), this.nFutureInput),
      h("label", { class: "wb-field" }, h("span", {}, "method"), this.methodSel),
    );
    this.lensBox = h("div", {}, this.psBox, this.futureBox);
    this.genBox = h("div");
    this.single = h(
      "div",
      {},
      this.promptRow(),
      this.lensRow,
      this.lensBox,
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
    this.body.append(this.exampleBar, this.dsBox, this.single, this.heatmap.el, this.genBox, this.chartBox, this.distBox, this.listBox);
    for (const t of ["data", "mode", "focus", "dataset", "ds_lens", "align", "example", "lens", "lenses", "generation", "n_future"] as const) this.listen(t, () => this.render());
    this.listen("target_prompt", () => {
      this.targetInput.value = String(this.model.get("target_prompt") ?? "");
    });
    this.listen("future_method", () => {
      this.methodSel.value = String(this.model.get("future_method") ?? "fixed");
    });
    this.listen("max_new_tokens", () => {
      this.maxNewInput.value = String(this.model.get("max_new_tokens") ?? 20);
    });
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
    const lens = this.shownLens();
    const focus = String(this.model.get("focus") ?? "");
    const label = modeLegend(this.effectiveMode(), focus, 0, 1, lens).label;
    const target = lens === "patchscope" && raw && typeof raw.target_prompt === "string" ? ` · target "${raw.target_prompt.replace(/\n/g, "↵")}"` : "";
    return `${lensName(lens)} · ${label} · prompt "${shown}"${target}`.slice(0, 240);
  }

  /** The lens that made the grid shown (the switcher may name one still running). */
  private shownLens(): LensKind {
    const raw = this.model.get("data");
    return (raw?.lens as LensKind | undefined) ?? "logit";
  }

  /** The colour mode that applies to the lens shown (Future Lens: probability only; patchscope: no KL). */
  private effectiveMode(): string {
    const mode = String(this.model.get("mode") ?? "prob");
    const lens = this.shownLens();
    if (lens === "future") return "prob";
    if (lens === "patchscope" && mode === "kl") return "prob";
    return mode;
  }

  private generate(): void {
    const n = Math.round(Number(this.maxNewInput.value));
    this.send("generate", Number.isFinite(n) && n > 0 ? { max_new_tokens: n } : {});
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
    if (this.gen) figs.push(generationFigure(this.gen));
    const acc = this.accuracySeries();
    if (acc) figs.push(chartFigure(acc.heading, acc.series, "layer", "accuracy"));
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
    const raw = this.model.get("data");
    this.data = decodeLens(raw);
    const lens = this.shownLens();
    this.future = lens === "future" ? decodeFuture(raw?.future) : null;
    this.gen = decodeGeneration(this.model.get("generation"));
    this.renderLensControls();
    const mode = this.effectiveMode();
    const pinned = this.model.get("pinned") ?? [];
    const focus = String(this.model.get("focus") || pinned[0] || "");
    clear(this.controls);
    const modeSel = select(
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
    );
    const why: Record<string, string> =
      lens === "future"
        ? {
            rank: "Future Lens reads the next tokens, not a pinned token",
            pinned: "Future Lens reads the next tokens, not a pinned token",
            entropy: "Future Lens gives no entropy",
            kl: "Future Lens gives no KL",
          }
        : lens === "patchscope"
          ? { kl: "a patchscope reads the target prompt's next token: there is no final layer to compare with" }
          : {};
    for (const o of Array.from(modeSel.options)) {
      o.disabled = Boolean(why[o.value]);
      if (why[o.value]) o.title = why[o.value];
    }
    this.controls.append(h("label", {}, "colour: "), modeSel);
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
      this.renderGeneration();
      clear(this.chartBox);
      return;
    }
    const mv = modeValues(d, mode, focus);
    const sel = this.model.get("selected") ?? [];
    if (sel.length === 2 && !this.heatmap.selected && sel[0] < d.L && sel[1] < d.T) this.heatmap.selected = [sel[0], sel[1]];
    const f = this.future;
    const genFrom = lens === "logit" && typeof raw?.generated_from === "number" ? raw.generated_from : -1;
    const baseTip = f ? futureTooltip(d, f) : lensTooltip(d);
    const tooltip = (r: number, c: number): string[] => {
      const lines = baseTip(r, c);
      if (genFrom >= 0 && c >= genFrom) lines[0] += " · generated";
      if (lens === "patchscope") lines.splice(1, 0, "patched into the target prompt, it says next:");
      return lines;
    };
    const cellW = f ? Math.min(200, 34 + 26 * f.n) : 56;
    this.heatmap.setSpec({
      rows: d.L,
      cols: d.T,
      values: mv.values,
      color: (v, th) => sequential(th, mv.lo, mv.hi)(v),
      cellLabel: f ? futureLabel(d, f) : top1Label(d),
      rowLabels: Array.from({ length: d.L }, (_, i) => `L${i}`),
      colLabels: d.tokens.map(visibleToken),
      rowTitle: lens === "patchscope" ? "source layer" : "layer",
      colTitle: genFrom >= 0 ? "position (prompt | generated)" : "position",
      legend: modeLegend(mv.shown, focus, mv.lo, mv.hi, lens),
      tooltip,
      overlay:
        genFrom > 0 && genFrom < d.T
          ? (ctx, _W, H, cw) => {
              // the boundary between the prompt and the generated tokens
              ctx.fillStyle = readTheme(this.el.isConnected ? this.el : document.body).dark ? "#ffd54f" : "#e67e00";
              ctx.fillRect(genFrom * cw - 1.5, 0, 3, H);
            }
          : undefined,
      cellW,
      minCellW: f ? cellW : 44, // long prompts scroll sideways rather than lose the cell text
      cellH: d.L > 40 ? undefined : 18,
      maxWidth: Math.max(600, (this.el.clientWidth || 900) - 80),
      name: lens === "logit" ? "logit lens" : lensName(lens).toLowerCase(),
    });
    this.renderStrip();
    this.renderGeneration();
    this.renderChart();
  }

  /** The switcher (options that cannot run are disabled, saying why), and the shown lens's own settings. */
  private renderLensControls(): void {
    const lenses = this.model.get("lenses") ?? {};
    const asked = String(this.model.get("lens") ?? "logit");
    for (const o of Array.from(this.lensSel.options)) {
      const why = lenses[o.value as LensKind] ?? "";
      o.disabled = Boolean(why);
      if (why) o.title = why;
      else o.removeAttribute("title");
    }
    this.lensSel.value = asked;
    const tuned = lenses.tuned ?? "";
    this.lensSel.title = tuned ? `Which decoder reads each state. Tuned lens: ${tuned}` : "Which decoder reads each (layer, position) state";
    this.psBox.hidden = asked !== "patchscope";
    this.futureBox.hidden = asked !== "future";
    this.nFutureInput.value = String(this.model.get("n_future") ?? 3);
    const shown = this.shownLens();
    this.heading.textContent = lensName(shown);
    this.lensRow.setAttribute("data-shown", shown);
  }

  /** The generated text under the grid, each token coloured by its commit layer. */
  private renderGeneration(): void {
    clear(this.genBox);
    const g = this.gen;
    if (!g) return;
    const raw = this.model.get("data");
    const extended = this.shownLens() === "logit" && typeof raw?.generated_from === "number";
    const select = extended && this.data ? (i: number) => this.heatmap.select(g.commit.data[i] >= 0 ? g.commit.data[i] : this.data!.L - 1, g.nPrompt - 1 + i, false) : undefined;
    this.genBox.append(generationStrip(g, select));
    if (!extended)
      this.genBox.append(
        h(
          "div",
          { class: "wb-hint", "data-testid": "wb-gen-note" },
          "The grid covers the generated positions in the logit lens (its commit layers are the logit lens's): switch the lens to logit to see them.",
        ),
      );
  }

  /** Future Lens: accuracy by layer for each step ahead (null for other lenses or without accuracy). */
  private accuracySeries(): { heading: string; series: Series[] } | null {
    const f = this.future;
    if (!f?.accuracy) return null;
    const L = f.accuracy.shape[0];
    const series = Array.from({ length: f.n }, (_, j) => ({ name: `t+${j + 1}`, values: Array.from({ length: L }, (_, l) => at(f.accuracy!, l, j)) }));
    return { heading: `Future Lens accuracy by layer (against the model's own continuation${f.method ? `; ${f.method}` : ""})`, series };
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
    const acc = this.accuracySeries();
    if (acc) this.chartBox.append(h("div", { class: "wb-subtitle" }, acc.heading), lineChart(acc.series, "layer", "accuracy"));
    if (this.future) {
      this.chartBox.append(h("div", { class: "wb-hint" }, "Future Lens reads the next tokens from each state; pinned tokens are followed in the other lenses."));
      return;
    }
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
