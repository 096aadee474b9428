// CausalTraceView: ROME's three-panel causal-tracing figure (hidden state, MLP, attention), tokens down and
// layers across, colour = p(target) between the noised run (low) and the clean run (high). A click restores that
// one state and shows the restored run's prediction and logit lens.
import { maybeUnpack, type NDArray } from "./arrays";
import { css, type RGB, type Theme } from "./colors";
import { button, clear, fmt, h, select } from "./dom";
import { drawing, type Figure, textFigure } from "./export";
import { Heatmap, type HeatmapSpec } from "./heatmap";
import type { AnyModel } from "./model";
import type { TracingRequest } from "./protocol";
import type { RestoredCell, TracePanel, TracingTraits } from "./traits";
import { visibleToken } from "./tokens";
import { View } from "./view";

export const KINDS = ["resid", "mlp", "attn"] as const;
export type TraceKind = (typeof KINDS)[number];

/** ROME's panel titles (their Fig. 1) and the short names of the progress text. */
export const PANEL_TITLES: Record<TraceKind, string> = {
  resid: "Impact of restoring state after corrupted input",
  mlp: "Impact of restoring MLP after corrupted input",
  attn: "Impact of restoring Attn after corrupted input",
};
const KIND_NAMES: Record<TraceKind, string> = { resid: "hidden state", mlp: "MLP", attn: "attention" };

/** ROME's colour maps: Purples for the hidden state, Greens for MLP, Reds for attention (light and dark). */
const TOPS: Record<TraceKind, [RGB, RGB]> = {
  resid: [
    [84, 39, 143],
    [177, 156, 217],
  ],
  mlp: [
    [0, 109, 44],
    [116, 196, 118],
  ],
  attn: [
    [165, 15, 21],
    [251, 106, 74],
  ],
};

/** Background (at `lo`) -> the kind's colour (at `hi`), linear as ROME's figures; NaN is grey. */
export function traceScale(kind: TraceKind, theme: Theme, lo: number, hi: number): (v: number) => RGB {
  const top = TOPS[kind][theme.dark ? 1 : 0];
  const span = hi - lo || 1;
  const bg = theme.bg;
  return (v) => {
    if (!Number.isFinite(v)) return [bg[0] * 0.6 + theme.border[0] * 0.4, bg[1] * 0.6 + theme.border[1] * 0.4, bg[2] * 0.6 + theme.border[2] * 0.4];
    const t = Math.min(1, Math.max(0, (v - lo) / span)) * 0.95;
    return [bg[0] + (top[0] - bg[0]) * t, bg[1] + (top[1] - bg[1]) * t, bg[2] + (top[2] - bg[2]) * t];
  };
}

/** A panel's grid [L, C] as the heatmap draws it: C rows (tokens or groups) x L columns (layers). */
export interface PanelGrid {
  L: number;
  C: number;
  /** Row-major [C, L]. */
  values: Float32Array;
  sem: Float32Array | null;
}

export function panelGrid(p: TracePanel): PanelGrid | null {
  const v: NDArray | null = maybeUnpack(p.values);
  if (v?.shape.length !== 2) return null;
  const [L, C] = v.shape;
  const values = new Float32Array(L * C);
  const semA = maybeUnpack(p.sem);
  const sem = semA ? new Float32Array(L * C) : null;
  for (let l = 0; l < L; l++) {
    for (let c = 0; c < C; c++) {
      values[c * L + l] = v.data[l * C + c];
      if (sem && semA) sem[c * L + l] = semA.data[l * C + c];
    }
  }
  return { L, C, values, sem };
}

/** What hovering a cell says: the value, and the effect (value - low). */
export function traceTooltip(kind: TraceKind, p: TracePanel, g: PanelGrid, stale: boolean) {
  return (r: number, c: number): string[] => {
    const v = g.values[r * g.L + c];
    const low = p.low ?? Number.NaN;
    const lines = [`${KIND_NAMES[kind]} · layer ${c} · ${visibleToken(p.labels[r] ?? "")}`, `p(${visibleToken(p.target)}) = ${fmt(v)}`];
    if (g.sem) lines[1] += ` ± ${fmt(g.sem[r * g.L + c])} (sem)`;
    lines.push(`effect = value − low = ${fmt(v - low)}  (low ${fmt(low)}, high ${fmt(p.high ?? Number.NaN)})`);
    if (p.grouped) lines.push(`${p.counts?.[r] ?? "?"} (fact, token) values over ${p.n ?? "?"} facts · open an example to restore`);
    else lines.push("click: restore this state alone");
    if (stale) lines.push("(computed with earlier settings)");
    return lines;
  };
}

/** Layer numbers every 5 layers under a panel's cells when they are too narrow for the heatmap's own column
 *  labels (text only, as textContent). */
export function layerTicks(hm: Heatmap, L: number): void {
  const host = hm.canvas.parentElement;
  if (!host) return;
  host.querySelector(".wb-trace-ticks")?.remove();
  if (hm.cellW >= 12 || L === 0) return;
  const axis = h("div", { class: "wb-trace-ticks", "data-testid": "wb-trace-ticks" });
  axis.style.cssText = `position:relative;height:12px;width:${L * hm.cellW}px;font-size:9px;opacity:.8`;
  for (let l = 0; l < L; l += 5) {
    const tickEl = h("span", {}, String(l));
    tickEl.style.cssText = `position:absolute;left:${l * hm.cellW + hm.cellW / 2}px;transform:translateX(-50%)`;
    axis.append(tickEl);
  }
  host.append(axis);
}

/** A panel's export figure, with the layer ticks (every 5) the heatmap leaves out when its cells are narrow: drawn
 *  in the gap between the cells and the colour bar (the heatmap's export layout: cells at x 56, y 36 with a title
 *  and an axis title, the bar 10 px under them). */
export function withLayerTicks(hm: Heatmap, title: string): Figure {
  const fig = hm.figure(title);
  const L = hm.spec.cols;
  if (hm.cellW >= 12 || L === 0) return fig;
  const padL = 56;
  const y = (title ? 22 : 6) + (hm.spec.colTitle ? 14 : 0) + hm.spec.rows * hm.cellH + 8;
  const items: Parameters<typeof drawing>[2] = [];
  for (let l = 0; l < L; l += 5) items.push({ t: "text", x: padL + l * hm.cellW + hm.cellW / 2, y, text: String(l), size: 8, anchor: "middle" });
  const ticks = drawing(fig.width, fig.height, items);
  return {
    width: fig.width,
    height: fig.height,
    paint(ctx, theme) {
      fig.paint(ctx, theme);
      ticks.paint(ctx, theme);
    },
    svg(theme) {
      const g = fig.svg(theme);
      g.append(ticks.svg(theme));
      return g;
    },
  };
}

/** Figures placed side by side (the three panels, as ROME's figure). */
export function sideBySide(figs: Figure[], gap = 12): Figure {
  const xs: number[] = [];
  let x = 0;
  for (const f of figs) {
    xs.push(x);
    x += f.width + gap;
  }
  return {
    width: Math.max(1, x - gap),
    height: Math.max(1, ...figs.map((f) => f.height)),
    paint(ctx, theme) {
      figs.forEach((f, i) => {
        ctx.save();
        ctx.translate(xs[i], 0);
        f.paint(ctx, theme);
        ctx.restore();
      });
    },
    svg(theme) {
      const g = document.createElementNS("http://www.w3.org/2000/svg", "g");
      figs.forEach((f, i) => {
        const part = f.svg(theme);
        part.setAttribute("transform", `translate(${xs[i]},0)`);
        g.append(part);
      });
      return g;
    },
  };
}

/** The restored run's top-k as bars (text goes in as text). */
function topFigure(r: RestoredCell, probs: Float32Array, theme: Theme | null): Figure {
  const items: Parameters<typeof drawing>[2] = [{ t: "text", x: 6, y: 14, text: "Restored prediction (mean over the noised samples)", size: 12, bold: true }];
  const barColor = theme ? css(theme.dark ? [120, 170, 235] : [33, 102, 172]) : "rgb(33,102,172)";
  r.top_tokens.forEach((t, i) => {
    const y = 32 + i * 18;
    items.push({ t: "text", x: 6, y: y + 10, text: visibleToken(t), size: 11 });
    items.push({ t: "rect", x: 110, y: y + 1, w: Math.max(1, 200 * (probs[i] ?? 0)), h: 12, fill: barColor });
    items.push({ t: "text", x: 316, y: y + 10, text: fmt(probs[i] ?? Number.NaN), size: 11 });
  });
  return drawing(380, 40 + r.top_tokens.length * 18, items);
}

export class TracingView extends View<TracingTraits, TracingRequest> {
  readonly panels: Record<TraceKind, Heatmap>;
  private panelTitles: Record<TraceKind, HTMLElement>;
  private grids: Partial<Record<TraceKind, PanelGrid>> = {};
  private single: HTMLElement;
  private subjectInput: HTMLInputElement;
  private targetInput: HTMLInputElement;
  private noiseInput: HTMLInputElement;
  private samplesInput: HTMLInputElement;
  private windowInput: HTMLInputElement;
  private severSel: HTMLSelectElement;
  private exampleBox: HTMLElement;
  private restoredBox: HTMLElement;
  private lensMap: Heatmap;
  private note: HTMLElement;

  constructor(model: AnyModel<TracingTraits>, el: HTMLElement) {
    super(model, el, "Causal trace");
    const num = (name: "noise" | "samples" | "window", attrs: Record<string, string | number>, title: string) => {
      const input = h("input", { class: "wb-input wb-num", type: "number", "data-testid": `wb-trace-${name}`, title, ...attrs });
      input.style.width = "4.5em";
      input.addEventListener("change", () => {
        const v = Number(input.value);
        if (input.value.trim() === "" || !Number.isFinite(v)) {
          input.value = String(this.model.get(name));
          return;
        }
        this.setTrait(name, v);
      });
      return input;
    };
    this.noiseInput = num("noise", { min: 0, step: 0.5 }, "Noise level: a multiple of the std of the subject tokens' embeddings (ROME: 3)");
    this.samplesInput = num("samples", { min: 1, step: 1 }, "Noised samples per run (ROME: 10)");
    this.windowInput = num("window", { min: 1, step: 1 }, "Layers restored together in the MLP and attention panels (ROME: 10)");
    this.severSel = select(
      [
        ["", "none"],
        ["mlp", "MLP severed"],
        ["attn", "attention severed"],
      ],
      "",
      (v) => this.setTrait("sever", v),
      { "data-testid": "wb-trace-sever", title: "Hidden-state panel: freeze the MLP (or attention) outputs at the restored token, in every layer, at their corrupted values (ROME Fig. 2)" },
    );
    this.subjectInput = h("input", { class: "wb-input", "data-testid": "wb-trace-subject", placeholder: "subject, e.g. Eiffel Tower", title: "The words whose embeddings are noised" });
    this.targetInput = h("input", {
      class: "wb-input",
      "data-testid": "wb-trace-target",
      placeholder: "target (clean top-1)",
      title: "The answer token whose probability is read (empty: the clean top-1)",
    });
    this.targetInput.style.width = "9em";
    const runInputs = () => {
      this.setTrait("subject", this.subjectInput.value);
      this.setTrait("target", this.targetInput.value.replace(/\u2423/g, " "));
    };
    for (const inp of [this.subjectInput, this.targetInput]) {
      inp.addEventListener("keydown", (e) => {
        if (e.key === "Enter") runInputs();
      });
    }
    const field = (label: string, ...kids: HTMLElement[]) => h("label", { class: "wb-field" }, h("span", {}, label), ...kids);
    this.single = h(
      "div",
      { "data-testid": "wb-trace-single" },
      this.promptRow(),
      h("div", { class: "wb-row" }, field("subject", this.subjectInput), field("target", this.targetInput), button("Trace", runInputs, { "data-testid": "wb-trace-run" })),
    );
    const controls = h(
      "div",
      { class: "wb-controls", "data-testid": "wb-trace-controls" },
      field("noise ×std", this.noiseInput),
      field("samples", this.samplesInput),
      field("window", this.windowInput),
      field("sever", this.severSel),
    );
    this.exampleBox = h("div", { class: "wb-row", "data-testid": "wb-trace-examples", hidden: true });
    this.note = h("div", { class: "wb-subtitle", "data-testid": "wb-trace-note" });
    const row = h("div", { class: "wb-trace-panels", "data-testid": "wb-trace-panels" });
    row.style.cssText = "display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start";
    const panels = {} as Record<TraceKind, Heatmap>;
    const titles = {} as Record<TraceKind, HTMLElement>;
    for (const kind of KINDS) {
      const hm = new Heatmap({ rows: 0, cols: 0, values: new Float32Array(0), color: () => [0, 0, 0], name: PANEL_TITLES[kind] });
      hm.canvas.setAttribute("data-role", `trace-${kind}`);
      hm.onApply = (r, c) => this.restore(kind, r, c);
      hm.onSelect = () => {
        for (const other of KINDS) if (other !== kind && this.panels[other].selected) this.panels[other].setSelected(null);
      };
      panels[kind] = hm;
      titles[kind] = h("div", { class: "wb-subtitle wb-trace-title", "data-testid": "wb-trace-title" }, PANEL_TITLES[kind]);
      titles[kind].style.cssText = "width:0;min-width:100%;white-space:normal"; // wraps to its panel: never widens it
      row.append(h("div", { class: "wb-trace-panel", "data-testid": `wb-trace-panel-${kind}`, "data-kind": kind }, titles[kind], hm.el));
    }
    this.panels = panels;
    this.panelTitles = titles;
    this.lensMap = new Heatmap({ rows: 0, cols: 0, values: new Float32Array(0), color: () => [0, 0, 0], name: "restored logit lens" });
    this.lensMap.canvas.setAttribute("data-role", "trace-lens");
    this.lensMap.applyOnClick = false;
    this.restoredBox = h("div", { class: "wb-trace-restored", "data-testid": "wb-trace-restored" });
    this.body.append(this.single, controls, this.exampleBox, this.note, row, this.restoredBox);
    for (const t of ["traces", "stale", "dataset", "example", "restored"] as const) this.listen(t, () => this.render());
    for (const t of ["noise", "samples", "window", "sever", "subject", "target", "n_layers"] as const) this.listen(t, () => this.renderControls());
    this.render();
  }

  private overDataset(): boolean {
    return Number(this.model.get("dataset")?.n ?? 0) > 0;
  }

  private restore(kind: TraceKind, r: number, c: number): void {
    const p = this.model.get("traces")?.[kind];
    if (!p) return;
    if (p.grouped) {
      this.note.textContent = "These are group means over the facts: pick an example above to restore one fact's state.";
      return;
    }
    this.send("restore", { panel: kind, layer: c, position: r });
  }

  private renderControls(): void {
    const ds = this.overDataset();
    this.single.hidden = ds;
    if (document.activeElement !== this.subjectInput) this.subjectInput.value = String(this.model.get("subject") ?? "");
    if (document.activeElement !== this.targetInput) this.targetInput.value = visibleToken(String(this.model.get("target") ?? "")).replace(/^∅$/, "");
    this.noiseInput.value = String(this.model.get("noise") ?? 3);
    this.samplesInput.value = String(this.model.get("samples") ?? 10);
    this.windowInput.value = String(this.model.get("window") ?? 10);
    this.severSel.value = String(this.model.get("sever") ?? "");
  }

  private renderExamples(): void {
    clear(this.exampleBox);
    const dsInfo = this.model.get("dataset");
    this.exampleBox.hidden = !this.overDataset();
    if (!dsInfo || !this.overDataset()) return;
    const ex = Number(this.model.get("example") ?? -1);
    const opts: [string, string][] = [["-1", `group means over ${dsInfo.n} facts`]];
    (dsInfo.examples ?? []).forEach((e, i) => {
      opts.push([String(i), `${i}: ${e.clean.slice(0, 60)} → ${visibleToken(e.target || "?")}`]);
    });
    const sel = select(opts, String(ex), (v) => this.setTrait("example", Number(v)), { "data-testid": "wb-trace-example", title: "Open one fact's own grids (and restore its states)" });
    this.exampleBox.append(h("label", { class: "wb-field" }, h("span", {}, "example"), sel));
    if (ex >= 0) this.exampleBox.append(button("Back to the means", () => this.setTrait("example", -1), { "data-testid": "wb-trace-back" }));
  }

  render(): void {
    this.renderControls();
    this.renderExamples();
    const traces = this.model.get("traces") ?? {};
    const stale = new Set(this.model.get("stale") ?? []);
    const restored = this.model.get("restored");
    const L = Number(this.model.get("n_layers") ?? 0);
    const cellW = Math.max(7, Math.min(28, Math.floor(220 / Math.max(1, L)))); // three panels fit side by side
    let any = false;
    for (const kind of KINDS) {
      const hm = this.panels[kind];
      const p = traces[kind];
      const g = p ? panelGrid(p) : null;
      const title = this.panelTitles[kind];
      if (!p || !g) {
        delete this.grids[kind];
        title.textContent = `${PANEL_TITLES[kind]} (not computed yet)`;
        hm.setSpec({ rows: 0, cols: 0, values: new Float32Array(0), color: () => [0, 0, 0], name: PANEL_TITLES[kind] });
        hm.el.setAttribute("data-ready", "false");
        continue;
      }
      any = true;
      this.grids[kind] = g;
      const isStale = stale.has(kind);
      const sever = kind === "resid" && p.settings?.sever ? ` · ${String(p.settings.sever) === "mlp" ? "MLP" : "Attn"} severed` : "";
      const win = kind !== "resid" && p.settings?.window ? ` · window ${String(p.settings.window)}` : "";
      title.textContent = `${PANEL_TITLES[kind]}${sever}${win}${isStale ? " (earlier settings)" : ""}`;
      title.setAttribute("data-stale", String(isStale));
      const lo = p.low ?? 0;
      const hi = p.high ?? 1;
      const hiSafe = hi > lo ? hi : lo + 1e-6;
      const spec: HeatmapSpec = {
        rows: g.C,
        cols: g.L,
        values: g.values,
        color: (v, theme) => traceScale(kind, theme, lo, hiSafe)(v),
        rowLabels: p.labels.map((t) => (p.grouped ? t : visibleToken(t))),
        colLabels: Array.from({ length: g.L }, (_, i) => String(i)),
        rowTitle: p.grouped ? "position" : "token",
        colTitle: "layer",
        cellW,
        cellH: 18,
        maxWidth: 420,
        legend: { lo, hi: hiSafe, label: `p(${visibleToken(p.target)})`, loText: fmt(lo, 3), hiText: fmt(hi, 3) },
        tooltip: traceTooltip(kind, p, g, isStale),
        name: PANEL_TITLES[kind],
      };
      hm.mark = null;
      hm.shade = null;
      if (restored && restored.kind === kind && !p.grouped && typeof restored.layer === "number" && typeof restored.position === "number") {
        hm.mark = [restored.position, restored.layer];
        const layers = restored.layers ?? [];
        if (layers.length > 1) hm.shade = { r0: restored.position, r1: restored.position, c0: Math.min(...layers), c1: Math.max(...layers) };
      }
      hm.setSpec(spec);
      layerTicks(hm, g.L);
      hm.el.setAttribute("data-ready", "true");
      hm.el.parentElement?.setAttribute("data-stale", String(isStale));
    }
    const any0 = Object.values(traces).find((p) => p) as TracePanel | undefined;
    if (any0 && !any0.grouped) {
      const a = any0.subject;
      const subj = a ? (any0.tokens ?? []).slice(a[0], a[1]).join("") : "";
      this.note.textContent = `target ${visibleToken(any0.target)} · subject ${JSON.stringify(subj)} (tokens marked *) noised · click a cell to restore that state alone`;
    } else if (any0) {
      this.note.textContent = `mean over ${any0.n ?? "?"} facts in ROME's position groups · pick an example to see (and restore) one fact`;
    } else {
      this.note.textContent = any ? "" : "computing the traces…";
    }
    this.renderRestored(restored);
  }

  private renderRestored(r: TracingTraits["restored"]): void {
    clear(this.restoredBox);
    if (!r?.kind || !r.top_tokens) return;
    const kind = (KINDS as readonly string[]).includes(r.kind) ? (r.kind as TraceKind) : "resid";
    const probs = (maybeUnpack(r.top_probs)?.data as Float32Array | undefined) ?? new Float32Array(0);
    const lensP = maybeUnpack(r.lens_probs)?.data ?? new Float32Array(0);
    const lensT = maybeUnpack(r.lens_target)?.data ?? new Float32Array(0);
    const layers = r.layers ?? [];
    const where = layers.length > 1 ? `layers ${Math.min(...layers)}–${Math.max(...layers)}` : `layer ${r.layer}`;
    const sev = r.sever ? ` (${r.sever === "mlp" ? "MLP" : "attention"} severed)` : "";
    const v = r.value ?? Number.NaN;
    this.restoredBox.append(
      h(
        "div",
        { class: "wb-subtitle", "data-testid": "wb-trace-restored-title" },
        `Restored the ${KIND_NAMES[kind]} at ${where}, token ${visibleToken(r.token ?? "")}${sev}: p(${visibleToken(r.target ?? "")}) = ${fmt(v)} (effect ${fmt(v - (r.low ?? Number.NaN))}; noised ${fmt(r.low ?? Number.NaN)}, clean ${fmt(r.high ?? Number.NaN)})`,
      ),
    );
    const list = h("ol", { class: "wb-trace-top", "data-testid": "wb-trace-top" });
    r.top_tokens.forEach((t, i) => {
      const bar = h("span", { class: "wb-trace-bar" });
      bar.style.cssText = `display:inline-block;height:10px;margin:0 6px;vertical-align:middle;background:var(--jp-brand-color1,#2166ac);width:${Math.round(160 * Math.max(0, Math.min(1, probs[i] ?? 0)))}px`;
      list.append(h("li", { "data-testid": "wb-trace-top-token" }, h("code", {}, visibleToken(t)), bar, fmt(probs[i] ?? Number.NaN)));
    });
    const lensTokens = r.lens_tokens ?? [];
    const n = lensTokens.length;
    const vals = new Float32Array(n * 2);
    for (let l = 0; l < n; l++) {
      vals[l * 2] = lensP[l] ?? Number.NaN;
      vals[l * 2 + 1] = lensT[l] ?? Number.NaN;
    }
    this.lensMap.setSpec({
      rows: n,
      cols: 2,
      values: vals,
      color: (x, theme) => traceScale(kind, theme, 0, 1)(x),
      rowLabels: Array.from({ length: n }, (_, i) => `L${i}`),
      colLabels: ["top-1", `p(${visibleToken(r.target ?? "")})`],
      cellLabel: (row, col) => (col === 0 ? visibleToken(lensTokens[row] ?? "") : fmt(vals[row * 2 + 1], 3)),
      rowTitle: "layer",
      cellW: 96,
      cellH: 16,
      legend: { lo: 0, hi: 1, label: "probability (mean of the samples' lens distributions)" },
      tooltip: (row) => [`layer ${row} (last position)`, `top-1 ${visibleToken(lensTokens[row] ?? "")} ${fmt(vals[row * 2])}`, `p(${visibleToken(r.target ?? "")}) ${fmt(vals[row * 2 + 1])}`],
      name: "restored logit lens",
    });
    const lensBox = h("div", { "data-testid": "wb-trace-lens" }, h("div", { class: "wb-subtitle" }, "Its logit lens at the last position"), this.lensMap.el);
    const topBox = h("div", {}, h("div", { class: "wb-subtitle" }, "Restored prediction (mean over the noised samples)"), list);
    const wrap = h("div", {}, topBox, lensBox);
    wrap.style.cssText = "display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start";
    this.restoredBox.append(wrap);
  }

  title(): string {
    const ds = this.model.get("dataset");
    if (ds?.n) {
      const ex = Number(this.model.get("example") ?? -1);
      return ex >= 0 ? `Causal trace · fact ${ex}: "${ds.examples?.[ex]?.clean ?? ""}"` : `Causal trace · mean over ${ds.n} facts (ROME's position groups)`;
    }
    return `Causal trace · "${String(this.model.get("prompt") ?? "")}" · subject "${String(this.model.get("subject") ?? "")}"`.slice(0, 200);
  }

  figures(): Figure[] {
    const traces = this.model.get("traces") ?? {};
    const parts = KINDS.filter((k) => traces[k] && this.grids[k]).map((k) => withLayerTicks(this.panels[k], this.panelTitles[k].textContent ?? PANEL_TITLES[k]));
    const figs: Figure[] = parts.length ? [sideBySide(parts)] : [];
    const r = this.model.get("restored");
    if (r?.top_tokens?.length) {
      const probs = (maybeUnpack(r.top_probs)?.data as Float32Array | undefined) ?? new Float32Array(0);
      const title = this.restoredBox.querySelector("[data-testid=wb-trace-restored-title]")?.textContent ?? "";
      figs.push(textFigure("", [title]));
      figs.push(sideBySide([topFigure(r as RestoredCell, probs, null), this.lensMap.figure("Its logit lens at the last position")], 24));
    }
    return figs;
  }
}
