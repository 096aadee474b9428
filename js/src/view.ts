// Shared chrome of every view: status, progress + cancel, error box, exports, run history.
import { button, clear, fmt, h } from "./dom";
import { copyText, dataURLBytes, download, svgText } from "./export";
import type { Heatmap } from "./heatmap";
import type { AnyModel, Handler } from "./model";
import { visibleToken } from "./tokens";

let counter = 0;
export function requestId(): string {
  counter += 1;
  return `r${Date.now().toString(36)}-${counter}`;
}

export interface HistoryEntry {
  id: string;
  label: string;
  value?: number | null;
  clean?: number | null;
  corrupt?: number | null;
  top?: [string, number][];
  code?: string;
  args?: Record<string, unknown>;
}

export const HISTORY_MAX = 50;

function argText(v: unknown): string {
  if (typeof v === "string") return v;
  return JSON.stringify(v) ?? String(v);
}

/** For each entry, the arguments that differ between the entries (shortened around where they differ). */
export function differingArgs(hist: HistoryEntry[]): string[] {
  const keys = new Set<string>();
  for (const e of hist) for (const k of Object.keys(e.args ?? {})) keys.add(k);
  const differ: string[] = [];
  for (const k of keys) {
    const vals = hist.map((e) => argText(e.args?.[k] ?? ""));
    if (new Set(vals).size > 1) differ.push(k);
  }
  return hist.map((e) =>
    differ
      .filter((k) => e.args !== undefined && k in e.args) // an argument this run did not have is not shown as ∅
      .map((k) => {
        const vals = hist.map((x) => argText(x.args?.[k] ?? ""));
        const v = argText(e.args?.[k] ?? "");
        // common prefix of all values: show the part from just before where they start to differ
        let p = 0;
        while (vals.every((x) => x.length > p && x[p] === vals[0][p])) p++;
        let shown = p > 12 ? `…${v.slice(p - 8)}` : v;
        if (shown.length > 36) shown = `${shown.slice(0, 35)}…`;
        return `${k}=${visibleToken(shown)}`;
      })
      .join("  "),
  );
}

export abstract class View {
  readonly model: AnyModel;
  readonly el: HTMLElement;
  readonly root: HTMLElement;
  readonly body: HTMLElement;
  protected status: HTMLElement;
  protected errorBox: HTMLElement;
  protected progress: HTMLProgressElement;
  protected cancelBtn: HTMLButtonElement;
  protected historyBox: HTMLElement;
  protected codeBox: HTMLElement;
  private listeners: [string, Handler][] = [];
  private compare = new Set<string>();
  /** Run history: the kernel sends each new entry once ("history_add"), and the whole list once on attach. */
  protected hist: HistoryEntry[] = [];
  readonly standalone: boolean;

  constructor(model: AnyModel, el: HTMLElement, title: string) {
    this.model = model;
    this.el = el;
    this.standalone = Boolean(model.get("_standalone"));
    this.status = h("span", { class: "wb-status", "data-testid": "wb-status", role: "status" }, "idle");
    this.progress = h("progress", { class: "wb-progress", "data-testid": "wb-progress", max: 1, value: 0, hidden: true });
    this.cancelBtn = button("Cancel", () => this.send("cancel", {}), { "data-testid": "wb-cancel", disabled: true });
    this.errorBox = h("div", { class: "wb-error", "data-testid": "wb-error", role: "alert", hidden: true });
    this.historyBox = h("div", { class: "wb-history", "data-testid": "wb-history" });
    this.codeBox = h("pre", { class: "wb-code", "data-testid": "wb-code", hidden: true });
    const exports = h(
      "span",
      { class: "wb-exports" },
      button("PNG", () => this.savePNG(), { "data-testid": "wb-export-png", title: "Download the current view as PNG" }),
      button("SVG", () => this.saveSVG(), { "data-testid": "wb-export-svg", title: "Download the current view as SVG" }),
      button("HTML", () => this.send("export_html", {}), { "data-testid": "wb-export-html", title: "Download a standalone HTML page (no kernel needed)", disabled: this.standalone }),
      button("Code", () => this.showCode(), { "data-testid": "wb-copy-code", title: "Show and copy the nnsight code of the current intervention" }),
    );
    const header = h("div", { class: "wb-header" }, h("span", { class: "wb-title" }, title), this.status, this.progress, this.cancelBtn, exports);
    this.body = h("div", { class: "wb-body" });
    this.root = h("div", { class: "wb-root", "data-testid": "wb-view" }, header, this.errorBox, this.body, this.codeBox, this.historyBox);
    this.root.setAttribute("data-kind", String(model.get("_view_kind") ?? ""));
    el.append(this.root);
    this.listen("change:status", () => this.renderStatus());
    this.listen("change:progress", () => this.renderStatus());
    this.listen("change:progress_text", () => this.renderStatus());
    this.listen("change:error", () => this.renderStatus());
    this.hist = ((model.get("history") ?? []) as HistoryEntry[]).slice(-HISTORY_MAX); // standalone export state
    this.listen("change:code", () => {
      if (!this.codeBox.hidden) this.codeBox.textContent = this.codeText();
    });
    this.listen("msg:custom", (content: any, buffers: DataView[]) => this.onMessage(content, buffers ?? []));
    this.renderStatus();
    this.renderHistory();
    // tell the kernel a front end draws this view (save_png/save_svg need one) and get the history so far
    if (!this.standalone) this.model.send({ kind: "attached", id: requestId() });
  }

  private codeText(): string {
    const code = String(this.model.get("code") ?? "");
    return code || "# no intervention for the current inputs yet: click a cell or press Sweep";
  }

  listen(event: string, cb: Handler): void {
    this.model.on(event, cb);
    this.listeners.push([event, cb]);
  }

  destroy(): void {
    if (!this.standalone) {
      try {
        this.model.send({ kind: "detached", id: requestId() });
      } catch {
        /* the comm may be gone already */
      }
    }
    for (const [e, cb] of this.listeners) this.model.off(e, cb);
    this.listeners = [];
  }

  send(kind: string, payload: Record<string, unknown>): string {
    const id = requestId();
    if (this.standalone) {
      this.status.textContent = "no kernel (static export)";
      return id;
    }
    this.model.send({ kind, id, ...payload });
    return id;
  }

  /** Set a trait from the view and sync it. */
  setTrait(name: string, value: unknown): void {
    this.model.set(name, value);
    this.model.save_changes();
  }

  renderStatus(): void {
    const st = String(this.model.get("status") ?? "idle");
    const p = Number(this.model.get("progress") ?? 0);
    const txt = String(this.model.get("progress_text") ?? "");
    this.status.textContent = st === "running" && txt ? `running: ${txt}` : st === "idle" && txt === "cancelled" ? "idle (cancelled)" : st;
    this.status.setAttribute("data-state", st);
    this.progress.hidden = st !== "running";
    this.progress.value = Number.isFinite(p) ? p : 0;
    this.cancelBtn.disabled = st !== "running";
    let err = String(this.model.get("error") ?? "");
    if (st === "error" && !err) err = "The last action failed (no message from the kernel).";
    this.errorBox.hidden = !err;
    this.errorBox.textContent = err;
  }

  private renderHistory(): void {
    const hist = this.hist;
    clear(this.historyBox);
    if (!hist.length) return;
    const list = h("ol", { class: "wb-history-list" });
    const diffs = differingArgs(hist);
    for (const [i, e] of hist.entries()) {
      const cb = h("input", { type: "checkbox", "data-testid": "wb-history-check", "data-id": e.id });
      cb.checked = this.compare.has(e.id);
      cb.addEventListener("change", () => {
        if (cb.checked) this.compare.add(e.id);
        else this.compare.delete(e.id);
        this.renderHistory();
      });
      const top = (e.top ?? [])
        .slice(0, 3)
        .map(([t, p]) => `${visibleToken(t)} ${fmt(p, 2)}`)
        .join("  ");
      list.append(
        h(
          "li",
          { "data-testid": "wb-history-entry" },
          cb,
          h("span", { class: "wb-h-label" }, e.label),
          diffs[i] ? h("span", { class: "wb-h-args", "data-testid": "wb-history-args" }, diffs[i]) : null,
          h("span", { class: "wb-h-val" }, e.value == null ? "" : `= ${fmt(e.value)}`),
          h("span", { class: "wb-h-top" }, top),
        ),
      );
    }
    this.historyBox.append(h("div", { class: "wb-subtitle" }, `Run history (${hist.length}) — tick runs to compare`), list);
    const chosen = hist.filter((e) => this.compare.has(e.id));
    if (chosen.length >= 2) {
      const table = h("table", { class: "wb-compare", "data-testid": "wb-compare" });
      table.append(h("tr", {}, h("th", {}, "run"), h("th", {}, "metric"), h("th", {}, "Δ vs first"), h("th", {}, "prediction")));
      const base = chosen[0].value ?? 0;
      const chosenDiffs = differingArgs(chosen);
      for (const [i, e] of chosen.entries()) {
        const v = e.value ?? NaN;
        table.append(
          h(
            "tr",
            {},
            h("td", {}, chosenDiffs[i] ? `${e.label}  ${chosenDiffs[i]}` : e.label),
            h("td", {}, fmt(v)),
            h("td", {}, fmt(v - base)),
            h(
              "td",
              {},
              (e.top ?? [])
                .slice(0, 3)
                .map(([t, p]) => `${visibleToken(t)} ${fmt(p, 2)}`)
                .join("  "),
            ),
          ),
        );
      }
      this.historyBox.append(table);
    }
  }

  private showCode(): void {
    const code = String(this.model.get("code") ?? "");
    this.codeBox.textContent = this.codeText();
    this.codeBox.hidden = !this.codeBox.hidden;
    if (code) void copyText(code);
  }

  /** The prompt editor: a textarea bound to the `prompt` trait (Enter runs, Shift+Enter breaks the line) and Run. */
  protected promptRow(): HTMLElement {
    const input = h("textarea", { class: "wb-prompt", "data-testid": "wb-prompt", rows: 2, spellcheck: "false" });
    input.value = String(this.model.get("prompt") ?? "");
    const submit = () => this.setTrait("prompt", input.value);
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) {
        e.preventDefault();
        submit();
      }
    });
    this.listen("change:prompt", () => {
      input.value = String(this.model.get("prompt") ?? "");
    });
    return h("div", { class: "wb-row" }, input, button("Run", submit, { "data-testid": "wb-run" }));
  }

  /** Follow a selection set from the kernel (e.g. shared between the Workbench's views). */
  protected followSelection(hm: Heatmap): void {
    this.listen("change:selected", () => {
      const s = (this.model.get("selected") ?? []) as number[];
      if (s.length !== 2 || (hm.selected && hm.selected[0] === s[0] && hm.selected[1] === s[1])) return;
      if (s[0] < hm.spec.rows && s[1] < hm.spec.cols) hm.setSelected([s[0], s[1]]);
    });
  }

  /** The heatmap that PNG/SVG export show. */
  abstract mainHeatmap(): Heatmap | null;
  abstract title(): string;

  pngURL(): string {
    return this.mainHeatmap()?.toPNG(this.title()) ?? "";
  }
  svgString(): string {
    const hm = this.mainHeatmap();
    return hm ? svgText(hm.toSVG(this.title())) : "";
  }
  savePNG(): void {
    const url = this.pngURL();
    if (url) download("workbench.png", url);
  }
  saveSVG(): void {
    const svg = this.svgString();
    if (svg) download("workbench.svg", new Blob([svg], { type: "image/svg+xml" }));
  }

  protected onMessage(content: any, buffers: DataView[]): void {
    if (!content || typeof content !== "object") return;
    if (content.kind === "history" && Array.isArray(content.entries)) {
      this.hist = (content.entries as HistoryEntry[]).slice(-HISTORY_MAX);
      this.renderHistory();
    } else if (content.kind === "history_add" && content.entry && typeof content.entry === "object") {
      const max = Number(content.max) > 0 ? Number(content.max) : HISTORY_MAX;
      this.hist = [...this.hist, content.entry as HistoryEntry].slice(-max);
      this.renderHistory();
    } else if (content.kind === "export") {
      // The kernel asked for an image of the current view (view.save_png / save_svg).
      let bytes: Uint8Array = new Uint8Array(0);
      if (content.format === "png") bytes = dataURLBytes(this.pngURL());
      else if (content.format === "svg") bytes = new TextEncoder().encode(this.svgString());
      this.model.send({ kind: "export_result", id: content.id, format: content.format }, undefined, [bytes]);
    } else if (content.kind === "html" && buffers.length) {
      const b = buffers[0];
      download("workbench.html", new Blob([new Uint8Array(b.buffer as ArrayBuffer, b.byteOffset, b.byteLength)], { type: "text/html" }));
    }
  }
}
