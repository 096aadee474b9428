// Shared chrome of every view: status, progress + cancel, error box, exports, run history.
import { button, clear, fmt, h } from "./dom";
import { readTheme } from "./colors";
import { composePNG, composeSVG, copyText, dataURLBytes, download, type Figure, svgText } from "./export";
import type { Heatmap } from "./heatmap";
import type { AnyModel, Callback } from "./model";
import { type CommonRequest, type KernelKind, type KernelMessage, kernelMessage } from "./protocol";
import type { BaseTraits, ExportState, HistoryEntry } from "./traits";
import { visibleToken } from "./tokens";

export type { HistoryEntry } from "./traits";

let counter = 0;
export function requestId(): string {
  counter += 1;
  return `r${Date.now().toString(36)}-${counter}`;
}

export const HISTORY_MAX = 50;

/** A field that takes typed text (its keys are not notebook shortcuts). */
export function isTextField(t: EventTarget | null): boolean {
  const el = t as HTMLElement | null;
  if (!el || typeof el.tagName !== "string") return false;
  const tag = el.tagName.toLowerCase();
  return tag === "textarea" || tag === "select" || (tag === "input" && !["checkbox", "radio", "button"].includes((el as HTMLInputElement).type));
}

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

/** The handler of each kernel message kind (the mapped type makes a missing kind a compile error). */
type KernelHandlers = { [K in KernelKind]: (msg: KernelMessage[K], buffers: DataView[]) => void };

/** A view of traits `T` that sends the requests `R` (besides the common ones: cancel, exports, attach). */
export abstract class View<T extends BaseTraits = BaseTraits, R extends string = never> {
  readonly model: AnyModel<T>;
  readonly el: HTMLElement;
  readonly root: HTMLElement;
  readonly body: HTMLElement;
  protected status: HTMLElement;
  protected errorBox: HTMLElement;
  protected progress: HTMLProgressElement;
  protected cancelBtn: HTMLButtonElement;
  protected historyBox: HTMLElement;
  protected codeBox: HTMLElement;
  /** The view's name in its header. */
  protected heading: HTMLElement;
  private listeners: [string, Callback][] = [];
  private compare = new Set<string>();
  /** Run history: the kernel sends each new entry once ("history_add"), and the whole list once on attach. */
  protected hist: HistoryEntry[] = [];
  readonly standalone: boolean;

  /** What the view does with each message the kernel sends (protocol.ts lists the kinds). */
  readonly kernelHandlers: KernelHandlers = {
    history: (msg) => {
      if (!Array.isArray(msg.entries)) return;
      this.hist = msg.entries.slice(-HISTORY_MAX);
      this.renderHistory();
    },
    history_add: (msg) => {
      if (!msg.entry || typeof msg.entry !== "object") return;
      const max = Number(msg.max) > 0 ? Number(msg.max) : HISTORY_MAX;
      this.hist = [...this.hist, msg.entry].slice(-max);
      this.renderHistory();
    },
    export: (msg) => {
      // The kernel asked for an image of the current view (view.save_png / save_svg).
      let bytes: Uint8Array = new Uint8Array(0);
      if (msg.format === "png") bytes = dataURLBytes(this.pngURL());
      else if (msg.format === "svg") bytes = new TextEncoder().encode(this.svgString());
      this.sendCommon("export_result", { id: msg.id, format: msg.format }, [bytes]);
    },
    html: (_msg, buffers) => {
      const b = buffers[0];
      if (!b) return;
      download("workbench.html", new Blob([new Uint8Array(b.buffer as ArrayBuffer, b.byteOffset, b.byteLength)], { type: "text/html" }));
    },
    stream: (msg, buffers) => this.onStream(msg, buffers),
  };

  /** A streaming run's "start" / "step" message (views that stream override this; others ignore it). */
  protected onStream(_msg: KernelMessage["stream"], _buffers: DataView[]): void {}

  constructor(model: AnyModel<T>, el: HTMLElement, title: string) {
    this.model = model;
    this.el = el;
    this.standalone = Boolean(model.get("_standalone"));
    this.status = h("span", { class: "wb-status", "data-testid": "wb-status", role: "status" }, "idle");
    this.progress = h("progress", { class: "wb-progress", "data-testid": "wb-progress", max: 1, value: 0, hidden: true });
    this.cancelBtn = button("Cancel", () => this.sendCommon("cancel", {}), { "data-testid": "wb-cancel", disabled: true });
    this.errorBox = h("div", { class: "wb-error", "data-testid": "wb-error", role: "alert", hidden: true });
    this.historyBox = h("div", { class: "wb-history", "data-testid": "wb-history" });
    this.codeBox = h("pre", { class: "wb-code", "data-testid": "wb-code", hidden: true });
    const exports = h(
      "span",
      { class: "wb-exports" },
      button("PNG", () => this.savePNG(), { "data-testid": "wb-export-png", title: "Download the current view as PNG" }),
      button("SVG", () => this.saveSVG(), { "data-testid": "wb-export-svg", title: "Download the current view as SVG" }),
      button("HTML", () => this.sendCommon("export_html", {}), { "data-testid": "wb-export-html", title: "Download a standalone HTML page (no kernel needed)", disabled: this.standalone }),
      button("Code", () => this.showCode(), { "data-testid": "wb-copy-code", title: "Show and copy the nnsight code of the current intervention" }),
    );
    this.heading = h("span", { class: "wb-title", "data-testid": "wb-title" }, title);
    const header = h("div", { class: "wb-header" }, this.heading, this.status, this.progress, this.cancelBtn, exports);
    this.body = h("div", { class: "wb-body" });
    this.root = h("div", { class: "wb-root", "data-testid": "wb-view" }, header, this.errorBox, this.body, this.codeBox, this.historyBox);
    this.root.setAttribute("data-kind", String(model.get("_view_kind") ?? ""));
    // Keys typed into the view's text fields are the view's: JupyterLab (which listens to keydown as it bubbles)
    // must not read Shift+Enter in a prompt box as "run this cell and select the next" (that re-runs the cell
    // that made the view), nor other keys as notebook shortcuts.
    this.root.addEventListener("keydown", (e) => {
      if (isTextField(e.target)) e.stopPropagation();
    });
    el.append(this.root);
    for (const t of ["status", "progress", "progress_text", "error"] as const) this.listen(t, () => this.renderStatus());
    // standalone export state (a kernel sends the history as messages instead)
    this.hist = ((model as unknown as AnyModel<ExportState>).get("history") ?? []).slice(-HISTORY_MAX);
    this.listen("code", () => {
      if (!this.codeBox.hidden) this.codeBox.textContent = this.codeText();
    });
    const onMsg = (content: unknown, buffers: DataView[]) => this.onMessage(content, buffers ?? []);
    this.model.on("msg:custom", onMsg);
    this.listeners.push(["msg:custom", onMsg]);
    this.renderStatus();
    this.renderHistory();
    // tell the kernel a front end draws this view (save_png/save_svg need one) and get the history so far
    if (!this.standalone) this.sendCommon("attached", {});
  }

  private codeText(): string {
    const code = String(this.model.get("code") ?? "");
    return code || "# no intervention for the current inputs yet: click a cell or press Sweep";
  }

  /** Redraw on a change of trait `name` (unbound on destroy). */
  listen(name: keyof T & string, cb: () => void): void {
    const event = `change:${name}` as const;
    this.model.on(event, cb);
    this.listeners.push([event, cb]);
  }

  destroy(): void {
    if (!this.standalone) {
      try {
        this.sendCommon("detached", {});
      } catch {
        /* the comm may be gone already */
      }
    }
    for (const [e, cb] of this.listeners) this.model.off(e, cb);
    this.listeners = [];
  }

  /** Send a request of this view to the kernel (a one-off command with a request id). */
  send(kind: R | CommonRequest, payload: Record<string, unknown>, buffers?: Uint8Array[]): string {
    const id = requestId();
    if (this.standalone) {
      this.status.textContent = "no kernel (static export)";
      return id;
    }
    this.model.send({ kind, id, ...payload }, undefined, buffers);
    return id;
  }

  protected sendCommon(kind: CommonRequest, payload: Record<string, unknown>, buffers?: Uint8Array[]): string {
    return this.send(kind, payload, buffers);
  }

  /** Set a trait from the view and sync it. */
  setTrait<K extends keyof T & string>(name: K, value: T[K]): void {
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
  protected promptRow(this: View<BaseTraits & { prompt: string }, R>): HTMLElement {
    const input = h("textarea", { class: "wb-prompt", "data-testid": "wb-prompt", rows: 2, spellcheck: "false" });
    input.value = String(this.model.get("prompt") ?? "");
    const submit = () => this.setTrait("prompt", input.value);
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey) {
        e.preventDefault();
        submit();
      }
    });
    this.listen("prompt", () => {
      input.value = String(this.model.get("prompt") ?? "");
    });
    return h("div", { class: "wb-row" }, input, button("Run", submit, { "data-testid": "wb-run" }));
  }

  /** Follow a selection set from the kernel (e.g. shared between the Workbench's views). */
  protected followSelection(hm: Heatmap): void {
    this.listen("selected", () => {
      const s = this.model.get("selected") ?? [];
      if (s.length !== 2 || (hm.selected && hm.selected[0] === s[0] && hm.selected[1] === s[1])) return;
      if (s[0] < hm.spec.rows && s[1] < hm.spec.cols) hm.setSelected([s[0], s[1]]);
    });
  }

  /** The parts of the view that PNG/SVG export show, top to bottom (heatmaps, charts, head views, text). */
  abstract figures(): Figure[];
  abstract title(): string;

  private theme() {
    return readTheme(this.el.isConnected ? this.el : document.body);
  }
  pngURL(): string {
    const figs = this.figures();
    return figs.length ? composePNG(this.title(), figs, this.theme()) : "";
  }
  svgString(): string {
    const figs = this.figures();
    return figs.length ? svgText(composeSVG(this.title(), figs, this.theme())) : "";
  }
  savePNG(): void {
    const url = this.pngURL();
    if (url) download("workbench.png", url);
  }
  saveSVG(): void {
    const svg = this.svgString();
    if (svg) download("workbench.svg", new Blob([svg], { type: "image/svg+xml" }));
  }

  protected onMessage(content: unknown, buffers: DataView[]): void {
    const msg = kernelMessage(content);
    if (!msg) return;
    (this.kernelHandlers[msg.kind] as (m: typeof msg, b: DataView[]) => void)(msg, buffers);
  }
}
