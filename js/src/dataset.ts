// Views over a wb.Dataset: the distribution of per-example effects at one cell (a strip plot, drawn as SVG), the
// best and worst examples, the filter row (text + "correct only"), and DatasetView (the examples with their tokens
// and the model's prediction). Example text goes into the DOM as text only.
import { maybeUnpack, type NDArray } from "./arrays";
import { clear, debounce, fmt, h, s } from "./dom";
import { drawing, type Figure, type Item } from "./export";
import type { AnyModel } from "./model";
import { tokenStrip, visibleToken } from "./tokens";
import type { DatasetTraits, ExampleRow, PredictionState } from "./traits";
import { View } from "./view";

/** Mean, standard error of the mean (ddof = 1; NaN for fewer than two) and count of the finite values. */
export interface Spread {
  mean: number;
  sem: number;
  n: number;
}

export function meanSem(values: ArrayLike<number>): Spread {
  let n = 0;
  let sum = 0;
  for (let i = 0; i < values.length; i++) {
    if (Number.isFinite(values[i])) {
      n++;
      sum += values[i];
    }
  }
  if (n === 0) return { mean: Number.NaN, sem: Number.NaN, n: 0 };
  const mean = sum / n;
  if (n < 2) return { mean, sem: Number.NaN, n };
  let ss = 0;
  for (let i = 0; i < values.length; i++) if (Number.isFinite(values[i])) ss += (values[i] - mean) ** 2;
  return { mean, sem: Math.sqrt(ss / (n - 1)) / Math.sqrt(n), n };
}

/** How per-example metric values are shown, in the units of the map: the normalised effect with the means of the
 *  baselines (so the mean of the shown values is the map's cell), the ablation effect (value − the example's own
 *  unablated metric), or the metric itself. */
export interface Units {
  kind: "normalized" | "ablation" | "metric";
  clean: number;
  corrupt: number;
  cleanEach: ArrayLike<number> | null;
}

export function unitsOf(mode: string, clean: number | null | undefined, corrupt: number | null | undefined, cleanEach: ArrayLike<number> | null): Units {
  const c = clean ?? Number.NaN;
  const k = corrupt ?? Number.NaN;
  if (mode === "ablate") return { kind: "ablation", clean: c, corrupt: k, cleanEach };
  if (Number.isFinite(c) && Number.isFinite(k) && c !== k) return { kind: "normalized", clean: c, corrupt: k, cleanEach };
  return { kind: "metric", clean: c, corrupt: k, cleanEach };
}

export function shown(units: Units, raw: ArrayLike<number>): Float32Array {
  const out = new Float32Array(raw.length);
  for (let i = 0; i < raw.length; i++) {
    const v = raw[i];
    if (units.kind === "normalized") out[i] = (v - units.corrupt) / (units.clean - units.corrupt);
    else if (units.kind === "ablation") out[i] = v - (units.cleanEach ? units.cleanEach[i] : units.clean);
    else out[i] = v;
  }
  return out;
}

export function unitsLabel(units: Units): string {
  return units.kind === "normalized" ? "normalised effect (1 = clean, 0 = corrupt)" : units.kind === "ablation" ? "ablation effect (metric − unablated)" : "metric";
}

/** Every example's value at grid cell `flat` of a per-example array [n, ...grid]. */
export function cellColumn(per: NDArray, flat: number): Float32Array {
  const n = per.shape[0] ?? 0;
  const size = n ? per.data.length / n : 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = per.data[i * size + flat];
  return out;
}

/** The k highest and k lowest finite values, as [example id, value] (highest first / lowest first). */
export function ranked(values: ArrayLike<number>, ids: ArrayLike<number>, k = 3): { best: [number, number][]; worst: [number, number][] } {
  const all: [number, number][] = [];
  for (let i = 0; i < values.length; i++) if (Number.isFinite(values[i])) all.push([ids[i] ?? i, values[i]]);
  const desc = [...all].sort((a, b) => b[1] - a[1] || a[0] - b[0]);
  const asc = [...all].sort((a, b) => a[1] - b[1] || a[0] - b[0]);
  const m = Math.min(k, Math.ceil(all.length / 2));
  return { best: desc.slice(0, m), worst: asc.slice(0, Math.min(k, all.length - m)) };
}

/** One example as a line of text: the clean prompt (→ target / foil). */
export function exampleText(e: ExampleRow | undefined): string {
  if (!e) return "";
  const ans = e.target ? ` → ${visibleToken(e.target)}${e.foil ? ` vs ${visibleToken(e.foil)}` : ""}` : "";
  return `${e.clean}${ans}`;
}

/** The per-example values at one cell, as the distribution panel and its export draw them. */
export interface Distribution {
  title: string;
  values: Float32Array;
  ids: Int32Array | number[];
  units: Units;
  /** What the values are, when not one of the patching units (e.g. the lens's "target probability"). */
  label?: string;
  /** The noun of the best/worst lists ("effect" unless given). */
  noun?: string;
}

function labelOf(d: Distribution): string {
  return d.label ?? unitsLabel(d.units);
}

const W = 460;
const H = 96;
const PAD = 28;

function scale(values: ArrayLike<number>): { lo: number; hi: number; x: (v: number) => number } {
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (Number.isFinite(v)) {
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
  }
  if (lo === Infinity) {
    lo = 0;
    hi = 1;
  }
  if (lo === hi) {
    lo -= 0.5;
    hi += 0.5;
  }
  const span = hi - lo;
  lo -= span * 0.05;
  hi += span * 0.05;
  return { lo, hi, x: (v) => PAD + ((v - lo) / (hi - lo)) * (W - 2 * PAD) };
}

/** Where example i sits vertically in the strip (a fixed jitter, so the plot does not move between redraws). */
function jitter(i: number): number {
  return 22 + ((i * 37) % 11) * 3.4;
}

/** The strip plot's shapes: one dot per example, the mean as a line and ± sem as a band, an axis with ticks. */
function stripItems(d: Distribution, dot: string, band: string): Item[] {
  const sc = scale(d.values);
  const st = meanSem(d.values);
  const items: Item[] = [];
  const axisY = H - 26;
  if (Number.isFinite(st.sem)) items.push({ t: "rect", x: sc.x(st.mean - st.sem), y: 14, w: Math.max(1, sc.x(st.mean + st.sem) - sc.x(st.mean - st.sem)), h: axisY - 16, fill: band });
  items.push({ t: "line", x1: PAD, y1: axisY, x2: W - PAD, y2: axisY });
  for (const v of [sc.lo, (sc.lo + sc.hi) / 2, sc.hi]) {
    items.push({ t: "line", x1: sc.x(v), y1: axisY, x2: sc.x(v), y2: axisY + 4 });
    items.push({ t: "text", x: sc.x(v), y: axisY + 15, text: fmt(v, 2), size: 10, anchor: "middle" });
  }
  if (Number.isFinite(st.mean)) {
    items.push({ t: "line", x1: sc.x(st.mean), y1: 10, x2: sc.x(st.mean), y2: axisY, width: 2 });
    items.push({ t: "text", x: sc.x(st.mean), y: 9, text: `mean ${fmt(st.mean)}`, size: 10, anchor: "middle" });
  }
  for (let i = 0; i < d.values.length; i++) {
    const v = d.values[i];
    if (!Number.isFinite(v)) continue;
    const x = sc.x(v);
    const y = jitter(i);
    items.push({ t: "rect", x: x - 3, y: y - 3, w: 6, h: 6, fill: dot });
  }
  items.push({ t: "text", x: W / 2, y: H - 1, text: labelOf(d), size: 10, anchor: "middle" });
  return items;
}

/** The strip plot as a live SVG: each example a dot (click opens it, its title says which it is). */
export function stripPlot(d: Distribution, onOpen: (id: number) => void): SVGSVGElement {
  const svg = s("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}`, class: "wb-strip-plot", "data-testid": "wb-dist-plot", "data-n": d.values.length }) as SVGSVGElement;
  const sc = scale(d.values);
  const st = meanSem(d.values);
  const axisY = H - 26;
  if (Number.isFinite(st.sem)) {
    const x0 = sc.x(st.mean - st.sem);
    svg.append(s("rect", { x: x0, y: 14, width: Math.max(1, sc.x(st.mean + st.sem) - x0), height: axisY - 16, class: "wb-dist-band", "data-testid": "wb-dist-band" }));
  }
  svg.append(s("line", { x1: PAD, y1: axisY, x2: W - PAD, y2: axisY, class: "wb-dist-axis" }));
  for (const v of [sc.lo, (sc.lo + sc.hi) / 2, sc.hi]) {
    svg.append(s("line", { x1: sc.x(v), y1: axisY, x2: sc.x(v), y2: axisY + 4, class: "wb-dist-axis" }));
    svg.append(s("text", { x: sc.x(v), y: axisY + 15, "text-anchor": "middle", class: "wb-dist-text" }, fmt(v, 2)));
  }
  if (Number.isFinite(st.mean)) {
    svg.append(s("line", { x1: sc.x(st.mean), y1: 10, x2: sc.x(st.mean), y2: axisY, class: "wb-dist-mean", "data-testid": "wb-dist-mean" }));
    svg.append(s("text", { x: sc.x(st.mean), y: 9, "text-anchor": "middle", class: "wb-dist-text" }, `mean ${fmt(st.mean)}`));
  }
  for (let i = 0; i < d.values.length; i++) {
    const v = d.values[i];
    if (!Number.isFinite(v)) continue;
    const id = Number(d.ids[i] ?? i);
    const dot = s("circle", { cx: sc.x(v), cy: jitter(i), r: 4, class: "wb-dist-dot", "data-testid": "wb-dist-point", "data-example": id, "data-value": v, tabindex: 0 });
    dot.append(s("title", {}, `example ${id}: ${fmt(v)} (click to open it)`));
    dot.addEventListener("click", () => onOpen(id));
    dot.addEventListener("keydown", (ev) => {
      if ((ev as KeyboardEvent).key === "Enter") onOpen(id);
    });
    svg.append(dot);
  }
  svg.append(s("text", { x: W / 2, y: H - 1, "text-anchor": "middle", class: "wb-dist-text" }, labelOf(d)));
  return svg;
}

/** The distribution as an export figure (the same geometry as the live plot), with its title. */
export function distributionFigure(d: Distribution, examples: ExampleRow[], dark: boolean): Figure {
  const items: Item[] = [{ t: "text", x: 6, y: 12, text: d.title, size: 12, bold: true }];
  for (const it of stripItems(d, dark ? "#4fc3f7" : "#0069c2", dark ? "rgba(255,210,80,0.25)" : "rgba(255,170,0,0.25)")) {
    if (it.t === "text") items.push({ ...it, y: it.y + 16 });
    else if (it.t === "line") items.push({ ...it, y1: it.y1 + 16, y2: it.y2 + 16 });
    else if (it.t === "rect") items.push({ ...it, y: it.y + 16 });
    else items.push(it);
  }
  const r = ranked(d.values, d.ids);
  let y = H + 34;
  for (const [label, list] of [
    ["highest", r.best],
    ["lowest", r.worst],
  ] as const) {
    for (const [id, v] of list) {
      items.push({ t: "text", x: 6, y, text: `${label}: #${id} ${fmt(v)}  ${exampleText(examples[id]).slice(0, 90)}`, size: 11 });
      y += 15;
    }
  }
  return drawing(W + 180, y, items);
}

/** The panel under the map: the strip plot, mean ± sem, and the best and worst examples (click one to open it). */
export function distributionPanel(d: Distribution, examples: ExampleRow[], onOpen: (id: number) => void): HTMLElement {
  const st = meanSem(d.values);
  const box = h("div", { class: "wb-dist", "data-testid": "wb-distribution" });
  box.append(
    h("div", { class: "wb-subtitle", "data-testid": "wb-dist-title" }, d.title),
    h(
      "div",
      { class: "wb-hint", "data-testid": "wb-dist-summary", "data-mean": String(st.mean), "data-sem": String(st.sem), "data-n": String(st.n) },
      `${fmt(st.mean)} ± ${fmt(st.sem)} (mean ± sem), n = ${st.n} · ${labelOf(d)}`,
    ),
    stripPlot(d, onOpen),
  );
  const r = ranked(d.values, d.ids);
  for (const [label, list, testid] of [
    [`Highest ${d.noun ?? "effect"}`, r.best, "wb-best"],
    [`Lowest ${d.noun ?? "effect"}`, r.worst, "wb-worst"],
  ] as const) {
    const ol = h("ol", { class: "wb-ex-list", "data-testid": testid });
    for (const [id, v] of list) {
      const li = h(
        "li",
        { class: "wb-ex", "data-testid": "wb-example", "data-example": id, tabindex: 0, title: "open this example as a single pair" },
        h("span", { class: "wb-ex-val" }, `#${id}  ${fmt(v)}`),
        h("span", { class: "wb-ex-text" }, exampleText(examples[id])),
      );
      li.addEventListener("click", () => onOpen(id));
      li.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter") onOpen(id);
      });
      ol.append(li);
    }
    box.append(h("div", { class: "wb-ex-head" }, `${label}:`), ol);
  }
  return box;
}

/** The filter row of a view over a dataset: text (debounced as the user types) and "correct only". */
export interface FilterRow {
  el: HTMLElement;
  input: HTMLInputElement;
  check: HTMLInputElement;
  count: HTMLElement;
  sync(text: string, correct: boolean, shownCount: number, total: number): void;
}

export function filterRow(onText: (v: string) => void, onCorrect: (v: boolean) => void): FilterRow {
  const input = h("input", { class: "wb-input", "data-testid": "wb-ds-filter", placeholder: "filter examples by text", spellcheck: "false" });
  const typed = debounce(() => onText(input.value), 350);
  input.addEventListener("input", () => typed());
  input.addEventListener("change", () => onText(input.value));
  const check = h("input", { type: "checkbox", "data-testid": "wb-ds-correct" });
  check.addEventListener("change", () => onCorrect(check.checked));
  const count = h("span", { class: "wb-hint", "data-testid": "wb-ds-count" });
  const el = h(
    "div",
    { class: "wb-row" },
    h("label", { class: "wb-field" }, h("span", {}, "filter"), input),
    h("label", { class: "wb-field", title: "only the examples whose clean top-1 next token is the target (ds.filter_correct(model))" }, check, h("span", {}, "correct only")),
    count,
  );
  return {
    el,
    input,
    check,
    count,
    sync(text, correct, shownCount, total) {
      if (document.activeElement !== input && input.value !== text) input.value = text;
      check.checked = correct;
      count.textContent = `${shownCount} of ${total} examples`;
      count.setAttribute("data-shown", String(shownCount));
    },
  };
}

/** Predictions decoded (null until the kernel sent them). */
export function decodePredictions(p: Partial<PredictionState> | undefined): { top: string[]; prob: NDArray; correct: NDArray } | null {
  if (!p?.top_token) return null;
  const prob = maybeUnpack(p.top_prob);
  const correct = maybeUnpack(p.correct);
  return prob && correct ? { top: p.top_token, prob, correct } : null;
}

/** DatasetView: one row per example: tokens, target and foil, the model's top-1 token, its probability, correct. */
export class DatasetView extends View<DatasetTraits> {
  private filter: FilterRow;
  private table: HTMLElement;

  constructor(model: AnyModel<DatasetTraits>, el: HTMLElement) {
    super(model, el, "Dataset");
    this.filter = filterRow(
      (v) => {
        if (String(this.model.get("filter_text") ?? "") !== v) this.setTrait("filter_text", v);
      },
      (v) => this.setTrait("correct_only", v),
    );
    this.table = h("div", { class: "wb-ds-table", "data-testid": "wb-ds-table" });
    this.body.append(this.filter.el, this.table);
    for (const t of ["dataset", "predictions", "filter_text", "correct_only", "shown"] as const) this.listen(t, () => this.render());
    this.render();
  }

  private examples(): ExampleRow[] {
    return this.model.get("dataset")?.examples ?? [];
  }

  title(): string {
    const d = this.model.get("dataset");
    return `Dataset${d?.name ? ` ${d.name}` : ""} · ${d?.n ?? 0} examples`;
  }

  private rows(): { i: number; e: ExampleRow; pred: string; p: number; ok: number | null }[] {
    const preds = decodePredictions(this.model.get("predictions"));
    const ex = this.examples();
    return (this.model.get("shown") ?? []).map((i) => ({
      i,
      e: ex[i],
      pred: preds ? (preds.top[i] ?? "") : "",
      p: preds ? preds.prob.data[i] : Number.NaN,
      ok: preds ? preds.correct.data[i] : null,
    }));
  }

  figures(): Figure[] {
    const lines = this.rows()
      .slice(0, 60)
      .map((r) => `#${r.i}  ${r.e?.clean ?? ""}  target ${visibleToken(r.e?.target ?? "")}  top-1 ${visibleToken(r.pred)} ${fmt(r.p, 2)} ${r.ok === null ? "" : r.ok ? "correct" : "wrong"}`);
    const items: Item[] = lines.map((text, j) => ({ t: "text", x: 6, y: 14 + 15 * j, text, size: 11 }));
    return [drawing(Math.max(520, 7 * Math.max(0, ...lines.map((l) => l.length))), 20 + 15 * lines.length, items)];
  }

  private render(): void {
    const d = this.model.get("dataset");
    const shownIds = this.model.get("shown") ?? [];
    this.filter.sync(String(this.model.get("filter_text") ?? ""), Boolean(this.model.get("correct_only")), shownIds.length, d?.n ?? 0);
    clear(this.table);
    const note = this.model.get("predictions")?.note;
    if (typeof note === "string" && note) this.table.append(h("div", { class: "wb-hint" }, `(${note})`));
    const table = h("table", { class: "wb-compare wb-ds" });
    table.append(
      h("tr", {}, h("th", {}, "#"), h("th", {}, "tokens (clean; corrupt below)"), h("th", {}, "target"), h("th", {}, "foil"), h("th", {}, "top-1"), h("th", {}, "p"), h("th", {}, "correct")),
    );
    for (const r of this.rows()) {
      const toks = h("td", { class: "wb-ds-tokens" }, tokenStrip(r.e?.tokens ?? [], { testid: "wb-ds-tokens" }));
      if (r.e?.corrupt_tokens) toks.append(tokenStrip(r.e.corrupt_tokens, { testid: "wb-ds-corrupt-tokens" }));
      table.append(
        h(
          "tr",
          { "data-testid": "wb-ds-row", "data-index": r.i, "data-correct": r.ok === null ? "" : String(r.ok) },
          h("td", {}, String(r.i)),
          toks,
          h("td", { class: "wb-ds-tok" }, visibleToken(r.e?.target ?? "")),
          h("td", { class: "wb-ds-tok" }, visibleToken(r.e?.foil ?? "")),
          h("td", { class: "wb-ds-tok", "data-testid": "wb-ds-pred" }, r.ok === null ? "…" : visibleToken(r.pred)),
          h("td", {}, Number.isFinite(r.p) ? fmt(r.p, 3) : ""),
          h("td", { "data-testid": "wb-ds-ok", class: r.ok === 0 ? "wb-ds-bad" : "" }, r.ok === null ? "" : r.ok ? "✓" : "✗"),
        ),
      );
    }
    this.table.append(table);
    if (!shownIds.length && d?.n) this.table.append(h("div", { class: "wb-hint" }, "No example matches the filter."));
  }
}
