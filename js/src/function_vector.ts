// FunctionVectorView: the heads that carry an in-context task (Todd et al. 2024). The [layer, head] map of causal
// indirect effects (a click opens a head: its mean output decoded and its attention on one example; shift-click
// adds it to the vector or takes it out), the vector's heads and top tokens, its zero-shot accuracy by layer against
// the baseline, and a prompt box that continues a prompt with and without the vector.
import { maybeUnpack, type NDArray } from "./arrays";
import { css, diverging, readTheme, type RGB, sequential, type Theme } from "./colors";
import { button, clear, fmt, h, s, select } from "./dom";
import { drawing, type Figure, type Item, textFigure } from "./export";
import { Heatmap } from "./heatmap";
import type { AnyModel } from "./model";
import type { FunctionVectorRequest } from "./protocol";
import type { EvaluationState, FunctionVectorTraits, TrialState } from "./traits";
import { visibleToken } from "./tokens";
import { View } from "./view";

/** Colours of the accuracy chart that read on the theme's background. */
export function chartColors(dark: boolean): { vector: string; baseline: string; mark: string } {
  return dark ? { vector: "#6cb4ff", baseline: "#ffa657", mark: "#d2a8ff" } : { vector: "#1f5fa8", baseline: "#c2410c", mark: "#7c3aed" };
}

/** The geometry of the accuracy chart, shared by the live SVG and the PNG/SVG export. */
export interface ChartGeometry {
  items: Item[];
  width: number;
  height: number;
  /** The x of layer i (CSS pixels from the chart's left edge). */
  x: (layer: number) => number;
  padL: number;
  plotW: number;
}

/** Zero-shot accuracy with the vector at each layer (line, markers, ± sem), the baseline without it (dashed), the best
 *  layer annotated and the layer of the prompt box marked. */
export function accuracyChart(ev: EvaluationState, acc: ArrayLike<number>, sem: ArrayLike<number>, tryLayer: number, dark: boolean, width = 640, height = 230): ChartGeometry {
  const col = chartColors(dark);
  const padL = 44;
  const padR = 170;
  const padT = 14;
  const padB = 36;
  const plotW = width - padL - padR;
  const plotH = height - padT - padB;
  const layers = ev.layers ?? [];
  const n = layers.length;
  const lo = n ? Math.min(...layers) : 0;
  const hi = n ? Math.max(...layers) : 1;
  const X = (layer: number) => padL + (hi === lo ? plotW / 2 : ((layer - lo) / (hi - lo)) * plotW);
  const Y = (v: number) => padT + plotH - Math.min(1, Math.max(0, v)) * plotH;
  const items: Item[] = [];
  const grid = dark ? "rgba(255,255,255,0.12)" : "rgba(0,0,0,0.10)";
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    items.push({ t: "line", x1: padL, y1: Y(v), x2: padL + plotW, y2: Y(v), color: grid });
    items.push({ t: "text", x: padL - 6, y: Y(v) + 3, text: v.toFixed(2), size: 10, anchor: "end" });
  }
  items.push({ t: "line", x1: padL, y1: padT + plotH, x2: padL + plotW, y2: padT + plotH });
  items.push({ t: "line", x1: padL, y1: padT, x2: padL, y2: padT + plotH });
  const step = Math.max(1, Math.ceil(n / 15));
  for (let i = 0; i < n; i += step) items.push({ t: "text", x: X(layers[i]), y: padT + plotH + 13, text: String(layers[i]), size: 10, anchor: "middle" });
  items.push({ t: "text", x: padL + plotW / 2, y: padT + plotH + 29, text: "layer l (the vector added after block l, at the last position)", size: 10, anchor: "middle" });
  items.push({ t: "text", x: 8, y: padT - 3, text: "zero-shot accuracy", size: 10 });
  if (tryLayer >= lo && tryLayer <= hi && n) {
    for (let y = padT; y < padT + plotH; y += 6) items.push({ t: "line", x1: X(tryLayer), y1: y, x2: X(tryLayer), y2: Math.min(y + 3, padT + plotH), color: col.mark, width: 1.5 });
  }
  const base = ev.baseline ?? Number.NaN;
  if (Number.isFinite(base)) {
    for (let x = padL; x < padL + plotW; x += 9) items.push({ t: "line", x1: x, y1: Y(base), x2: Math.min(x + 5, padL + plotW), y2: Y(base), color: col.baseline, width: 2 });
  }
  const pts: [number, number][] = [];
  for (let i = 0; i < n; i++) {
    const v = acc[i];
    if (!Number.isFinite(v)) continue;
    pts.push([X(layers[i]), Y(v)]);
    const e = sem[i];
    if (Number.isFinite(e) && e > 0) items.push({ t: "line", x1: X(layers[i]), y1: Y(v - e), x2: X(layers[i]), y2: Y(v + e), color: col.vector, width: 1 });
  }
  items.push({ t: "polyline", points: pts, color: col.vector, width: 2 });
  for (const [x, y] of pts) items.push({ t: "rect", x: x - 2, y: y - 2, w: 4, h: 4, fill: col.vector });
  const best = ev.best_layer;
  const bi = layers.indexOf(best);
  if (bi >= 0 && Number.isFinite(acc[bi])) {
    const bx = X(best);
    const by = Y(acc[bi]);
    items.push({ t: "rect", x: bx - 4, y: by - 4, w: 8, h: 8, fill: col.vector });
    items.push({ t: "text", x: bx, y: Math.max(10, by - 8), text: `best: layer ${best}, ${fmt(acc[bi], 2)}`, size: 10, anchor: "middle", bold: true });
  }
  // the legend, right of the plot
  const lx = padL + plotW + 14;
  items.push({ t: "line", x1: lx, y1: padT + 8, x2: lx + 22, y2: padT + 8, color: col.vector, width: 2 });
  items.push({ t: "text", x: lx + 28, y: padT + 12, text: "with the vector", size: 11 });
  for (let x = lx; x < lx + 22; x += 9) items.push({ t: "line", x1: x, y1: padT + 28, x2: x + 5, y2: padT + 28, color: col.baseline, width: 2 });
  items.push({ t: "text", x: lx + 28, y: padT + 32, text: `without: ${Number.isFinite(base) ? fmt(base, 2) : "?"}`, size: 11 });
  if (tryLayer >= lo && tryLayer <= hi && n) {
    items.push({ t: "line", x1: lx + 11, y1: padT + 42, x2: lx + 11, y2: padT + 54, color: col.mark, width: 1.5 });
    items.push({ t: "text", x: lx + 28, y: padT + 52, text: `prompt box: layer ${tryLayer}`, size: 11 });
  }
  return { items, width, height, x: X, padL, plotW };
}

/** The layer nearest to x on a chart (for a click). */
export function layerAt(g: ChartGeometry, layers: number[], x: number): number | null {
  let best: number | null = null;
  let dist = Infinity;
  for (const l of layers) {
    const d = Math.abs(g.x(l) - x);
    if (d < dist) {
      dist = d;
      best = l;
    }
  }
  return dist <= Math.max(8, (1.5 * g.plotW) / Math.max(1, layers.length)) ? best : null;
}

/** Attention weights from the last position as a background colour (the theme's background -> blue). */
function weightColor(theme: Theme, w: number, max: number): string {
  const top: RGB = theme.dark ? [90, 160, 235] : [33, 102, 172];
  const t = Math.min(1, Math.max(0, w / (max || 1)));
  const c: RGB = [theme.bg[0] + (top[0] - theme.bg[0]) * t, theme.bg[1] + (top[1] - theme.bg[1]) * t, theme.bg[2] + (top[2] - theme.bg[2]) * t];
  return css(c);
}

const headLabel = (l: number, hd: number) => `L${l} H${hd}`;

export class FunctionVectorView extends View<FunctionVectorTraits, FunctionVectorRequest> {
  readonly grid: Heatmap;
  readonly patternMap: Heatmap;
  private taskBox: HTMLElement;
  private shotsInput: HTMLInputElement;
  private promptsInput: HTMLInputElement;
  private seedInput: HTMLInputElement;
  private topInput: HTMLInputElement;
  private evalInput: HTMLInputElement;
  private gridTitle: HTMLElement;
  private gridNote: HTMLElement;
  private headBox: HTMLElement;
  private vectorBox: HTMLElement;
  private chartBox: HTMLElement;
  private chartTitle: HTMLElement;
  private tryPrompt: HTMLTextAreaElement;
  private layerInput: HTMLInputElement;
  private scaleInput: HTMLInputElement;
  private tokensInput: HTMLInputElement;
  private positionsSel: HTMLSelectElement;
  private trialBox: HTMLElement;
  private themeWatch: MutationObserver | null = null;
  private patternOpen = false;

  constructor(model: AnyModel<FunctionVectorTraits>, el: HTMLElement) {
    super(model, el, "Function vector");
    const num = (name: "n_shots" | "n_prompts" | "seed" | "top_n" | "eval_prompts", title: string, min: number) => {
      const input = h("input", { class: "wb-input wb-num", type: "number", min, step: 1, "data-testid": `wb-fv-${name}`, title });
      input.addEventListener("change", () => {
        const v = Number(input.value);
        if (input.value.trim() === "" || !Number.isInteger(v)) {
          input.value = String(this.model.get(name));
          return;
        }
        this.setTrait(name, v);
      });
      return input;
    };
    const field = (label: string, ...kids: HTMLElement[]) => h("label", { class: "wb-field" }, h("span", {}, label), ...kids);
    this.shotsInput = num("n_shots", "Demonstrations in each in-context prompt (the paper: 10)", 0);
    this.promptsInput = num("n_prompts", "In-context prompts the head outputs are averaged over and the effects measured on", 1);
    this.seedInput = num("seed", "Which prompts are drawn", 0);
    this.topInput = num("top_n", "Build the vector from the top n heads (resets a hand-picked set)", 1);
    this.evalInput = num("eval_prompts", "Zero-shot queries the accuracy is measured on", 1);
    this.taskBox = h("div", { class: "wb-caption", "data-testid": "wb-fv-task" });
    const controls = h(
      "div",
      { class: "wb-controls", "data-testid": "wb-fv-controls" },
      field("shots", this.shotsInput),
      field("prompts", this.promptsInput),
      field("seed", this.seedInput),
      button("Compute", () => this.send("recompute", {}), { "data-testid": "wb-fv-recompute", title: "Compute the head effects again with these settings" }),
      h("span", { class: "wb-spacer" }),
      field("top n heads", this.topInput),
      field("eval queries", this.evalInput),
    );

    this.grid = new Heatmap({ rows: 0, cols: 0, values: new Float32Array(0), color: () => [0, 0, 0], name: "head effects" });
    this.grid.canvas.setAttribute("data-role", "fv-heads");
    this.grid.onApply = (l, hd) => this.send("head", { layer: l, head: hd });
    this.grid.onToggle = (l, hd) => this.send("toggle", { layer: l, head: hd });
    this.followSelection(this.grid);
    this.gridTitle = h("div", { class: "wb-subtitle", "data-testid": "wb-fv-grid-title" }, "Causal indirect effect of each head");
    this.gridNote = h("div", { class: "wb-hint", "data-testid": "wb-fv-grid-note" }, "click a head to open it · shift-click (or Space) adds it to the vector or takes it out");
    this.gridNote.style.maxWidth = "330px";
    this.headBox = h("div", { class: "wb-fv-head", "data-testid": "wb-fv-head" });
    this.headBox.style.cssText = "min-width:320px;max-width:540px";
    this.patternMap = new Heatmap({ rows: 0, cols: 0, values: new Float32Array(0), color: () => [0, 0, 0], name: "attention pattern" });
    this.patternMap.canvas.setAttribute("data-role", "fv-pattern");
    this.patternMap.applyOnClick = false;

    this.vectorBox = h("div", { class: "wb-fv-vector", "data-testid": "wb-fv-vector" });
    this.chartTitle = h("div", { class: "wb-subtitle", "data-testid": "wb-fv-chart-title" }, "Zero-shot accuracy by layer");
    this.chartBox = h("div", { class: "wb-fv-chart", "data-testid": "wb-fv-chart" });

    this.tryPrompt = h("textarea", {
      class: "wb-prompt",
      "data-testid": "wb-fv-prompt",
      rows: 2,
      spellcheck: "false",
      title: "A prompt to continue with and without the vector (Enter runs, Shift+Enter breaks the line)",
    });
    this.tryPrompt.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) {
        e.preventDefault();
        this.generate();
      }
    });
    this.layerInput = h("input", {
      class: "wb-input wb-num",
      type: "number",
      min: 0,
      step: 1,
      "data-testid": "wb-fv-layer",
      title: "The vector is added after block l (wb.steer's layer l + 1); click the chart to pick it",
    });
    this.scaleInput = h("input", { class: "wb-input wb-num", type: "number", step: 0.5, "data-testid": "wb-fv-scale", title: "The vector times this" });
    this.tokensInput = h("input", { class: "wb-input wb-num", type: "number", min: 1, max: 64, step: 1, "data-testid": "wb-fv-tokens", title: "Tokens to generate" });
    this.positionsSel = select([["last", "last"]], "last", () => undefined, {
      "data-testid": "wb-fv-positions",
      title: "Where the vector is added: the last position (and each generated token), or every position",
    });
    this.trialBox = h("div", { class: "wb-fv-trial", "data-testid": "wb-fv-trial" });
    const tryBox = h(
      "div",
      { class: "wb-fv-try", "data-testid": "wb-fv-try" },
      h("div", { class: "wb-subtitle" }, "Try the vector on a prompt"),
      h(
        "div",
        { class: "wb-row" },
        this.tryPrompt,
        button("Generate", () => this.generate(), { "data-testid": "wb-fv-generate", class: "wb-btn wb-primary" }),
      ),
      h("div", { class: "wb-controls" }, field("after block", this.layerInput), field("scale", this.scaleInput), field("tokens", this.tokensInput), field("positions", this.positionsSel)),
      this.trialBox,
    );

    const gridPane = h("div", { class: "wb-pane", "data-testid": "wb-fv-grid" }, this.gridTitle, this.gridNote, this.grid.el);
    const top = h("div", { class: "wb-panes" }, gridPane, h("div", { class: "wb-pane" }, this.headBox));
    const bottom = h("div", { class: "wb-panes" }, h("div", { class: "wb-pane" }, this.vectorBox), h("div", { class: "wb-pane" }, this.chartTitle, this.chartBox));
    this.body.append(this.taskBox, controls, top, bottom, tryBox);

    for (const t of ["effects", "heads", "stale", "n_layers", "n_heads"] as const) this.listen(t, () => this.renderGrid());
    for (const t of ["head", "pattern", "heads", "example", "effects"] as const) this.listen(t, () => this.renderHead());
    for (const t of ["vector", "heads", "stale", "effects"] as const) this.listen(t, () => this.renderVector());
    for (const t of ["evaluation", "stale", "layer"] as const) this.listen(t, () => this.renderChart());
    for (const t of ["trial", "stale"] as const) this.listen(t, () => this.renderTrial());
    for (const t of ["task", "n_shots", "n_prompts", "seed", "top_n", "eval_prompts", "prompt", "layer", "scale", "max_new_tokens", "positions", "position_modes", "evaluation"] as const)
      this.listen(t, () => this.renderControls());
    this.render();
    // the chart and the attention strip take their colours from the theme when drawn: redraw on a theme change
    if (typeof MutationObserver !== "undefined" && document.body) {
      this.themeWatch = new MutationObserver(() => {
        const redraw = () => {
          if (!this.root.isConnected) return;
          this.renderChart();
          this.renderHead();
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

  private stale(part: string): boolean {
    return (this.model.get("stale") ?? []).includes(part);
  }

  private chosen(): Set<string> {
    return new Set((this.model.get("heads") ?? []).map(([l, hd]) => `${l},${hd}`));
  }

  private tryLayer(): number {
    const l = Number(this.model.get("layer") ?? -1);
    if (l >= 0) return l;
    const ev = this.model.get("evaluation");
    return typeof ev?.best_layer === "number" ? Math.min(ev.best_layer, Number(this.model.get("n_layers") ?? 1) - 2) : 0;
  }

  render(): void {
    this.renderControls();
    this.renderGrid();
    this.renderHead();
    this.renderVector();
    this.renderChart();
    this.renderTrial();
  }

  private renderControls(): void {
    const task = this.model.get("task");
    clear(this.taskBox);
    if (task?.name) {
      const pairs = (task.examples ?? []).map(([x, y]) => `${x} → ${y}`).join(", ");
      this.taskBox.append(h("b", {}, `Task ${task.name}`), ` · ${task.n_pairs ?? "?"} pairs: ${pairs}${(task.n_pairs ?? 0) > (task.examples?.length ?? 0) ? ", …" : ""}`);
      if (task.template) this.taskBox.append(h("span", { class: "wb-fv-template" }, ` · template ${JSON.stringify(task.template)}`));
    }
    const active = document.activeElement;
    const set = (input: HTMLInputElement, v: unknown) => {
      if (active !== input) input.value = String(v ?? "");
    };
    set(this.shotsInput, this.model.get("n_shots"));
    set(this.promptsInput, this.model.get("n_prompts"));
    set(this.seedInput, this.model.get("seed"));
    set(this.topInput, this.model.get("top_n"));
    set(this.evalInput, this.model.get("eval_prompts"));
    if (active !== this.tryPrompt) this.tryPrompt.value = String(this.model.get("prompt") ?? "");
    set(this.layerInput, this.tryLayer());
    this.layerInput.max = String(Math.max(0, Number(this.model.get("n_layers") ?? 1) - 2));
    set(this.scaleInput, this.model.get("scale") ?? 1);
    set(this.tokensInput, this.model.get("max_new_tokens") ?? 12);
    const modes = this.model.get("position_modes") ?? ["all"];
    const cur = String(this.model.get("positions") ?? modes[0]);
    if (this.positionsSel.options.length !== modes.length || [...this.positionsSel.options].some((o, i) => o.value !== modes[i])) {
      clear(this.positionsSel);
      for (const m of modes) this.positionsSel.append(h("option", { value: m }, m === "last" ? "last (as the paper)" : "all"));
    }
    this.positionsSel.value = modes.includes(cur) ? cur : modes[0];
    this.positionsSel.disabled = modes.length < 2;
  }

  private renderGrid(): void {
    const eff = this.model.get("effects");
    const vals = eff ? maybeUnpack(eff.values) : null;
    const L = Number(this.model.get("n_layers") ?? 0);
    const H = Number(this.model.get("n_heads") ?? 0);
    if (!eff || !vals || vals.shape.length !== 2) {
      this.grid.outlined = [];
      this.grid.setSpec({ rows: 0, cols: 0, values: new Float32Array(0), color: () => [0, 0, 0], name: "head effects" });
      this.grid.el.setAttribute("data-ready", "false");
      this.gridTitle.textContent = "Causal indirect effect of each head (computing…)";
      return;
    }
    const [rows, cols] = vals.shape;
    const semA = maybeUnpack(eff.sem);
    const norm = maybeUnpack(eff.normalized);
    let m = 0;
    for (let i = 0; i < vals.data.length; i++) if (Number.isFinite(vals.data[i])) m = Math.max(m, Math.abs(vals.data[i]));
    m = m || 1e-6;
    const order = Array.from(vals.data.keys()).sort((a, b) => vals.data[b] - vals.data[a]);
    const rank = new Int32Array(vals.data.length);
    order.forEach((idx, i) => {
      rank[idx] = i + 1;
    });
    const chosen = this.chosen();
    const stale = this.stale("effects");
    const st = eff.settings;
    this.gridTitle.textContent = `Causal indirect effect of each head on p(answer)${stale ? " (earlier settings)" : ""}`;
    this.gridTitle.setAttribute("data-stale", String(stale));
    this.gridNote.textContent = `Each head's mean output (over ${eff.n ?? "?"} ${st?.n_shots ?? "?"}-shot prompts) patched into the same prompts with the labels shuffled: how much it raises p(answer) (${fmt(eff.clean ?? Number.NaN, 2)} in context, ${fmt(eff.corrupt ?? Number.NaN, 2)} shuffled). Click a head to open it; shift-click (or Space) adds it to the vector or takes it out.`;
    this.grid.outlined = (this.model.get("heads") ?? []).filter(([l, hd]) => l < rows && hd < cols).map(([l, hd]) => ({ cell: [l, hd] as [number, number], role: "set" as const }));
    this.grid.setSpec({
      rows,
      cols,
      values: vals.data,
      color: (v, theme) => diverging(theme, m)(v),
      rowLabels: Array.from({ length: rows }, (_, i) => `L${i}`),
      colLabels: Array.from({ length: cols }, (_, i) => `H${i}`),
      rowTitle: "layer",
      colTitle: "head",
      cellW: 30,
      cellH: rows > 40 ? 10 : 14,
      maxWidth: 420,
      legend: { lo: -m, hi: m, label: "rise of p(answer)" },
      tooltip: (l, hd) => {
        const i = l * cols + hd;
        const lines = [`layer ${l}, head ${hd} · rank ${rank[i]} of ${rows * cols}`, `effect ${fmt(vals.data[i])} ± ${fmt(semA?.data[i] ?? Number.NaN)} (sem)`];
        if (norm) lines.push(`normalised ${fmt(norm.data[i])} of the in-context gap`);
        const tok = eff.top_tokens?.[l]?.[hd];
        if (tok !== undefined) lines.push(`mean output decodes to ${visibleToken(tok)}`);
        lines.push(chosen.has(`${l},${hd}`) ? "in the vector · shift-click to take it out" : "shift-click to add it to the vector");
        return lines;
      },
      name: "head effects",
    });
    this.grid.el.setAttribute("data-ready", "true");
    void L;
    void H;
  }

  private renderHead(): void {
    clear(this.headBox);
    const hd = this.model.get("head");
    if (!hd || typeof hd.layer !== "number" || typeof hd.head !== "number") {
      this.headBox.append(
        h("div", { class: "wb-subtitle" }, "A head"),
        h("div", { class: "wb-hint" }, "Click a head in the map to see what its mean output writes (decoded through the unembedding) and where it looks on an in-context prompt."),
      );
      return;
    }
    const inVec = this.chosen().has(`${hd.layer},${hd.head}`);
    const total = Number(this.model.get("n_layers") ?? 0) * Number(this.model.get("n_heads") ?? 0);
    const title = h("div", { class: "wb-subtitle", "data-testid": "wb-fv-head-title" }, `Layer ${hd.layer}, head ${hd.head}`);
    const toggle = button(inVec ? "Take out of the vector" : "Add to the vector", () => this.send("toggle", { layer: hd.layer, head: hd.head }), { "data-testid": "wb-fv-toggle" });
    this.headBox.append(
      h("div", { class: "wb-row" }, title, toggle),
      h(
        "div",
        { class: "wb-caption", "data-testid": "wb-fv-head-effect" },
        `effect ${fmt(hd.effect ?? Number.NaN)} ± ${fmt(hd.sem ?? Number.NaN)} · normalised ${fmt(hd.normalized ?? Number.NaN, 2)} · rank ${hd.rank} of ${total} · ${inVec ? "in the vector" : "not in the vector"}`,
      ),
    );
    const probs = (maybeUnpack(hd.probs)?.data as Float32Array | undefined) ?? new Float32Array(0);
    const list = h("ol", { class: "wb-fv-toplist", "data-testid": "wb-fv-head-tokens" });
    const pmax = Math.max(1e-9, ...Array.from(probs));
    (hd.tokens ?? []).forEach((t, i) => {
      const bar = h("span", { class: "wb-fv-bar" });
      bar.style.width = `${Math.round((120 * Math.max(0, probs[i] ?? 0)) / pmax)}px`;
      list.append(h("li", { "data-testid": "wb-fv-head-token" }, h("code", { class: "wb-pred-tok" }, visibleToken(t)), bar, h("span", { class: "wb-pred-p" }, fmt(probs[i] ?? Number.NaN, 3))));
    });
    this.headBox.append(h("div", { class: "wb-fv-sub" }, "Its mean output (over the in-context prompts, at the last position) decodes to"), list);
    this.renderPattern();
  }

  private renderPattern(): void {
    const hd = this.model.get("head");
    const p = this.model.get("pattern");
    const eff = this.model.get("effects");
    const n = Number(eff?.n ?? this.model.get("n_prompts") ?? 1);
    const ex = Number(this.model.get("example") ?? 0);
    const exInput = h("input", { class: "wb-input wb-num", type: "number", min: 0, max: Math.max(0, n - 1), step: 1, "data-testid": "wb-fv-example", title: "Which in-context prompt" });
    exInput.value = String(ex);
    exInput.addEventListener("change", () => {
      const v = Number(exInput.value);
      if (!Number.isInteger(v) || v < 0 || v >= n) {
        exInput.value = String(ex);
        return;
      }
      this.setTrait("example", v);
    });
    const head = h(
      "div",
      { class: "wb-row" },
      h("span", { class: "wb-fv-sub" }, "Where it looks from the last token, on in-context prompt"),
      exInput,
      h("span", { class: "wb-hint" }, `of 0..${n - 1}`),
    );
    this.headBox.append(head);
    const pat: NDArray | null = p && hd && p.layer === hd.layer && p.head === hd.head && p.example === ex ? maybeUnpack(p.data) : null;
    if (!p || !pat || pat.shape.length !== 2) {
      this.headBox.append(h("div", { class: "wb-hint", "data-testid": "wb-fv-pattern-wait" }, "computing its attention on this prompt…"));
      return;
    }
    const toks = p.tokens ?? [];
    const T = pat.shape[0];
    const last = pat.data.subarray((T - 1) * T, T * T);
    let mx = 1e-9;
    for (let i = 0; i < last.length; i++) mx = Math.max(mx, last[i]);
    const theme = readTheme(this.el.isConnected ? this.el : document.body);
    const strip = h("div", { class: "wb-strip wb-fv-attn", "data-testid": "wb-fv-attn-strip" });
    strip.style.maxHeight = "12em";
    toks.forEach((t, i) => {
      const w = last[i] ?? 0;
      const span = h(
        "span",
        { class: "wb-token", "data-testid": "wb-token", "data-pos": i, "data-weight": w.toFixed(4), title: `position ${i} ${JSON.stringify(t)}: attention ${fmt(w)}` },
        visibleToken(t),
      );
      span.style.background = weightColor(theme, w, mx);
      if (w / mx > 0.55) span.style.color = theme.dark ? "#0b1220" : "#ffffff";
      strip.append(span);
    });
    this.headBox.append(strip, h("div", { class: "wb-hint" }, `the prompt's answer: ${visibleToken(p.target ?? "")} · darker = more attention from the last token (max ${fmt(mx, 2)})`));
    const cell = Math.max(2, Math.min(6, Math.floor(360 / Math.max(1, T))));
    this.patternMap.setSpec({
      rows: T,
      cols: T,
      values: pat.data,
      color: (v, th) => sequential(th, 0, 1)(v),
      rowTitle: "query",
      colTitle: "key",
      cellW: cell,
      cellH: cell,
      maxWidth: 420,
      legend: { lo: 0, hi: 1, label: "attention probability" },
      tooltip: (q, k) => [`query ${q} (${visibleToken(toks[q] ?? "")}) → key ${k} (${visibleToken(toks[k] ?? "")})`, `weight ${fmt(pat.data[q * T + k])}`],
      name: `attention L${p.layer} H${p.head}`,
    });
    const details = h("details", { class: "wb-fv-details", "data-testid": "wb-fv-pattern-details" }, h("summary", {}, `The whole pattern (${T} × ${T})`), this.patternMap.el);
    details.open = this.patternOpen;
    details.addEventListener("toggle", () => {
      this.patternOpen = details.open;
    });
    this.headBox.append(details);
  }

  private renderVector(): void {
    clear(this.vectorBox);
    const v = this.model.get("vector");
    const heads = this.model.get("heads") ?? [];
    if (!heads.length) {
      this.vectorBox.append(
        h("div", { class: "wb-subtitle" }, "Function vector"),
        h("div", { class: "wb-hint", "data-testid": "wb-fv-no-heads" }, "No heads chosen: shift-click heads in the map, or set top n."),
      );
      return;
    }
    if (!v?.heads) {
      this.vectorBox.append(h("div", { class: "wb-subtitle" }, "Function vector"), h("div", { class: "wb-hint" }, "building the vector…"));
      return;
    }
    const stale = this.stale("vector");
    const title = h(
      "div",
      { class: "wb-subtitle", "data-testid": "wb-fv-vector-title", "data-stale": String(stale) },
      `Function vector: the sum of ${v.heads.length} heads' mean outputs · norm ${fmt(v.norm ?? Number.NaN, 1)}${stale ? " (earlier heads: rebuilding…)" : ""}`,
    );
    const chips = h("div", { class: "wb-row wb-fv-chips", "data-testid": "wb-fv-heads" });
    const scores = maybeUnpack(v.scores)?.data ?? new Float32Array(0);
    v.heads.forEach(([l, hd], i) => {
      const chip = h("span", { class: "wb-chip", "data-testid": "wb-fv-head-chip", "data-head": `${l},${hd}`, title: `effect ${fmt(scores[i] ?? Number.NaN)}: click to open` }, headLabel(l, hd));
      chip.style.cursor = "pointer";
      chip.addEventListener("click", () => {
        this.setTrait("selected", [l, hd]);
        this.send("head", { layer: l, head: hd });
      });
      const x = h("button", { class: "wb-chip-x", type: "button", title: "take it out of the vector", "data-testid": "wb-fv-chip-remove" }, "×");
      x.addEventListener("click", (e) => {
        e.stopPropagation();
        this.send("toggle", { layer: l, head: hd });
      });
      chip.append(x);
      chips.append(chip);
    });
    const probs = (maybeUnpack(v.probs)?.data as Float32Array | undefined) ?? new Float32Array(0);
    const toks = h("div", { class: "wb-row wb-fv-decoded", "data-testid": "wb-fv-decoded" });
    (v.tokens ?? []).forEach((t, i) => {
      toks.append(
        h("span", { class: "wb-word-tok", "data-testid": "wb-fv-vector-token", title: `p ${fmt(probs[i] ?? Number.NaN)}` }, visibleToken(t)),
        h("span", { class: "wb-pred-p" }, fmt(probs[i] ?? Number.NaN, 2)),
      );
    });
    this.vectorBox.append(title, chips, h("div", { class: "wb-fv-sub" }, "It decodes (final norm and unembedding) to"), toks);
    this.vectorBox.setAttribute("data-stale", String(stale));
  }

  private renderChart(): void {
    clear(this.chartBox);
    const ev = this.model.get("evaluation");
    const acc = ev ? maybeUnpack(ev.accuracy) : null;
    if (!ev || !acc) {
      this.chartTitle.textContent = "Zero-shot accuracy by layer";
      const heads = this.model.get("heads") ?? [];
      this.chartBox.append(h("div", { class: "wb-hint" }, heads.length ? "measuring the vector at every layer…" : "Choose heads to build a vector."));
      return;
    }
    const stale = this.stale("evaluation");
    const semA = maybeUnpack(ev.sem)?.data ?? new Float32Array(acc.data.length);
    this.chartTitle.textContent = `Zero-shot accuracy by layer over ${ev.n} queries: baseline ${fmt(ev.baseline ?? Number.NaN, 2)}, best layer ${ev.best_layer}: ${fmt(ev.best_accuracy ?? Number.NaN, 2)}${stale ? " (earlier heads: re-measuring…)" : ""}`;
    this.chartTitle.setAttribute("data-stale", String(stale));
    const theme = readTheme(this.el.isConnected ? this.el : document.body);
    const g = accuracyChart(ev as EvaluationState, acc.data, semA, this.tryLayer(), theme.dark);
    const svg = s("svg", {
      width: g.width,
      height: g.height,
      viewBox: `0 0 ${g.width} ${g.height}`,
      role: "img",
      "data-testid": "wb-fv-chart-svg",
      "aria-label": "zero-shot accuracy by layer",
    }) as SVGSVGElement;
    svg.append(drawing(g.width, g.height, g.items).svg(theme));
    svg.style.cursor = "pointer";
    svg.style.opacity = stale ? "0.45" : "1";
    svg.addEventListener("click", (e) => {
      const box = svg.getBoundingClientRect();
      const x = ((e.clientX - box.left) * g.width) / Math.max(1, box.width);
      const l = layerAt(
        g,
        (ev.layers ?? []).filter((x2) => x2 <= Number(this.model.get("n_layers") ?? 1) - 2),
        x,
      );
      if (l !== null) this.setTrait("layer", l);
    });
    this.chartBox.append(svg, h("div", { class: "wb-hint" }, "click the chart to try the vector at that layer"));
  }

  private generate(): void {
    const layer = Number(this.layerInput.value);
    const scale = Number(this.scaleInput.value);
    const n = Number(this.tokensInput.value);
    this.send("steer", {
      prompt: this.tryPrompt.value,
      layer: Number.isFinite(layer) ? layer : null,
      scale: Number.isFinite(scale) ? scale : 1,
      max_new_tokens: Number.isFinite(n) ? n : null,
      positions: this.positionsSel.value,
    });
  }

  private renderTrial(): void {
    clear(this.trialBox);
    const t = this.model.get("trial");
    if (!t || typeof t.text !== "string") return;
    const stale = this.stale("trial");
    const where = `after block ${t.layer} (wb.steer layer ${t.steer_layer}), ×${fmt(t.scale ?? 1, 2)}, positions ${t.positions}`;
    const rel = t.relative != null ? ` · adds ${fmt(t.relative, 2)}× the residual norm there` : "";
    this.trialBox.append(
      h(
        "div",
        { class: "wb-caption", "data-testid": "wb-fv-trial-title", "data-stale": String(stale) },
        `${JSON.stringify(t.prompt)} with the vector ${where}${rel}${stale ? " · tried with an earlier vector" : ""}`,
      ),
    );
    const row = (label: string, pieces: string[], steered: boolean, testid: string) => {
      const line = h("div", { class: "wb-fv-gen", "data-testid": testid });
      line.append(h("span", { class: "wb-fv-gen-label" }, label));
      line.append(h("span", { class: "wb-fv-gen-prompt" }, visibleToken((t.prompt ?? "").slice(-40))));
      pieces.forEach((piece, i) => {
        const diverged = (t as TrialState).diverge_known && t.diverges_at != null && i >= t.diverges_at;
        const span = h("span", { class: `wb-token wb-fv-piece${diverged ? " wb-fv-diverged" : ""}`, "data-testid": "wb-fv-piece", "data-pos": i }, visibleToken(piece));
        if (diverged && i === t.diverges_at) span.setAttribute("data-first-diverged", "true");
        line.append(span);
      });
      if (!pieces.length) line.append(h("span", { class: "wb-hint" }, "(nothing)"));
      void steered;
      return line;
    };
    this.trialBox.append(row("with the vector", t.pieces ?? [], true, "wb-fv-steered"), row("without", t.baseline_pieces ?? [], false, "wb-fv-baseline"));
    const note = t.same
      ? "The same continuation with and without the vector."
      : t.diverge_known && t.diverges_at != null
        ? `They part at generated token ${t.diverges_at} (marked).`
        : "The continuations differ.";
    this.trialBox.append(h("div", { class: "wb-hint", "data-testid": "wb-fv-trial-note" }, note));
  }

  title(): string {
    const task = this.model.get("task");
    return `Function vector · task ${task?.name ?? "?"}`;
  }

  figures(): Figure[] {
    const figs: Figure[] = [];
    if (this.model.get("effects")?.values) figs.push(this.grid.figure(this.gridTitle.textContent ?? "head effects"));
    const hd = this.model.get("head");
    if (hd && typeof hd.layer === "number") {
      const probs = maybeUnpack(hd.probs)?.data ?? new Float32Array(0);
      const toks = (hd.tokens ?? []).slice(0, 8).map((t, i) => `${visibleToken(t)} ${fmt(probs[i] ?? Number.NaN, 3)}`);
      figs.push(textFigure(`Layer ${hd.layer}, head ${hd.head}: effect ${fmt(hd.effect ?? Number.NaN)} (rank ${hd.rank})`, [`mean output decodes to: ${toks.join("   ")}`]));
    }
    const v = this.model.get("vector");
    if (v?.heads) {
      const probs = maybeUnpack(v.probs)?.data ?? new Float32Array(0);
      figs.push(
        textFigure(`Function vector: ${v.heads.length} heads, norm ${fmt(v.norm ?? Number.NaN, 1)}`, [
          `heads: ${v.heads.map(([l, x]) => headLabel(l, x)).join(", ")}`,
          `decodes to: ${(v.tokens ?? [])
            .slice(0, 10)
            .map((t, i) => `${visibleToken(t)} ${fmt(probs[i] ?? Number.NaN, 2)}`)
            .join("   ")}`,
        ]),
      );
    }
    const ev = this.model.get("evaluation");
    const acc = ev ? maybeUnpack(ev.accuracy) : null;
    if (ev && acc) {
      const theme = readTheme(this.el.isConnected ? this.el : document.body);
      const g = accuracyChart(ev as EvaluationState, acc.data, maybeUnpack(ev.sem)?.data ?? new Float32Array(acc.data.length), this.tryLayer(), theme.dark);
      const head = drawing(g.width, 20, [{ t: "text", x: 6, y: 14, text: this.chartTitle.textContent ?? "", size: 12, bold: true }]);
      const body = drawing(g.width, g.height, g.items);
      figs.push({
        width: g.width,
        height: g.height + 20,
        paint(ctx, th) {
          head.paint(ctx, th);
          ctx.save();
          ctx.translate(0, 20);
          body.paint(ctx, th);
          ctx.restore();
        },
        svg(th) {
          const grp = document.createElementNS("http://www.w3.org/2000/svg", "g");
          grp.append(head.svg(th));
          const b = body.svg(th);
          b.setAttribute("transform", "translate(0,20)");
          grp.append(b);
          return grp;
        },
      });
    }
    const t = this.model.get("trial");
    if (t && typeof t.text === "string") {
      figs.push(
        textFigure(`Tried on ${JSON.stringify(t.prompt)} after block ${t.layer}, ×${fmt(t.scale ?? 1, 2)}`, [
          `with the vector: ${visibleToken(t.text)}`,
          `without:         ${visibleToken(t.baseline ?? "")}`,
        ]),
      );
    }
    return figs;
  }
}
