// PatchView: clean/corrupt token strips, site picker, sweep heatmap, click/drag to patch or ablate, a set of cells
// applied jointly (shift-click), and path patching (pick receivers, sweep the senders).
import { finiteRange, maybeUnpack } from "./arrays";
import { cellColumn, type Distribution, distributionFigure, distributionPanel, exampleText, type FilterRow, filterRow, meanSem, shown, unitsOf } from "./dataset";
import { diverging, sequential } from "./colors";
import { button, clear, debounce, fmt, h, select } from "./dom";
import { type Figure, textFigure } from "./export";
import { Heatmap, type Outline, type Region } from "./heatmap";
import { decodeLens, lensTooltip, top1Label } from "./lens";
import type { AnyModel } from "./model";
import type { PatchRequest } from "./protocol";
import type { CellTuple, PatchMode, PatchTraits, Receivers, SiteInfo } from "./traits";
import { tokenStrip, visibleToken } from "./tokens";
import { View } from "./view";

/** The sites a view shows before the kernel has sent the model's list. */
const FALLBACK_SITE: SiteInfo = { name: "resid_pre", doc: "the residual stream entering block l", heads: null, layers: 0 };
/** Path patching's senders are heads: the sender map is the `head` site's. */
const SENDER_SITE = "head";
export const RECEIVER_SITES: [string, string][] = [
  ["head", "head (its q, k and v)"],
  ["q", "query (q)"],
  ["k", "key (k)"],
  ["v", "value (v)"],
];

/** The cell of a site at heatmap (row, column): per-head sites have heads as columns, the others positions. */
export function cellOf(info: SiteInfo, r: number, c: number): CellTuple {
  return info.heads ? [info.name, r, null, c] : [info.name, r, c, null];
}

/** The heatmap (row, column) of a cell of the site shown, or null for a cell of another site. */
export function cellPosition(info: SiteInfo, cell: CellTuple): [number, number] | null {
  if (cell[0] !== info.name) return null;
  const col = info.heads ? cell[3] : cell[2];
  return col === null ? null : [cell[1], col];
}

export function sameCell(a: CellTuple, b: CellTuple): boolean {
  return a[0] === b[0] && a[1] === b[1] && a[2] === b[2] && a[3] === b[3];
}

/** The set with `cell` added (at the end) or, if it is a member, removed. */
export function toggleCell(cells: readonly CellTuple[], cell: CellTuple): CellTuple[] {
  return cells.some((x) => sameCell(x, cell)) ? cells.filter((x) => !sameCell(x, cell)) : [...cells, cell];
}

/** Whether a site's heads are the key-value heads (the Site table says so: `heads: "kv"`). */
export function kvSite(sites: readonly SiteInfo[], name: string): boolean {
  return sites.find((x) => x.name === name)?.heads === "kv";
}

/** The receiver a click on query head (layer, head) picks: k and v receivers are key-value heads (h // group). */
export function receiverCell(sites: readonly SiteInfo[], site: string, layer: number, head: number, nHeads: number, nKv: number): CellTuple {
  const kv = kvSite(sites, site);
  const group = Math.max(1, Math.floor(nHeads / Math.max(1, nKv)));
  return [site, layer, null, kv ? Math.floor(head / group) : head];
}

/** Receivers with `cell` toggled: "logits" until a head is picked, and back to "logits" when none is left. */
export function toggleReceiver(receivers: Receivers, cell: CellTuple): Receivers {
  const next = toggleCell(receivers === "logits" ? [] : receivers, cell);
  return next.length ? next : "logits";
}

/** The query-head columns a receiver covers in the sender map (a key-value head covers its group). */
export function receiverColumns(sites: readonly SiteInfo[], cell: CellTuple, nHeads: number, nKv: number): number[] {
  const h = cell[3];
  if (h === null) return [];
  if (!kvSite(sites, cell[0])) return [h];
  const group = Math.max(1, Math.floor(nHeads / Math.max(1, nKv)));
  return Array.from({ length: group }, (_, i) => h * group + i).filter((x) => x < nHeads);
}

/** A cell as a person reads it: "head L1 H2", "mlp_out L0 pos 3 (␣to)", "k L4 KV1". */
export function cellLabel(sites: readonly SiteInfo[], cell: CellTuple, tokens: readonly string[] = []): string {
  const [site, layer, pos, head] = cell;
  const col = head !== null ? ` ${kvSite(sites, site) ? "KV" : "H"}${head}` : pos !== null ? ` pos ${pos}${tokens[pos] !== undefined ? ` (${visibleToken(tokens[pos])})` : ""}` : "";
  return `${site} L${layer}${col}`;
}

/** Causal cone of a patch in a layers x positions lens: the patched layer and later, same and later positions. */
export function causalCone(site: string, layer: number, position: number | null, L: number, T: number): Region {
  // resid_pre[l] feeds block l, so resid_post[l] (lens row l) is already affected; the others act inside block l too
  const r0 = Math.max(0, Math.min(L - 1, layer));
  const c0 = position === null || position === undefined || position < 0 ? 0 : Math.min(T - 1, position);
  void site;
  return { r0, c0, r1: L - 1, c1: T - 1 };
}

/** The region a set of cells [site, layer, position, head] can change in the lens: from the earliest edited layer,
 *  and from the earliest edited position (every position when a cell spans all of them). */
export function setCone(cells: CellTuple[], L: number, T: number): Region {
  const layers = cells.map((c) => Number(c[1])).filter(Number.isFinite);
  const positions = cells.map((c) => (c[2] === null || c[2] === undefined ? 0 : Number(c[2])));
  const r0 = layers.length ? Math.max(0, Math.min(L - 1, ...layers)) : 0;
  const c0 = positions.length ? Math.max(0, Math.min(T - 1, ...positions)) : 0;
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

export class PatchView extends View<PatchTraits, PatchRequest> {
  heatmap: Heatmap;
  source: Heatmap;
  lens: Heatmap;
  private controls: HTMLElement;
  private strips: HTMLElement;
  private resultBox: HTMLElement;
  private sourceBox: HTMLElement;
  private caption: HTMLElement;
  private setBox: HTMLElement;
  private clickedAt: number | null = null;
  private fields: Record<"clean" | "corrupt" | "target" | "foil", Field>;
  private words: HTMLElement;
  private warnings: HTMLElement;
  private modeSel: HTMLSelectElement;
  private siteSel: HTMLSelectElement;
  private siteField: HTMLElement;
  private methodSel: HTMLSelectElement;
  private methodField: HTMLElement;
  private receiverSel: HTMLSelectElement;
  private receiverField: HTMLElement;
  private siteKey = "";
  private pairRow: HTMLElement;
  private dsBox: HTMLElement;
  private dsSummary: HTMLElement;
  private alignSel: HTMLSelectElement;
  private filter: FilterRow;
  private exampleBar: HTMLElement;
  private distBox: HTMLElement;
  private listBox: HTMLElement;
  /** The swept cell whose distribution is shown (over a dataset). */
  private drill: [number, number] | null = null;

  constructor(model: AnyModel<PatchTraits>, el: HTMLElement) {
    super(model, el, "Activation patching");
    this.controls = h("div", { class: "wb-controls" });
    this.strips = h("div", { class: "wb-strips" });
    this.caption = h("div", { class: "wb-caption", "data-testid": "wb-caption" });
    this.resultBox = h("div", { class: "wb-result", "data-testid": "wb-result" });
    this.setBox = h("div", { class: "wb-set", "data-testid": "wb-set" });
    this.heatmap = new Heatmap({ rows: 0, cols: 0, values: new Float32Array(0), color: () => [0, 0, 0] });
    this.heatmap.canvas.setAttribute("data-role", "sweep");
    const sendSel = debounce((r: number, c: number) => this.setTrait("selected", [r, c]), 120);
    this.heatmap.onSelect = sendSel;
    this.heatmap.onApply = (r, c) => this.apply(r, c, null);
    this.heatmap.onToggle = (r, c) => this.toggle(r, c);
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
        ["path", "path patching"],
      ],
      String(m.get("mode") ?? "patch"),
      (v) => this.setTrait("mode", v as PatchMode),
      { "data-testid": "wb-mode" },
    );
    this.siteSel = select([], "", (v) => this.setTrait("site", v), { "data-testid": "wb-site" });
    this.siteField = h("label", { class: "wb-field" }, h("span", {}, "site"), this.siteSel);
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
    this.receiverSel = select(RECEIVER_SITES, String(m.get("receiver_site") ?? "head"), (v) => this.setTrait("receiver_site", v), {
      "data-testid": "wb-receiver-site",
      title: "What a click on a head picks as a receiver: the head's output inputs (q, k and v), or one of them",
    });
    this.receiverField = h(
      "span",
      { class: "wb-field" },
      h("label", { class: "wb-field" }, h("span", {}, "receivers"), this.receiverSel),
      button("Logits", () => this.setTrait("receivers", "logits"), { "data-testid": "wb-receivers-logits", title: "Receive at the logits (the final residual stream)" }),
    );
    this.alignSel = select(
      [
        ["exact", "exact (same length)"],
        ["right", "right (from the end)"],
        ["roles", "roles (template fields)"],
      ],
      String(m.get("align") ?? "exact"),
      (v) => this.setTrait("align", v),
      { "data-testid": "wb-align", title: "How the examples' positions line up into the map's columns" },
    );
    this.filter = filterRow(
      (v) => {
        if (String(this.model.get("filter_text") ?? "") !== v) this.setTrait("filter_text", v);
      },
      (v) => this.setTrait("correct_only", v),
    );
    this.dsSummary = h("span", { class: "wb-subtitle", "data-testid": "wb-ds-summary" });
    this.dsBox = h(
      "div",
      { class: "wb-dsbox", "data-testid": "wb-ds-controls", hidden: true },
      h("div", { class: "wb-row" }, this.dsSummary, h("label", { class: "wb-field" }, h("span", {}, "align"), this.alignSel)),
      this.filter.el,
    );
    this.exampleBar = h("div", { class: "wb-row wb-example-bar", "data-testid": "wb-example-bar", hidden: true });
    this.distBox = h("div", { class: "wb-distbox", "data-testid": "wb-distbox" });
    this.listBox = h("div", { class: "wb-ds-list", "data-testid": "wb-ds-list" });
    this.words = h("div", { class: "wb-words", "data-testid": "wb-words" });
    this.warnings = h("div", { class: "wb-warn", "data-testid": "wb-warning", role: "status", hidden: true });
    this.pairRow = h("div", { class: "wb-row" }, this.fields.clean.label, this.fields.corrupt.label);
    this.controls.append(
      this.exampleBar,
      this.dsBox,
      this.pairRow,
      h(
        "div",
        { class: "wb-row" },
        this.fields.target.label,
        this.fields.foil.label,
        h("label", { class: "wb-field" }, h("span", {}, "mode"), this.modeSel),
        this.siteField,
        this.methodField,
        this.receiverField,
        button("Sweep", () => this.send("sweep", {}), { "data-testid": "wb-sweep", class: "wb-btn wb-primary", title: "Patch every cell and fill the heatmap" }),
      ),
      this.words,
      this.warnings,
    );
    this.body.append(
      this.controls,
      this.strips,
      this.caption,
      h("div", { class: "wb-panes" }, h("div", { class: "wb-pane" }, this.heatmap.el, this.setBox, this.sourceBox), h("div", { class: "wb-pane" }, this.resultBox, this.distBox)),
      this.listBox,
    );
    const all = [
      "clean",
      "corrupt",
      "target",
      "foil",
      "site",
      "sites",
      "mode",
      "method",
      "tokens_clean",
      "tokens_corrupt",
      "inputs",
      "n_layers",
      "n_heads",
      "n_kv_heads",
      "receiver_site",
      "dataset",
      "align",
      "filter_text",
      "correct_only",
      "example",
    ] as const;
    for (const t of all) this.listen(t, () => this.renderAll());
    this.listen("sweep", () => this.renderHeatmap());
    this.listen("clean_lens", () => this.renderHeatmap());
    this.listen("cells", () => this.renderSet());
    this.listen("receivers", () => this.renderSet());
    this.listen("result", () => this.renderResult());
    this.followSelection(this.heatmap);
    this.renderAll();
  }

  private mode(): PatchMode {
    const mode = this.model.get("mode");
    return mode === "ablate" || mode === "path" ? mode : "patch";
  }

  /** Whether the view shows a dataset's mean map (not one pair, nor one of its examples). */
  overDataset(): boolean {
    return Number(this.model.get("dataset")?.n ?? 0) > 0 && Number(this.model.get("example") ?? -1) < 0;
  }

  private sites(): SiteInfo[] {
    return this.model.get("sites") ?? [];
  }

  /** The site of the map shown: the site picked, or (path mode) the senders' heads. */
  siteInfo(): SiteInfo {
    const sites = this.sites();
    const name = this.mode() === "path" ? SENDER_SITE : String(this.model.get("site") ?? "");
    return sites.find((x) => x.name === name) ?? { ...FALLBACK_SITE, name, heads: name === SENDER_SITE ? "query" : null, layers: Number(this.model.get("n_layers") ?? 0) };
  }

  private cells(): CellTuple[] {
    const c = this.model.get("cells");
    return Array.isArray(c) ? c : [];
  }

  private receivers(): Receivers {
    const r = this.model.get("receivers");
    return Array.isArray(r) ? r : "logits";
  }

  /** The metric as the kernel scores it (target and foil shown as tokens, with their spaces). */
  private metricName(): string {
    if (this.overDataset()) return "each example's logit_diff(target, foil)";
    return `logit_diff(${visibleToken(String(this.model.get("target") ?? ""))}, ${visibleToken(String(this.model.get("foil") ?? ""))})`;
  }

  private receiversText(): string {
    const r = this.receivers();
    return r === "logits" ? "logits" : r.map((c) => cellLabel(this.sites(), c)).join(", ");
  }

  title(): string {
    const mode = this.mode();
    const site = String(this.model.get("site"));
    const clean = String(this.model.get("clean"));
    const corrupt = String(this.model.get("corrupt"));
    const n = Number(this.model.get("dataset")?.shown?.length ?? 0);
    const prompts = this.overDataset() ? `mean over ${n} examples (align ${String(this.model.get("align"))})` : mode === "ablate" ? `prompt "${clean}"` : `clean "${clean}" → corrupt "${corrupt}"`;
    const what =
      mode === "path"
        ? `Path patching · senders: heads → receivers: ${this.receiversText()}`
        : mode === "ablate"
          ? `Ablation · site ${site}, ${String(this.model.get("method"))} ablation`
          : `Patching · site ${site}`;
    return `${what} · ${this.metricName()} · ${prompts}`.slice(0, 200);
  }

  /** Export: the sweep map (with the set and receivers outlined), the set, and the last result with its lens. */
  figures(): Figure[] {
    const figs: Figure[] = [this.heatmap.figure()];
    const tokens = this.tokens();
    const cells = this.cells();
    if (cells.length)
      figs.push(
        textFigure(
          this.mode() === "path" ? `Senders (${cells.length})` : `Set of cells (${cells.length})`,
          cells.map((c) => cellLabel(this.sites(), c, tokens)),
        ),
      );
    if (this.mode() === "path") figs.push(textFigure("Receivers", [this.receiversText()]));
    const res = this.model.get("result");
    if (res && res.value !== undefined) {
      const probs = maybeUnpack(res.top_probs);
      const pred = (res.top_tokens ?? []).map((t, i) => `${visibleToken(t)} ${probs ? fmt(probs.data[i], 3) : ""}`).join("   ");
      figs.push(textFigure(String(res.label ?? ""), [`metric ${fmt(res.value ?? NaN)} (clean ${fmt(res.clean ?? NaN)}, corrupt/unablated ${fmt(res.corrupt ?? NaN)})`, `prediction: ${pred}`]));
      if (decodeLens(res.lens)) figs.push(this.lens.figure("Logit lens of the patched run (shaded: causal cone of the patch)"));
    }
    const d = this.distribution();
    if (d) figs.push(distributionFigure(d, this.model.get("dataset")?.examples ?? [], document.body.getAttribute("data-jp-theme-light") === "false"));
    return figs;
  }

  /** The tokens the map's columns are (the corrupt run's; the prompt's when ablating). */
  private tokens(): string[] {
    return (this.mode() === "ablate" ? this.model.get("tokens_clean") : this.model.get("tokens_corrupt")) ?? [];
  }

  private apply(r: number, c: number, from: [number, number] | null): void {
    const mode = this.mode();
    if (mode === "path") {
      // in path mode a click picks a receiver: the head (or its q/k/v) clicked
      const site = String(this.model.get("receiver_site") ?? "head");
      this.setTrait("receivers", toggleReceiver(this.receivers(), receiverCell(this.sites(), site, r, c, Number(this.model.get("n_heads") ?? 0), Number(this.model.get("n_kv_heads") ?? 0))));
      return;
    }
    if (this.overDataset() && this.sweptPerExample()) {
      // the sweep holds every example's map: the distribution at this cell needs no kernel call
      this.drill = [r, c];
      this.renderDistribution();
      return;
    }
    this.drill = null;
    const [, layer, position, head] = cellOf(this.siteInfo(), r, c);
    const payload: Record<string, unknown> = { layer, position, head, cell: [r, c] };
    if (from) {
      payload.source_layer = from[0];
      payload.source_position = from[1];
    }
    this.clickedAt = performance.now();
    this.send(mode === "ablate" ? "ablate" : "patch", payload);
  }

  /** Shift-click / Space: add the cell to the set or take it out (a trait: survives reload and export). */
  toggle(r: number, c: number): void {
    this.setTrait("cells", toggleCell(this.cells(), cellOf(this.siteInfo(), r, c)));
  }

  private commit(name: "clean" | "corrupt" | "target" | "foil", value: string): void {
    if (String(this.model.get(name) ?? "") !== value) this.setTrait(name, value);
  }

  private renderSites(): void {
    const sites = this.model.get("sites") ?? [];
    const key = sites.map((x) => x.name).join(",");
    if (key !== this.siteKey) {
      this.siteKey = key;
      clear(this.siteSel);
      for (const info of sites) this.siteSel.append(h("option", { value: info.name, title: info.doc }, info.name));
    }
    this.siteSel.value = String(this.model.get("site") ?? "resid_pre");
  }

  private renderAll(): void {
    const m = this.model;
    const mode = this.mode();
    for (const name of ["clean", "corrupt", "target", "foil"] as const) this.fields[name].sync(String(m.get(name) ?? ""));
    this.fields.corrupt.caption.textContent = mode === "ablate" ? "reference" : "corrupt";
    this.modeSel.value = mode;
    this.renderSites();
    this.siteField.hidden = mode === "path";
    this.methodSel.value = String(m.get("method") ?? "zero");
    this.methodField.hidden = mode !== "ablate";
    this.receiverField.hidden = mode !== "path";
    this.receiverSel.value = String(m.get("receiver_site") ?? "head");
    this.renderWords();
    const over = this.overDataset();
    this.renderDataset();
    this.pairRow.hidden = over;
    this.fields.target.label.hidden = over;
    this.fields.foil.label.hidden = over;
    clear(this.strips);
    if (!over) {
      this.strips.append(tokenStrip(m.get("tokens_clean") ?? [], { label: "clean:", testid: "wb-tokens-clean" }));
      if (mode !== "ablate") this.strips.append(tokenStrip(m.get("tokens_corrupt") ?? [], { label: "corrupt:", testid: "wb-tokens-corrupt" }));
    }
    this.renderHeatmap();
    this.renderResult();
  }

  /** The dataset's controls (align, filter), the bar of an opened example, and the list of kept examples. */
  private renderDataset(): void {
    const d = this.model.get("dataset");
    const n = Number(d?.n ?? 0);
    const ex = Number(this.model.get("example") ?? -1);
    const over = this.overDataset();
    this.dsBox.hidden = !over;
    this.exampleBar.hidden = !(n > 0 && ex >= 0);
    clear(this.exampleBar);
    clear(this.listBox);
    if (!n || !d) return;
    const shownIds = d.shown ?? [];
    if (ex >= 0) {
      this.exampleBar.append(
        button(`← back to the dataset (${shownIds.length} examples)`, () => this.setTrait("example", -1), { "data-testid": "wb-back", class: "wb-btn wb-primary" }),
        h("span", { class: "wb-subtitle", "data-testid": "wb-example-title", "data-example": ex }, `Example #${ex} of ${n}`),
      );
      return;
    }
    this.dsSummary.textContent = `Dataset${d.name ? ` ${d.name}` : ""}: mean over ${shownIds.length} of ${n} examples`;
    for (const o of Array.from(this.alignSel.options)) {
      const why = d.aligns?.[o.value] ?? "";
      o.disabled = Boolean(why);
      o.title = why;
    }
    this.alignSel.value = String(this.model.get("align") ?? "exact");
    this.filter.sync(String(this.model.get("filter_text") ?? ""), Boolean(this.model.get("correct_only")), shownIds.length, n);
    const list = h("ol", { class: "wb-ex-list", "data-testid": "wb-ds-examples" });
    const preds = d.predictions;
    const correct = maybeUnpack(preds?.correct);
    for (const i of shownIds.slice(0, 200)) {
      const li = h(
        "li",
        { class: "wb-ex", "data-testid": "wb-ds-example", "data-example": i, tabindex: 0, title: "open this example as a single pair" },
        h("span", { class: "wb-ex-val" }, `#${i}${correct ? (correct.data[i] ? " ✓" : " ✗") : ""}`),
        h("span", { class: "wb-ex-text" }, exampleText(d.examples?.[i])),
      );
      li.addEventListener("click", () => this.setTrait("example", i));
      li.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter") this.setTrait("example", i);
      });
      list.append(li);
    }
    this.listBox.append(h("div", { class: "wb-subtitle" }, `Examples (${shownIds.length} kept${shownIds.length > 200 ? ", first 200 listed" : ""}) — click one to open it as a single pair`), list);
  }

  /** The sweep shown holds every example's map (a dataset sweep of the current settings). */
  private sweptPerExample(): boolean {
    const sw = this.model.get("sweep") ?? {};
    return Boolean(sw.per_example) && sw.site === this.model.get("site") && sw.mode === this.mode();
  }

  /** The per-example values behind the drilled cell (from the sweep), or behind the last click (from the result). */
  private distribution(): Distribution | null {
    if (!this.overDataset()) return null;
    const sw = this.model.get("sweep") ?? {};
    const g = this.grid();
    if (this.drill && this.sweptPerExample()) {
      const per = maybeUnpack(sw.per_example);
      const ids = maybeUnpack(sw.ids);
      if (!per || !ids || per.shape[1] !== g.rows || per.shape[2] !== g.cols) return null;
      const [r, c] = this.drill;
      const units = unitsOf(this.mode(), sw.clean, sw.corrupt, maybeUnpack(sw.clean_each)?.data ?? null);
      return { title: `Per-example effects at layer ${r}, ${this.colName(c)}`, values: shown(units, cellColumn(per, r * g.cols + c)), ids: ids.data as Int32Array, units };
    }
    const res = this.model.get("result");
    const per = maybeUnpack(res?.per_example);
    const ids = maybeUnpack(res?.ids);
    if (!res || !per || !ids) return null;
    const units = unitsOf(this.mode(), res.clean, res.corrupt, maybeUnpack(res.clean_each)?.data ?? null);
    return { title: `Per-example effects: ${String(res.label ?? "")}`, values: shown(units, per.data), ids: ids.data as Int32Array, units };
  }

  private colName(c: number): string {
    const g = this.grid();
    return this.siteInfo().heads ? (g.colLabels[c] ?? String(c)) : `column ${g.colLabels[c] ?? c}`;
  }

  private renderDistribution(): void {
    clear(this.distBox);
    const d = this.distribution();
    if (!d) return;
    this.distBox.append(distributionPanel(d, this.model.get("dataset")?.examples ?? [], (id) => this.setTrait("example", id)));
  }

  /** Target and foil as the model sees them (␣ = the leading space), and a warning when that may surprise. */
  private renderWords(): void {
    const info = this.model.get("inputs") ?? {};
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

  private grid(): { rows: number; cols: number; colLabels: string[]; colTitle: string } {
    const info = this.siteInfo();
    const rows = info.layers || Number(this.model.get("n_layers") ?? 0);
    if (info.heads) {
      const kv = info.heads === "kv";
      const H = Number(this.model.get(kv ? "n_kv_heads" : "n_heads") ?? 0);
      return { rows, cols: H, colLabels: Array.from({ length: H }, (_, i) => `${kv ? "KV" : "H"}${i}`), colTitle: kv ? "key-value head" : "head" };
    }
    if (this.overDataset()) {
      const cols = this.model.get("dataset")?.columns ?? [];
      return { rows, cols: cols.length, colLabels: cols.map(visibleToken), colTitle: String(this.model.get("align")) === "roles" ? "role" : "column" };
    }
    const toks = this.tokens();
    return { rows, cols: toks.length, colLabels: toks.map(visibleToken), colTitle: "position" };
  }

  /** The set (and, in path mode, the receivers) outlined on the map. */
  private outlines(): Outline[] {
    const info = this.siteInfo();
    const out: Outline[] = [];
    for (const c of this.cells()) {
      const at = cellPosition(info, c);
      if (at) out.push({ cell: at, role: "set" });
    }
    const r = this.receivers();
    if (this.mode() === "path" && r !== "logits") {
      const H = Number(this.model.get("n_heads") ?? 0);
      const kv = Number(this.model.get("n_kv_heads") ?? 0);
      for (const c of r) for (const col of receiverColumns(this.sites(), c, H, kv)) out.push({ cell: [c[1], col], role: "receiver" });
    }
    return out;
  }

  private renderSet(): void {
    clear(this.setBox);
    const mode = this.mode();
    const cells = this.cells();
    const tokens = this.tokens();
    const what = mode === "path" ? "senders" : "set";
    const row = h("div", { class: "wb-row wb-set-row" }, h("span", { class: "wb-subtitle" }, mode === "path" ? `Senders (${cells.length}):` : `Set (${cells.length}):`));
    if (!cells.length)
      row.append(h("span", { class: "wb-hint" }, mode === "path" ? "shift-click heads to pick senders for one path patch" : "shift-click cells (or Space) to add them; Apply set runs them jointly"));
    for (const c of cells) {
      row.append(
        h(
          "span",
          { class: "wb-chip wb-chip-set", "data-testid": "wb-set-cell", "data-cell": JSON.stringify(c) },
          cellLabel(this.sites(), c, tokens),
          button("×", () => this.setTrait("cells", toggleCell(this.cells(), c)), { class: "wb-chip-x", title: `take it out of the ${what}` }),
        ),
      );
    }
    row.append(
      button(`Apply ${what}`, () => this.send("apply_set", {}), {
        "data-testid": "wb-apply-set",
        class: "wb-btn wb-primary",
        disabled: !cells.length,
        title:
          mode === "path"
            ? "Path-patch these senders into the receivers (wb.path_patch)"
            : mode === "ablate"
              ? "Ablate every cell of the set at once (one run)"
              : "Patch every cell of the set at once (one run)",
      }),
      button("Clear", () => this.setTrait("cells", []), { "data-testid": "wb-clear-set", disabled: !cells.length }),
    );
    this.setBox.append(row);
    if (mode === "path") {
      const rec = this.receivers();
      const rrow = h("div", { class: "wb-row wb-set-row", "data-testid": "wb-receivers" }, h("span", { class: "wb-subtitle" }, "Receivers:"));
      if (rec === "logits") rrow.append(h("span", { class: "wb-chip", "data-testid": "wb-receiver" }, "logits"), h("span", { class: "wb-hint" }, "click heads of the map to receive there instead"));
      else
        for (const c of rec)
          rrow.append(
            h(
              "span",
              { class: "wb-chip wb-chip-receiver", "data-testid": "wb-receiver", "data-cell": JSON.stringify(c) },
              cellLabel(this.sites(), c),
              button("×", () => this.setTrait("receivers", toggleReceiver(this.receivers(), c)), { class: "wb-chip-x", title: "not a receiver" }),
            ),
          );
      this.setBox.append(rrow);
    }
    this.heatmap.outlined = this.outlines();
    this.heatmap.draw();
  }

  private renderHeatmap(): void {
    const g = this.grid();
    const info = this.siteInfo();
    const sw = this.model.get("sweep") ?? {};
    const mode = this.mode();
    let values: Float32Array = new Float32Array(g.rows * g.cols).fill(NaN);
    let absMax = 1;
    let unit = "patch effect: run a sweep or click a cell";
    const keys = "Arrow keys move, Enter applies, Space or Shift+Enter adds to the set.";
    let caption = `Click a cell to patch it (or press Sweep to fill the map); shift-click adds it to the set. ${keys}`;
    if (mode === "ablate") caption = `Click a cell to ablate it (or press Sweep); shift-click adds it to the set. ${keys}`;
    if (mode === "path") caption = `Path patching: click heads to pick the receivers (or press Logits), then Sweep fills the senders' map. Shift-click heads to path-patch a set of senders.`;
    let swept = false;
    const current = mode === "path" ? sw.mode === "path" && JSON.stringify(sw.receivers) === JSON.stringify(this.receivers()) : sw.site === this.model.get("site") && sw.mode === mode;
    if (sw.values && current) {
      const arr = maybeUnpack(sw.normalized) ?? maybeUnpack(sw.values);
      if (arr && arr.shape[0] === g.rows && arr.shape[1] === g.cols) {
        values = Float32Array.from(arr.data);
        swept = true;
        if (mode === "ablate" && typeof sw.clean === "number") for (let i = 0; i < values.length; i++) values[i] -= sw.clean;
        const [lo, hi] = finiteRange(values);
        absMax = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
        const clean = sw.clean ?? NaN;
        const corrupt = sw.corrupt ?? NaN;
        unit = mode === "ablate" ? `ablation effect: ${this.metricName()} − unablated` : sw.normalized ? `normalised effect of ${this.metricName()} (1 = clean, 0 = corrupt)` : this.metricName();
        caption =
          mode === "ablate"
            ? `effect of ablation (metric − unablated ${fmt(clean)}). Click a cell to apply that ablation.`
            : mode === "path"
              ? `path patching from each sender head to ${this.receiversText()}: ${sw.normalized ? "normalised effect (1 = clean, 0 = corrupt)" : "metric"}; clean ${fmt(clean)}, corrupt ${fmt(corrupt)}. Grey: no path (a sender at or above its receiver's layer cannot reach it).`
              : `${sw.normalized ? "normalised effect (1 = clean, 0 = corrupt)" : "metric"}; clean ${fmt(clean)}, corrupt ${fmt(corrupt)}. Click a cell to apply that patch.`;
      }
    }
    if (this.overDataset()) {
      const n = Number(this.model.get("dataset")?.shown?.length ?? 0);
      caption = swept
        ? `Mean over ${n} examples (each scored on its own target and foil): ${caption} Hover a cell for mean ± sem; click it for every example's value.`
        : `Over ${n} examples: press Sweep for the mean map (hover: mean ± sem; click a cell: every example's value), or click a cell to patch it in every example.`;
    }
    this.caption.textContent = caption;
    this.heatmap.outlined = this.outlines();
    const noPath = swept && mode === "path" && values.some((v) => Number.isNaN(v));
    const perHead = info.heads !== null;
    this.heatmap.setSpec({
      rows: g.rows,
      cols: g.cols,
      values,
      color: (v, th) => diverging(th, absMax)(v),
      rowLabels: Array.from({ length: g.rows }, (_, i) => `L${i}`),
      colLabels: g.colLabels,
      rowTitle: "layer",
      colTitle: mode === "path" ? "sender head" : g.colTitle,
      legend: { lo: -absMax, hi: absMax, label: unit, nanText: noPath ? "no path (sender at or above the receiver)" : undefined },
      tooltip: (r, c) => [
        this.overDataset() && !perHead
          ? `layer ${r}, ${g.colTitle} ${g.colLabels[c] ?? c}`
          : `layer ${r}, ${perHead ? g.colTitle : "position"} ${perHead ? g.colLabels[c] : c}${perHead ? "" : ` (${g.colLabels[c] ?? ""})`}`,
        Number.isFinite(values[r * g.cols + c])
          ? `effect ${fmt(values[r * g.cols + c])}`
          : swept && mode === "path"
            ? "no path: this sender is at or above the receiver's layer (not zero: nothing to patch)"
            : mode === "path"
              ? "click: receiver here; Sweep fills the map"
              : "click to run",
        ...this.spreadLines(r, c, swept),
        mode === "path" ? "shift-click: sender in the set" : "shift-click: add to the set / take out",
      ],
      cellW: 34,
      cellH: 16,
      maxWidth: 760,
      name: mode === "path" ? "path patching: senders" : "patching effect",
    });
    this.renderSet();
    this.renderSource(g.rows);
    this.renderDistribution();
  }

  /** Over a dataset: the cell's mean ± sem over the examples (in the map's units), and what a click does. */
  private spreadLines(r: number, c: number, swept: boolean): string[] {
    if (!this.overDataset()) return [];
    if (!swept || !this.sweptPerExample()) return ["over the dataset: click for the mean and every example's value"];
    const sw = this.model.get("sweep") ?? {};
    const per = maybeUnpack(sw.per_example);
    if (!per) return [];
    const g = this.grid();
    const units = unitsOf(this.mode(), sw.clean, sw.corrupt, maybeUnpack(sw.clean_each)?.data ?? null);
    const st = meanSem(shown(units, cellColumn(per, r * g.cols + c)));
    return [`mean ± sem: ${fmt(st.mean)} ± ${fmt(st.sem)}, n = ${st.n}`, "click: the distribution over the examples"];
  }

  /** The clean run's cells, draggable onto the corrupt run's map (patch across positions or layers); drawn as the
   *  clean run's logit lens (top-1 token and its probability) so the user sees what they drag. */
  private renderSource(rows: number): void {
    clear(this.sourceBox);
    const tc = this.model.get("tokens_clean") ?? [];
    if (this.mode() !== "patch" || this.siteInfo().heads !== null || !tc.length) return;
    const d = decodeLens(this.model.get("clean_lens"));
    const ok = d !== null && d.T === tc.length && d.L === rows;
    const vals = new Float32Array(rows * tc.length).fill(NaN);
    if (d && ok) for (let i = 0; i < vals.length; i++) vals[i] = d.topProbs.data[i * d.k];
    this.source.setSpec({
      rows,
      cols: tc.length,
      values: vals,
      color: (v, th) => sequential(th, 0, 1)(Number.isFinite(v) ? v : 0.15),
      // with no lens yet (or none for remote models) the cells show the clean tokens themselves
      cellLabel: d && ok ? top1Label(d) : (_r, c) => visibleToken(tc[c] ?? ""),
      rowLabels: Array.from({ length: rows }, (_, i) => `L${i}`),
      colLabels: tc.map(visibleToken),
      rowTitle: "layer",
      colTitle: "position",
      legend: ok ? { lo: 0, hi: 1, label: "clean run: probability of the top-1 token (logit lens)" } : undefined,
      tooltip: (r, c) => [
        ...(d && ok ? lensTooltip(d)(r, c).map((x, i) => (i === 0 ? `clean run: ${x}` : x)) : [`clean run: layer ${r}, position ${c} (${visibleToken(tc[c] ?? "")})`]),
        "drag onto a cell of the map above",
      ],
      cellW: 34,
      cellH: 15,
      maxWidth: 760,
      name: "clean run (drag source)",
    });
    this.source.canvas.setAttribute("data-lens", ok ? "1" : "0");
    this.sourceBox.append(h("div", { class: "wb-subtitle" }, "Clean run (its logit lens: top-1 token per layer) — drag a cell onto the map above to patch between positions or layers"));
    const note = this.model.get("clean_lens")?.note;
    if (!ok)
      this.sourceBox.append(h("div", { class: "wb-hint", "data-testid": "wb-clean-note" }, typeof note === "string" ? `(${note}; the cells are the clean tokens)` : "computing the clean run's lens…"));
    this.sourceBox.append(this.source.el);
  }

  private renderResult(): void {
    this.renderDistribution();
    clear(this.resultBox);
    const res = this.model.get("result");
    if (!res || res.value === undefined) {
      this.resultBox.append(h("div", { class: "wb-hint" }, "No intervention yet."));
      this.lens.shade = null;
      return;
    }
    const probs = maybeUnpack(res.top_probs);
    const toks = res.top_tokens ?? [];
    const pred = h("div", { class: "wb-prediction", "data-testid": "wb-prediction", "data-top": toks[0] ?? "" });
    pred.append(h("b", {}, "prediction: "));
    toks.forEach((t, i) => {
      pred.append(h("span", { class: "wb-pred-tok", "data-testid": "wb-pred-token" }, visibleToken(t)), h("span", { class: "wb-pred-p" }, probs ? ` ${fmt(probs.data[i], 3)}  ` : "  "));
    });
    const value = res.value ?? NaN;
    this.resultBox.append(
      h("div", { class: "wb-subtitle", "data-testid": "wb-result-label" }, String(res.label ?? "")),
      pred,
      h(
        "div",
        { class: "wb-metric", "data-testid": "wb-metric", "data-value": String(res.value) },
        `metric ${fmt(value)} (clean ${fmt(res.clean ?? NaN)}, corrupt/unablated ${fmt(res.corrupt ?? NaN)})`,
      ),
    );
    const d = decodeLens(res.lens);
    if (d) {
      const vals = new Float32Array(d.L * d.T);
      for (let i = 0; i < vals.length; i++) vals[i] = d.topProbs.data[i * d.k];
      const set = (res.cells ?? []).length > 1 || res.site === "set";
      const pos = res.position === null || res.position === undefined ? null : Number(res.position);
      this.lens.shade = set ? setCone(res.cells ?? [], d.L, d.T) : causalCone(String(res.site), Number(res.layer), pos, d.L, d.T);
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
      const title = set
        ? `Logit lens of the jointly edited run (all ${(res.cells ?? []).length} cells of the set; shaded: from the earliest edited layer and position on)`
        : "Logit lens of the patched run (shaded: causal cone of the patch)";
      this.resultBox.append(h("div", { class: "wb-subtitle", "data-testid": "wb-lens-title" }, title), this.lens.el);
    } else if (typeof res.lens_note === "string" && res.lens_note) {
      this.resultBox.append(h("div", { class: "wb-hint", "data-testid": "wb-lens-note" }, `(${res.lens_note})`));
    }
    if (this.clickedAt !== null) {
      // click -> kernel -> engine -> result trait -> redrawn; compute_ms is the engine's share
      this.resultBox.setAttribute("data-latency-ms", (performance.now() - this.clickedAt).toFixed(1));
      this.resultBox.setAttribute("data-compute-ms", String(res.compute_ms ?? ""));
      this.clickedAt = null;
    }
    const cell = res.cell;
    if (cell && cell.length === 2 && !res.source_layer && res.source_layer !== 0) this.heatmap.setSelected([cell[0], cell[1]]);
  }
}
