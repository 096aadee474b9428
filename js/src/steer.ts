// SteerView: a steering studio. Layer and scale sliders, positions all/last, Generate; the unsteered and steered
// continuations stream in side by side token by token (kernel "stream" messages), the first token where they
// differ marked; a scale sweep adds one row per scale. The finished run is the `run` trait.
import { maybeUnpack } from "./arrays";
import { css, type Theme } from "./colors";
import { button, clear, fmt, h, select } from "./dom";
import type { Figure } from "./export";
import type { AnyModel } from "./model";
import type { KernelMessage, SteerRequest, StreamStart, StreamStep } from "./protocol";
import type { SteerRun, SteerSettings, SteerTraits } from "./traits";
import { visibleToken } from "./tokens";
import { View } from "./view";

/** One row as the view holds it while it streams (and after, from the `run` trait). */
export interface RowState {
  label: string;
  scale: number | null;
  ids: number[];
  pieces: string[];
  probs: number[];
  relative: number | null;
  done: boolean;
  /** Each step's alternatives [k] (ids and probabilities), once the run has finished. */
  topIds: Int32Array[] | null;
  topProbs: Float32Array[] | null;
}

export interface RunState {
  id: string;
  state: string;
  live: boolean;
  prompt: string;
  settings: Partial<SteerSettings>;
  rows: RowState[];
  idText: Record<string, string>;
  msFirst: number | null;
}

/** The first step where `row` and `base` differ (a row that ended while the other went on differs there); null
 *  where they agree on every step both have. `complete`: both rows are finished, so a length gap counts. */
export function divergence(row: number[], base: number[], complete: boolean): number | null {
  const n = Math.min(row.length, base.length);
  for (let i = 0; i < n; i++) if (row[i] !== base[i]) return i;
  return complete && row.length !== base.length ? n : null;
}

/** Per token: "same" before the divergence, "diverge" at it, "after" past it. */
export function tokenStates(n: number, at: number | null): string[] {
  return Array.from({ length: n }, (_, i) => (at === null || i < at ? "same" : i === at ? "diverge" : "after"));
}

/** "1, 2.5, -4" -> [1, 2.5, -4]; a message for anything else. */
export function parseScales(text: string, max = 8): { scales: number[]; error: string } {
  const parts = text
    .split(/[,\s;]+/)
    .map((p) => p.trim())
    .filter((p) => p !== "");
  const scales: number[] = [];
  for (const p of parts) {
    const v = Number(p);
    if (!Number.isFinite(v)) return { scales: [], error: `sweep: ${JSON.stringify(p.slice(0, 20))} is not a number (write scales like 0.5, 1, 2)` };
    scales.push(v);
  }
  if (scales.length > max) return { scales: [], error: `sweep: at most ${max} scales beside the slider's (got ${scales.length})` };
  return { scales, error: "" };
}

/** The `run` trait as a RunState (binary arrays unpacked). */
export function runFromTrait(run: Partial<SteerRun> | undefined): RunState | null {
  if (!run?.id || !Array.isArray(run.rows)) return null;
  const rows = run.rows.map((r) => {
    const ids = Array.from((maybeUnpack(r.ids)?.data as Int32Array | undefined) ?? []);
    const probs = Array.from((maybeUnpack(r.probs)?.data as Float32Array | undefined) ?? []);
    const ti = maybeUnpack(r.top_ids);
    const tp = maybeUnpack(r.top_probs);
    let topIds: Int32Array[] | null = null;
    let topProbs: Float32Array[] | null = null;
    if (ti && tp && ti.shape.length === 2) {
      const k = ti.shape[1];
      topIds = [];
      topProbs = [];
      for (let i = 0; i < ti.shape[0]; i++) {
        topIds.push((ti.data as Int32Array).slice(i * k, (i + 1) * k));
        topProbs.push((tp.data as Float32Array).slice(i * k, (i + 1) * k));
      }
    }
    return { label: r.label, scale: r.scale ?? null, ids, pieces: [...(r.pieces ?? [])], probs, relative: r.relative ?? null, done: Boolean(r.done), topIds, topProbs };
  });
  return { id: run.id, state: run.state ?? "done", live: run.live !== false, prompt: run.prompt ?? "", settings: run.settings ?? {}, rows, idText: run.id_text ?? {}, msFirst: run.ms_first ?? null };
}

/** What hovering a generated token says. */
export function tokenTitle(run: RunState, r: number, i: number): string {
  const row = run.rows[r];
  const p = row.probs[i];
  const lines = [`token ${i}: ${visibleToken(row.pieces[i] ?? "")}${Number.isFinite(p) ? `  p = ${fmt(p, 3)}` : ""}`];
  const ids = row.topIds?.[i];
  const probs = row.topProbs?.[i];
  if (ids && probs) {
    const alts = Array.from(ids)
      .map((id, j) => `${visibleToken(run.idText[String(id)] ?? `#${id}`)} ${fmt(probs[j], 2)}`)
      .join("   ");
    lines.push(`the model's top ${ids.length}: ${alts}`);
  }
  return lines.join("\n");
}

function scaleText(v: number): string {
  return Number.isInteger(v)
    ? String(v)
    : fmt(v, Math.abs(v) < 1 ? 3 : 2)
        .replace(/0+$/, "")
        .replace(/\.$/, "");
}

export class SteerView extends View<SteerTraits, SteerRequest> {
  private promptBox: HTMLTextAreaElement;
  private layerSlider: HTMLInputElement;
  private layerLabel: HTMLElement;
  private scaleSlider: HTMLInputElement;
  private scaleInput: HTMLInputElement;
  private pushLabel: HTMLElement;
  private positionsSel: HTMLSelectElement;
  private tokensInput: HTMLInputElement;
  private sweepInput: HTMLInputElement;
  private sweepError: HTMLElement;
  private generateBtn: HTMLButtonElement;
  private vectorLine: HTMLElement;
  private cols: HTMLElement;
  private colHeads: HTMLElement[] = [];
  private texts: HTMLElement[] = [];
  private note: HTMLElement;
  private sweepBox: HTMLElement;
  /** The run drawn: streaming (from messages) or finished (from the trait). */
  run: RunState | null = null;
  /** Per drawn row: its token spans, and the step where it diverged from the unsteered row. */
  private spans: HTMLElement[][] = [];
  private diverged: (number | null)[] = [];
  private rowEls: HTMLElement[] = [];
  private carets: HTMLElement[] = [];

  constructor(model: AnyModel<SteerTraits>, el: HTMLElement) {
    super(model, el, "Steering studio");
    this.promptBox = h("textarea", { class: "wb-prompt", "data-testid": "wb-prompt", rows: 2, spellcheck: "false", title: "The prompt (Enter generates, Shift+Enter breaks the line)" });
    this.promptBox.value = String(model.get("prompt") ?? "");
    this.promptBox.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) {
        e.preventDefault();
        this.generate();
      }
    });
    this.generateBtn = button("Generate", () => this.generate(), {
      "data-testid": "wb-steer-generate",
      class: "wb-btn wb-primary",
      title: "Generate the unsteered and steered continuations (Enter in the prompt)",
    });

    this.layerSlider = h("input", {
      type: "range",
      class: "wb-steer-slider",
      "data-testid": "wb-steer-layer",
      min: 0,
      step: 1,
      title: "The layer whose input (resid_pre) gets the vector",
      "aria-label": "layer",
    });
    this.layerLabel = h("span", { class: "wb-steer-value", "data-testid": "wb-steer-layer-value" });
    this.layerSlider.addEventListener("input", () => {
      this.layerLabel.textContent = this.layerSlider.value;
      this.renderPush(Number(this.layerSlider.value), Number(this.scaleSlider.value));
    });
    this.layerSlider.addEventListener("change", () => this.setTrait("layer", Number(this.layerSlider.value)));

    this.scaleSlider = h("input", { type: "range", class: "wb-steer-slider", "data-testid": "wb-steer-scale", title: "How much of the vector is added (negative: subtracted)", "aria-label": "scale" });
    this.scaleInput = h("input", { type: "number", class: "wb-input wb-num", "data-testid": "wb-steer-scale-value", title: "The scale, exactly" });
    this.scaleInput.style.width = "5.5em";
    this.pushLabel = h("span", { class: "wb-steer-push", "data-testid": "wb-steer-push" });
    this.scaleSlider.addEventListener("input", () => {
      this.scaleInput.value = scaleText(Number(this.scaleSlider.value));
      this.renderPush(Number(this.layerSlider.value), Number(this.scaleSlider.value));
    });
    this.scaleSlider.addEventListener("change", () => this.setTrait("scale", Number(this.scaleSlider.value)));
    this.scaleInput.addEventListener("change", () => {
      const v = Number(this.scaleInput.value);
      if (this.scaleInput.value.trim() === "" || !Number.isFinite(v)) {
        this.scaleInput.value = scaleText(Number(this.model.get("scale") ?? 0));
        return;
      }
      this.setTrait("scale", v);
    });

    this.positionsSel = select(
      [
        ["all", "every position"],
        ["last", "last position only"],
      ],
      String(model.get("positions") ?? "all"),
      (v) => this.setTrait("positions", v),
      { "data-testid": "wb-steer-positions", title: "every position: the prompt and each generated token; last: the prompt's last token and each generated token" },
    );
    this.tokensInput = h("input", { type: "number", class: "wb-input wb-num", "data-testid": "wb-steer-tokens", min: 1, max: 256, step: 1, title: "New tokens to generate (1..256)" });
    this.tokensInput.addEventListener("change", () => {
      const v = Number(this.tokensInput.value);
      if (!Number.isInteger(v) || v < 1 || v > 256) {
        this.sweepError.textContent = "tokens: a whole number 1..256";
        this.sweepError.hidden = false;
        this.tokensInput.value = String(this.model.get("max_new_tokens") ?? 24);
        return;
      }
      this.sweepError.hidden = true;
      this.setTrait("max_new_tokens", v);
    });
    this.sweepInput = h("input", {
      class: "wb-input",
      "data-testid": "wb-steer-sweep",
      placeholder: "e.g. 0.5, 2, 4",
      title: "More scales to run beside the slider's: one row each, in the same batched generation",
    });
    this.sweepInput.style.width = "9em";
    this.sweepError = h("div", { class: "wb-warn", "data-testid": "wb-steer-input-error", hidden: true });
    this.sweepInput.addEventListener("change", () => this.applySweep());
    this.sweepInput.addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        e.preventDefault();
        if (this.applySweep()) this.generate();
      }
    });
    const field = (label: string, ...kids: HTMLElement[]) => h("label", { class: "wb-field" }, h("span", {}, label), ...kids);
    const controls = h(
      "div",
      { class: "wb-controls wb-steer-controls", "data-testid": "wb-steer-controls" },
      field("layer", this.layerSlider, this.layerLabel),
      field("scale", this.scaleSlider, this.scaleInput, this.pushLabel),
      field("add at", this.positionsSel),
      field("tokens", this.tokensInput),
      field("sweep", this.sweepInput),
      this.generateBtn,
    );
    this.vectorLine = h("div", { class: "wb-caption", "data-testid": "wb-steer-vector" });
    this.cols = h("div", { class: "wb-steer-cols", "data-testid": "wb-steer-cols" });
    this.note = h("div", { class: "wb-caption", "data-testid": "wb-steer-note" });
    this.sweepBox = h("div", { "data-testid": "wb-steer-sweep-rows" });
    const legend = h(
      "div",
      { class: "wb-caption wb-steer-legend" },
      h("span", { class: "wb-steer-tok", "data-state": "diverge" }, "first different token"),
      h("span", { class: "wb-steer-tok", "data-state": "after" }, "after it"),
      h("span", {}, "· hover a token for its probability and the model's alternatives"),
    );
    this.body.append(h("div", { class: "wb-row" }, this.promptBox), controls, this.sweepError, this.vectorLine, this.cols, this.note, this.sweepBox, legend);
    for (const t of ["layer", "scale", "positions", "max_new_tokens", "sweep", "scale_min", "scale_max", "scale_step", "n_layers", "norms", "vector_info"] as const)
      this.listen(t, () => this.renderControls());
    this.listen("prompt", () => {
      if (document.activeElement !== this.promptBox) this.promptBox.value = String(this.model.get("prompt") ?? "");
    });
    this.listen("run", () => {
      const run = runFromTrait(this.model.get("run"));
      if (run && (!this.run || this.run.id === run.id || this.run.state !== "running")) this.draw(run);
    });
    this.listen("status", () => this.renderBusy());
    this.renderControls();
    this.draw(runFromTrait(this.model.get("run")));
    this.renderBusy();
  }

  // ---- controls
  private applySweep(): boolean {
    const { scales, error } = parseScales(this.sweepInput.value);
    this.sweepError.textContent = error;
    this.sweepError.hidden = !error;
    if (error) return false;
    this.setTrait("sweep", scales);
    return true;
  }

  private generate(): void {
    if (!this.applySweep()) return;
    // the sliders' traits are sent on release; a value dragged but not released yet goes now
    if (Number(this.scaleSlider.value) !== this.model.get("scale") && document.activeElement === this.scaleSlider) this.setTrait("scale", Number(this.scaleSlider.value));
    // an edited prompt travels with the request: the kernel generates first and measures the new prompt after
    const prompt = this.promptBox.value;
    this.send("generate", prompt !== this.model.get("prompt") ? { prompt } : {});
  }

  private renderBusy(): void {
    const running = this.model.get("status") === "running";
    this.generateBtn.title = running ? "A run is going: a new one starts when it ends (Cancel stops it)" : "Generate the unsteered and steered continuations (Enter in the prompt)";
    this.root.setAttribute("data-busy", String(running));
  }

  private renderControls(): void {
    const L = Number(this.model.get("n_layers") ?? 1);
    this.layerSlider.max = String(Math.max(0, L - 1));
    const layer = Number(this.model.get("layer") ?? 0);
    this.layerSlider.value = String(layer);
    this.layerLabel.textContent = String(layer);
    const lo = Number(this.model.get("scale_min") ?? -10);
    const hi = Number(this.model.get("scale_max") ?? 10);
    this.scaleSlider.min = String(lo);
    this.scaleSlider.max = String(hi);
    this.scaleSlider.step = String(this.model.get("scale_step") || "any");
    const scale = Number(this.model.get("scale") ?? 1);
    this.scaleSlider.value = String(scale);
    if (document.activeElement !== this.scaleInput) this.scaleInput.value = scaleText(scale);
    this.positionsSel.value = String(this.model.get("positions") ?? "all");
    this.tokensInput.value = String(this.model.get("max_new_tokens") ?? 24);
    const sweep = this.model.get("sweep") ?? [];
    if (document.activeElement !== this.sweepInput) this.sweepInput.value = sweep.map(scaleText).join(", ");
    this.renderPush(layer, scale);
    this.renderVector();
  }

  /** "= 0.42× the residual stream" for the scale and layer under the sliders. */
  private renderPush(layer: number, scale: number): void {
    const norms = this.model.get("norms");
    const resid = maybeUnpack(norms?.resid)?.data;
    const vec = maybeUnpack(norms?.vector)?.data;
    const r = resid?.[layer];
    const v = vec?.[layer];
    if (r === undefined || v === undefined || !(r > 0)) {
      this.pushLabel.textContent = "";
      return;
    }
    const rel = (Math.abs(scale) * v) / r;
    this.pushLabel.textContent = `${fmt(rel, 2)}× the residual stream`;
    this.pushLabel.title = `|scale × vector| = ${fmt(Math.abs(scale) * v, 3)}; the median norm of resid_pre[${layer}] over the prompt is ${fmt(r, 3)}. Well below 1× usually steers; near 1× and above tends to overwrite the text.`;
    this.pushLabel.setAttribute("data-strong", String(rel >= 1));
  }

  private renderVector(): void {
    const info = this.model.get("vector_info");
    if (!info?.kind) {
      this.vectorLine.textContent = "";
      return;
    }
    const vec = maybeUnpack(this.model.get("norms")?.vector)?.data;
    const layer = Number(this.model.get("layer") ?? 0);
    const norm = vec?.[layer];
    const normText = norm !== undefined ? ` · norm ${fmt(norm, 3)}` : "";
    if (info.kind === "pair") {
      this.vectorLine.textContent = `Vector: resid_pre[${layer}] at the last token of ${JSON.stringify(info.positive ?? "")} minus ${JSON.stringify(info.negative ?? "")}${normText}`;
    } else if (info.kind === "function vector") {
      const heads = (info.heads ?? []).map(([l, hd]) => `L${l}H${hd}`);
      const shown = heads.length > 8 ? `${heads.slice(0, 8).join(", ")}, …` : heads.join(", ");
      this.vectorLine.textContent = `Vector: a function vector (${info.label})${heads.length ? `, the sum of ${heads.length} heads' mean outputs (${shown})` : ""}${normText}`;
    } else {
      this.vectorLine.textContent = `Vector: a ${info.d_model}-dimensional ${info.label}${normText}, added at resid_pre[layer]`;
    }
  }

  // ---- the run
  protected override onStream(msg: KernelMessage["stream"], buffers: DataView[]): void {
    if (msg.event === "start") this.startRun(msg);
    else if (msg.event === "step") this.addStep(msg, buffers);
  }

  private startRun(msg: StreamStart): void {
    const rows: RowState[] = (msg.rows ?? []).map((r) => ({ label: r.label, scale: r.scale, ids: [], pieces: [], probs: [], relative: null, done: false, topIds: null, topProbs: null }));
    this.draw({ id: msg.run, state: "running", live: msg.live !== false, prompt: msg.prompt ?? "", settings: (msg.settings ?? {}) as Partial<SteerSettings>, rows, idText: {}, msFirst: null });
  }

  private addStep(msg: StreamStep, buffers: DataView[]): void {
    const run = this.run;
    if (!run || run.id !== msg.run || run.state !== "running") return; // a run the view no longer shows
    const b = buffers[0];
    const probs = b && b.byteLength >= 4 * msg.ids.length ? new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + 4 * msg.ids.length)) : null;
    msg.ids.forEach((id, r) => {
      const row = run.rows[r];
      if (!row) return;
      if (id === null) {
        row.done = true;
        return;
      }
      row.ids.push(id);
      row.pieces.push(String(msg.pieces[r] ?? ""));
      row.probs.push(probs ? probs[r] : Number.NaN);
      this.appendToken(r, row.ids.length - 1);
    });
    this.updateDivergence(false);
    this.renderNote();
  }

  /** Draw a whole run (a new stream, or a finished run from the trait). */
  draw(run: RunState | null): void {
    this.run = run;
    clear(this.cols);
    clear(this.sweepBox);
    this.spans = [];
    this.diverged = [];
    this.rowEls = [];
    this.colHeads = [];
    this.texts = [];
    this.carets = [];
    if (!run) {
      const hint = h("div", { class: "wb-caption" }, "Press Generate: the unsteered and the steered continuations appear here side by side, token by token.");
      hint.style.gridColumn = "1 / -1";
      this.cols.append(hint);
      this.renderNote();
      return;
    }
    run.rows.forEach((row, r) => {
      const text = h("div", { class: "wb-steer-text", "data-testid": "wb-steer-text", "data-row": r });
      text.append(h("span", { class: "wb-steer-prompt", "data-testid": "wb-steer-prompt" }, run.prompt));
      const caret = h("span", { class: "wb-steer-caret", "aria-hidden": "true" });
      text.append(caret);
      this.texts.push(text);
      this.carets.push(caret);
      this.spans.push([]);
      this.diverged.push(null);
      if (r < 2) {
        const head = h("div", { class: "wb-steer-head", "data-testid": "wb-steer-head" });
        this.colHeads.push(head);
        const col = h("div", { class: "wb-steer-col", "data-testid": r === 0 ? "wb-steer-unsteered" : "wb-steer-steered", "data-row": r }, head, text);
        this.rowEls.push(col);
        this.cols.append(col);
      } else {
        const label = h("td", { class: "wb-steer-rowlabel" });
        const tr = h("tr", { "data-testid": "wb-steer-sweep-row", "data-row": r }, label, h("td", {}, text));
        this.rowEls.push(tr);
        this.colHeads.push(label);
      }
      for (let i = 0; i < row.ids.length; i++) this.appendToken(r, i);
    });
    if (run.rows.length > 2) {
      const table = h("table", { class: "wb-steer-sweep", "data-testid": "wb-steer-sweep-table" });
      table.append(h("tr", {}, h("th", {}, "scale sweep"), h("th", {}, "continuation (marked where it leaves the unsteered text)")));
      for (const tr of this.rowEls.slice(2)) table.append(tr);
      this.sweepBox.append(table);
    }
    this.updateDivergence(run.state !== "running");
    this.renderHeads();
    this.renderNote();
  }

  private appendToken(r: number, i: number): void {
    const run = this.run;
    if (!run) return;
    const span = h("span", { class: "wb-steer-tok", "data-testid": "wb-steer-tok", "data-i": i, "data-state": "same" }, run.rows[r].pieces[i] ?? "");
    span.title = tokenTitle(run, r, i);
    this.texts[r].insertBefore(span, this.carets[r]);
    this.spans[r].push(span);
  }

  /** Mark each row's divergence from the unsteered row (the unsteered column against the main steered row). */
  private updateDivergence(complete: boolean): void {
    const run = this.run;
    if (!run?.rows.length) return;
    const base = run.rows[0].ids;
    run.rows.forEach((row, r) => {
      const other = r === 0 ? run.rows[1]?.ids : base;
      const at = other ? divergence(row.ids, other, complete || (row.done && (r === 0 ? run.rows[1]?.done : run.rows[0].done) === true)) : null;
      const states = tokenStates(row.ids.length, at);
      this.spans[r].forEach((span, i) => {
        if (span.getAttribute("data-state") !== states[i]) span.setAttribute("data-state", states[i]);
      });
      this.diverged[r] = at;
      this.rowEls[r]?.setAttribute("data-diverges-at", at === null ? "" : String(at));
    });
    const running = run.state === "running";
    run.rows.forEach((row, r) => {
      this.carets[r].hidden = !running || row.done;
    });
  }

  private renderHeads(): void {
    const run = this.run;
    if (!run) return;
    const s = run.settings;
    const where = s.positions === "last" ? "last position only" : "every position";
    run.rows.forEach((row, r) => {
      const head = this.colHeads[r];
      if (!head) return;
      clear(head);
      if (r === 0) {
        head.append(h("span", {}, "Unsteered"), h("span", { class: "wb-steer-sub" }, "the model as it is"));
        return;
      }
      const push = row.relative !== null && Number.isFinite(row.relative) ? ` · ${fmt(row.relative, 2)}× resid` : "";
      if (r === 1) {
        head.append(h("span", {}, "Steered"), h("span", { class: "wb-steer-sub" }, `layer ${s.layer ?? "?"} · scale ${scaleText(row.scale ?? 0)}${push} · ${where}`));
      } else {
        head.append(h("span", {}, `scale ${scaleText(row.scale ?? 0)}`), h("span", { class: "wb-steer-sub" }, push.replace(/^ · /, "")));
      }
    });
  }

  private renderNote(): void {
    const run = this.run;
    if (!run) {
      this.note.textContent = "";
      return;
    }
    const parts: string[] = [];
    const at = this.diverged[1];
    const steered = run.rows[1];
    if (steered) {
      if (at !== null && at !== undefined)
        parts.push(`The steered text leaves the unsteered one at token ${at} (${visibleToken(steered.pieces[at] ?? "")} instead of ${visibleToken(run.rows[0].pieces[at] ?? "end")})`);
      else if (steered.ids.length) parts.push(run.state === "running" ? "So far the same as the unsteered text" : "The same as the unsteered text: try a larger scale or another layer");
    }
    const n = Math.max(0, ...run.rows.map((r) => r.ids.length));
    if (run.state === "running") parts.push(run.live ? `generating… ${n} tokens` : "generating remotely: one request, the whole text arrives at once");
    else if (run.state === "cancelled") parts.push(`cancelled after ${n} tokens`);
    else if (run.state === "failed") parts.push(`stopped by an error after ${n} tokens`);
    else {
      parts.push(`${n} tokens`);
      if (run.msFirst !== null && run.live) parts.push(`first token ${Math.round(run.msFirst)} ms after the click reached the kernel`);
      if (!run.live) parts.push("remote: generated in one request");
    }
    this.note.textContent = parts.join(" · ");
    this.root.setAttribute("data-run-state", run.state);
  }

  // ---- export
  title(): string {
    const s = this.run?.settings ?? {};
    return `Steering · layer ${s.layer ?? this.model.get("layer")} · ${s.positions === "last" ? "last position" : "every position"}`;
  }

  figures(): Figure[] {
    const run = this.run;
    if (!run) return [];
    return [steerFigure(run, this.diverged, [this.vectorLine.textContent ?? "", this.note.textContent ?? ""].filter(Boolean).join("  ·  "))];
  }
}

// ---- PNG / SVG: the rows as wrapped text, the divergent token marked

interface Seg {
  text: string;
  state: string;
}

const MONO = "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace";

function measurer(size: number): (t: string) => number {
  const ctx = typeof document !== "undefined" ? document.createElement("canvas").getContext?.("2d") : null;
  if (ctx) {
    ctx.font = `${size}px ${MONO}`;
    return (t) => ctx.measureText(t).width;
  }
  return (t) => t.length * size * 0.6;
}

/** Wrap segments into lines of at most `width` px, at spaces where it can (inside a word too long for a line),
 *  newlines kept (shown as ↵). */
export function wrapSegments(segs: Seg[], width: number, measure: (t: string) => number): Seg[][] {
  const lines: Seg[][] = [[]];
  let x = 0;
  const put = (text: string, state: string) => {
    lines[lines.length - 1].push({ text, state });
    x += measure(text);
  };
  const newline = () => {
    lines.push([]);
    x = 0;
  };
  for (const seg of segs) {
    seg.text.split("\n").forEach((part, pi) => {
      if (pi > 0) {
        put("↵", seg.state);
        newline();
      }
      for (const word of part.split(/(?=\s)/)) {
        if (!word) continue;
        if (x > 0 && x + measure(word) > width) {
          newline();
        }
        let rest = x === 0 ? word.replace(/^\s+/, "") || word : word;
        while (x + measure(rest) > width && rest.length > 1) {
          let n = rest.length - 1;
          while (n > 1 && x + measure(rest.slice(0, n)) > width) n--;
          put(rest.slice(0, n), seg.state);
          rest = rest.slice(n);
          newline();
        }
        put(rest, seg.state);
      }
    });
  }
  return lines;
}

function steerFigure(run: RunState, diverged: (number | null)[], about: string): Figure {
  const size = 12;
  const lineH = 18;
  const textW = 720;
  const padL = 8;
  const measure = measurer(size);
  type Block = { label: string; lines: Seg[][] };
  const blocks: Block[] = run.rows.map((row, r) => {
    const states = tokenStates(row.ids.length, diverged[r] ?? null);
    const segs: Seg[] = [{ text: run.prompt, state: "prompt" }, ...row.pieces.map((p, i) => ({ text: p, state: states[i] }))];
    const s = run.settings;
    const label =
      r === 0
        ? "Unsteered"
        : `${r === 1 ? "Steered: " : ""}layer ${s.layer ?? "?"}, scale ${scaleText(row.scale ?? 0)}${row.relative !== null && Number.isFinite(row.relative) ? ` (${fmt(row.relative, 2)}× resid)` : ""}`;
    return { label, lines: wrapSegments(segs, textW, measure) };
  });
  const aboutLines = wrapSegments([{ text: about, state: "about" }], textW, (t) => t.length * 6.2);
  let height = 6 + aboutLines.length * 16 + 6;
  for (const b of blocks) height += 20 + b.lines.length * lineH + 8;
  const width = textW + 2 * padL;
  const colors = (theme: Theme) => ({
    prompt: css(theme.dark ? [150, 150, 150] : [120, 120, 120]),
    fg: css(theme.fg),
    mark: theme.dark ? "rgba(255,152,0,0.45)" : "rgba(255,152,0,0.35)",
    after: theme.dark ? "rgba(100,181,246,0.22)" : "rgba(33,150,243,0.13)",
  });
  const layout = (fn: (x: number, y: number, seg: Seg, w: number) => void, label: (y: number, text: string) => void, note: (y: number, text: string) => void) => {
    let y = 6;
    for (const line of aboutLines) {
      note(y + 11, line.map((g) => g.text).join(""));
      y += 16;
    }
    y += 6;
    for (const b of blocks) {
      label(y + 14, b.label);
      y += 20;
      for (const line of b.lines) {
        let x = padL;
        for (const seg of line) {
          const w = measure(seg.text);
          fn(x, y, seg, w);
          x += w;
        }
        y += lineH;
      }
      y += 8;
    }
  };
  return {
    width,
    height,
    paint(ctx, theme) {
      const c = colors(theme);
      layout(
        (x, y, seg, w) => {
          if (seg.state === "diverge" || seg.state === "after") {
            ctx.fillStyle = seg.state === "diverge" ? c.mark : c.after;
            ctx.fillRect(x, y + 1, w, lineH - 2);
          }
          ctx.fillStyle = seg.state === "prompt" ? c.prompt : c.fg;
          ctx.font = `${seg.state === "diverge" ? "bold " : ""}${size}px ${MONO}`;
          ctx.textAlign = "left";
          ctx.textBaseline = "alphabetic";
          ctx.fillText(seg.text, x, y + 13);
        },
        (y, text) => {
          ctx.fillStyle = c.fg;
          ctx.font = `bold 12px ${theme.font}`;
          ctx.textAlign = "left";
          ctx.fillText(text, padL, y);
        },
        (y, text) => {
          ctx.fillStyle = c.prompt;
          ctx.font = `11px ${theme.font}`;
          ctx.textAlign = "left";
          ctx.fillText(text, padL, y);
        },
      );
    },
    svg(theme) {
      const c = colors(theme);
      const NS = "http://www.w3.org/2000/svg";
      const g = document.createElementNS(NS, "g");
      const el = (tag: string, attrs: Record<string, string | number>, text?: string) => {
        const e = document.createElementNS(NS, tag);
        for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
        if (text !== undefined) e.textContent = text;
        g.append(e);
      };
      layout(
        (x, y, seg, w) => {
          if (seg.state === "diverge" || seg.state === "after") el("rect", { x, y: y + 1, width: w, height: lineH - 2, fill: seg.state === "diverge" ? c.mark : c.after });
          el(
            "text",
            {
              x,
              y: y + 13,
              "font-size": size,
              "font-family": MONO,
              "font-weight": seg.state === "diverge" ? "bold" : "normal",
              fill: seg.state === "prompt" ? c.prompt : c.fg,
              "xml:space": "preserve",
            },
            seg.text,
          );
        },
        (y, text) => el("text", { x: padL, y, "font-size": 12, "font-weight": "bold", fill: c.fg }, text),
        (y, text) => el("text", { x: padL, y, "font-size": 11, fill: c.prompt }, text),
      );
      return g;
    },
  };
}
