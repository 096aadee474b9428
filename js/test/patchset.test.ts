import { describe, expect, expectTypeOf, it } from "vitest";
import widget from "../src/index";
import { StaticModel } from "../src/model";
import { cellLabel, cellOf, cellPosition, receiverCell, receiverColumns, setCone, toggleCell, toggleReceiver } from "../src/patch";
import { KERNEL_MESSAGES } from "../src/protocol";
import type { AnyModel } from "../src/model";
import { LensView } from "../src/lens";
import type { CellTuple, ExportState, LensTraits, PatchTraits, SiteInfo } from "../src/traits";
import { f32, lensData, setBox } from "./helpers";

const SITES: SiteInfo[] = [
  { name: "embed", doc: "the token embeddings", heads: null, layers: 1 },
  { name: "resid_pre", doc: "the stream into block l", heads: null, layers: 4 },
  { name: "q", doc: "query", heads: "query", layers: 4 },
  { name: "k", doc: "key", heads: "kv", layers: 4 },
  { name: "v", doc: "value", heads: "kv", layers: 4 },
  { name: "pattern", doc: "pattern", heads: "query", layers: 4 },
  { name: "head", doc: "head output", heads: "query", layers: 4 },
  { name: "attn_out", doc: "attention out", heads: null, layers: 4 },
  { name: "resid_mid", doc: "between attention and MLP", heads: null, layers: 4 },
  { name: "mlp_out", doc: "MLP out", heads: null, layers: 4 },
  { name: "resid_post", doc: "the stream out of block l", heads: null, layers: 4 },
];
const head = SITES[6];
const resid = SITES[1];

const BASE: Partial<PatchTraits> & Record<string, unknown> = {
  _view_kind: "patch",
  status: "done",
  error: "",
  progress: 0,
  progress_text: "",
  code: "",
  selected: [],
  history: [],
  clean: "a b c",
  corrupt: "a d c",
  target: " x",
  foil: " y",
  site: "resid_pre",
  mode: "patch",
  method: "zero",
  tokens_clean: ["a", " b", " <img src=x onerror=alert(1)>"],
  tokens_corrupt: ["a", " d", " <img src=x onerror=alert(1)>"],
  n_layers: 4,
  n_heads: 4,
  n_kv_heads: 2,
  sites: SITES,
  cells: [],
  receivers: "logits",
  receiver_site: "head",
  sweep: {},
  result: {},
  inputs: {},
  clean_lens: {},
};

function mount(extra: Record<string, unknown> = {}) {
  const model = new StaticModel<Record<string, unknown>>({ ...BASE, ...extra });
  const el = document.createElement("div");
  document.body.append(el);
  widget.render({ model, el });
  const hm = el.querySelector("[data-role=sweep]") as HTMLCanvasElement;
  return { model, el, hm };
}

/** The text of the visible tooltip (the heatmap moves it into the view's scroll host). */
function tipText(el: HTMLElement): string {
  const tips = [...el.querySelectorAll("[data-testid=wb-tooltip]")].filter((t) => !(t as HTMLElement).hidden);
  return tips.map((t) => t.textContent).join("|");
}

function clickAt(hm: HTMLCanvasElement, r: number, c: number, shiftKey = false) {
  const rows = Number(hm.getAttribute("data-rows"));
  const cols = Number(hm.getAttribute("data-cols"));
  setBox(hm, 0, 0, cols * 10, rows * 10);
  hm.dispatchEvent(new MouseEvent("click", { clientX: c * 10 + 5, clientY: r * 10 + 5, bubbles: true, shiftKey }));
}

describe("the set of cells (pure logic)", () => {
  it("toggles a cell in and out, keeping the order cells were added in", () => {
    const a: CellTuple = ["head", 1, null, 2];
    const b: CellTuple = ["mlp_out", 0, 3, null];
    let set = toggleCell([], a);
    set = toggleCell(set, b);
    expect(set).toEqual([a, b]);
    expect(toggleCell(set, ["head", 1, null, 2])).toEqual([b]); // equal by value, not identity
    expect(toggleCell(set, ["head", 1, 2, null])).toHaveLength(3); // position 2 is another cell than head 2
  });
  it("maps heatmap cells to cells of the site, and back", () => {
    expect(cellOf(head, 2, 3)).toEqual(["head", 2, null, 3]);
    expect(cellOf(resid, 2, 3)).toEqual(["resid_pre", 2, 3, null]);
    expect(cellPosition(head, ["head", 2, null, 3])).toEqual([2, 3]);
    expect(cellPosition(resid, ["head", 2, null, 3])).toBeNull();
  });
  it("receivers: logits until a head is picked; k/v receivers are key-value heads", () => {
    const q = receiverCell(SITES, "q", 3, 1, 4, 2);
    expect(q).toEqual(["q", 3, null, 1]);
    expect(receiverCell(SITES, "k", 3, 3, 4, 2)).toEqual(["k", 3, null, 1]); // query head 3 reads kv head 3 // 2
    let r = toggleReceiver("logits", q);
    expect(r).toEqual([q]);
    r = toggleReceiver(r, ["head", 2, null, 0]);
    expect(r).toHaveLength(2);
    expect(toggleReceiver(toggleReceiver(r, q), ["head", 2, null, 0])).toBe("logits");
    expect(receiverColumns(SITES, ["v", 1, null, 1], 4, 2)).toEqual([2, 3]);
    expect(receiverColumns(SITES, ["head", 1, null, 1], 4, 2)).toEqual([1]);
  });
  it("labels cells as a person reads them, tokens shown visibly", () => {
    expect(cellLabel(SITES, ["mlp_out", 0, 1, null], ["a", " b"])).toBe("mlp_out L0 pos 1 (␣b)");
    expect(cellLabel(SITES, ["k", 4, null, 1])).toBe("k L4 KV1");
    expect(cellLabel(SITES, ["head", 2, null, 3])).toBe("head L2 H3");
  });
});

describe("trait typing", () => {
  it("a model typed by its traits reads and writes them with their types", () => {
    const m = new StaticModel<PatchTraits>({ cells: [["head", 1, null, 2]], receivers: "logits", n_kv_heads: 3 });
    expectTypeOf(m.get("cells")).toEqualTypeOf<CellTuple[]>();
    expectTypeOf(m.get("receivers")).toEqualTypeOf<"logits" | CellTuple[]>();
    expectTypeOf(m.get("n_kv_heads")).toEqualTypeOf<number>();
    expectTypeOf<AnyModel<PatchTraits>["set"]>().parameter(0).toEqualTypeOf<keyof PatchTraits & string>();
    m.set("cells", [["mlp_out", 0, 3, null]]);
    expect(m.get("cells")).toEqual([["mlp_out", 0, 3, null]]);
  });
  it("the view handles every kind of kernel message, and only those", () => {
    const model = new StaticModel<LensTraits & ExportState>({ _view_kind: "lens", status: "done", error: "", history: [], prompt: "p", data: {}, pinned: [], mode: "prob" });
    const v = new LensView(model, document.createElement("div"));
    expect(Object.keys(v.kernelHandlers).sort()).toEqual([...KERNEL_MESSAGES].sort());
    v.destroy();
  });
});

describe("PatchView: sites, the set, path mode", () => {
  it("the site picker lists every site the kernel offers, with what it is", () => {
    const { el } = mount();
    const opts = [...(el.querySelector("[data-testid=wb-site]") as HTMLSelectElement).options];
    expect(opts.map((o) => o.value)).toEqual(SITES.map((s) => s.name));
    expect(opts[0].title).toBe("the token embeddings");
  });
  it("embed has one layer row; k/v have n_kv_heads columns; heads n_heads", () => {
    expect(mount({ site: "embed" }).hm.getAttribute("data-rows")).toBe("1");
    const k = mount({ site: "k" }).hm;
    expect([k.getAttribute("data-rows"), k.getAttribute("data-cols")]).toEqual(["4", "2"]);
    expect(mount({ site: "q" }).hm.getAttribute("data-cols")).toBe("4");
    expect(mount({ site: "mlp_out" }).hm.getAttribute("data-cols")).toBe("3");
  });
  it("a click on a k cell sends the key-value head", () => {
    const { model, hm } = mount({ site: "k" });
    clickAt(hm, 2, 1);
    expect(model.sent.at(-1)!.content).toMatchObject({ kind: "patch", layer: 2, head: 1, position: null });
  });
  it("shift-click adds a cell to the set (outlined) and takes it out again; Apply set is one request", () => {
    const { model, el, hm } = mount({ site: "head" });
    const before = model.sent.length;
    clickAt(hm, 1, 2, true);
    expect(model.sent.length).toBe(before); // no patch request: it only joins the set
    expect(model.get("cells")).toEqual([["head", 1, null, 2]]);
    expect(hm.getAttribute("data-outlined")).toBe("set:1,2");
    (el.querySelector("[data-testid=wb-site]") as HTMLSelectElement).value = "mlp_out";
    model.set("site", "mlp_out");
    const hm2 = el.querySelector("[data-role=sweep]") as HTMLCanvasElement;
    clickAt(hm2, 0, 2, true);
    expect(model.get("cells")).toEqual([
      ["head", 1, null, 2],
      ["mlp_out", 0, 2, null],
    ]);
    expect(hm2.getAttribute("data-outlined")).toBe("set:0,2"); // only the shown site's cells
    const chips = [...el.querySelectorAll("[data-testid=wb-set-cell]")];
    expect(chips.map((c) => c.firstChild!.textContent)).toEqual(["head L1 H2", "mlp_out L0 pos 2 (␣<img␣src=x␣onerror=alert(1)>)"]);
    expect(el.querySelectorAll("img").length).toBe(0); // token text stays text
    (el.querySelector("[data-testid=wb-apply-set]") as HTMLButtonElement).click();
    expect(model.sent.at(-1)!.content).toMatchObject({ kind: "apply_set" });
    (chips[0].querySelector("button") as HTMLButtonElement).click();
    expect(model.get("cells")).toEqual([["mlp_out", 0, 2, null]]);
    clickAt(hm2, 0, 2, true);
    expect(model.get("cells")).toEqual([]);
    expect((el.querySelector("[data-testid=wb-apply-set]") as HTMLButtonElement).disabled).toBe(true);
  });
  it("keyboard: arrows move, Space adds to the set, Enter applies", () => {
    const { model, hm } = mount();
    clickAt(hm, 0, 0);
    const key = (k: string, shiftKey = false) => hm.dispatchEvent(new KeyboardEvent("keydown", { key: k, bubbles: true, shiftKey }));
    key("ArrowDown");
    key("ArrowRight");
    key(" ");
    expect(model.get("cells")).toEqual([["resid_pre", 1, 1, null]]);
    key("ArrowRight");
    key("Enter", true);
    expect(model.get("cells")).toEqual([
      ["resid_pre", 1, 1, null],
      ["resid_pre", 1, 2, null],
    ]);
    key("Enter");
    expect(model.sent.at(-1)!.content).toMatchObject({ kind: "patch", layer: 1, position: 2 });
  });
  it("path mode: the map is the sender heads; a click picks a receiver, Logits resets; the sweep fills the map", () => {
    const { model, el, hm } = mount({ mode: "path", site: "mlp_out" });
    expect([hm.getAttribute("data-rows"), hm.getAttribute("data-cols")]).toEqual(["4", "4"]);
    expect((el.querySelector("[data-testid=wb-site]")!.closest("label") as HTMLElement).hidden).toBe(true);
    const sent = model.sent.length;
    clickAt(hm, 3, 1);
    expect(model.sent.length).toBe(sent); // picking a receiver computes nothing
    expect(model.get("receivers")).toEqual([["head", 3, null, 1]]);
    expect(hm.getAttribute("data-outlined")).toBe("receiver:3,1");
    expect(el.querySelector("[data-testid=wb-receiver]")!.firstChild!.textContent).toBe("head L3 H1");
    model.set("receiver_site", "k");
    clickAt(el.querySelector("[data-role=sweep]") as HTMLCanvasElement, 2, 3);
    expect(model.get("receivers")).toEqual([
      ["head", 3, null, 1],
      ["k", 2, null, 1],
    ]);
    expect((el.querySelector("[data-role=sweep]") as HTMLCanvasElement).getAttribute("data-outlined")).toBe("receiver:3,1 receiver:2,2 receiver:2,3");
    (el.querySelector("[data-testid=wb-receivers-logits]") as HTMLButtonElement).click();
    expect(model.get("receivers")).toBe("logits");
    const values = f32([4, 4], (i) => (i >= 12 ? NaN : i / 12));
    model.set("sweep", { values, normalized: values, clean: 1, corrupt: 0, site: "head", mode: "path", receivers: "logits", axes: ["layer", "head"], method: "zero" });
    expect(el.querySelector("[data-testid=wb-caption]")!.textContent).toContain("path patching from each sender head to logits");
    // NaN (a sender at or above the receiver) is "no path": its own colour, named in the legend and on hover
    const map = el.querySelector("[data-role=sweep]") as HTMLCanvasElement;
    const wrap = map.closest(".wb-heatmap") as HTMLElement;
    expect(wrap.querySelector("[data-testid=wb-legend-nan]")!.textContent).toBe("no path (sender at or above the receiver)");
    setBox(map, 0, 0, 40, 40);
    map.dispatchEvent(new MouseEvent("mousemove", { clientX: 5, clientY: 35, bubbles: true })); // layer 3: NaN
    expect(tipText(el)).toContain("no path");
    map.dispatchEvent(new MouseEvent("mousemove", { clientX: 5, clientY: 5, bubbles: true })); // layer 0: 0, a value
    expect(tipText(el)).toContain("effect 0");
    (el.querySelector("[data-testid=wb-sweep]") as HTMLButtonElement).click();
    expect(model.sent.at(-1)!.content).toMatchObject({ kind: "sweep" });
    clickAt(el.querySelector("[data-role=sweep]") as HTMLCanvasElement, 1, 1, true);
    expect(model.get("cells")).toEqual([["head", 1, null, 1]]); // senders for one path patch
    expect(el.querySelector("[data-testid=wb-apply-set]")!.textContent).toBe("Apply senders");
  });
  it("a set result shows its value and says why no lens is drawn", () => {
    const { model, el } = mount();
    model.set("result", {
      label: "patch set of 2: Cell('head', 1, head=2), Cell('mlp_out', 0, position=2)",
      site: "set",
      layer: null,
      position: null,
      head: null,
      cell: null,
      cells: [
        ["head", 1, null, 2],
        ["mlp_out", 0, 2, null],
      ],
      value: 0.25,
      clean: 1,
      corrupt: 0,
      top_tokens: [" x"],
      top_probs: f32([1], () => 0.5),
      lens: lensData(4, 3, 5),
      compute_ms: 1,
    });
    expect(el.querySelector("[data-testid=wb-metric]")!.getAttribute("data-value")).toBe("0.25");
    // the lens of the joint run, shaded from the earliest edited layer (0) and position (0: the head spans all)
    expect(el.querySelector("[data-testid=wb-lens-title]")!.textContent).toContain("jointly edited run (all 2 cells");
    const lens = el.querySelector("[data-role=patched-lens]") as HTMLCanvasElement;
    expect([lens.getAttribute("data-rows"), lens.getAttribute("data-cols")]).toEqual(["4", "3"]);
    expect(
      setCone(
        [
          ["head", 1, null, 2],
          ["mlp_out", 2, 2, null],
        ],
        4,
        3,
      ),
    ).toEqual({ r0: 1, c0: 0, r1: 3, c1: 2 });
    expect(
      setCone(
        [
          ["resid_pre", 3, 2, null],
          ["mlp_out", 2, 1, null],
        ],
        4,
        3,
      ),
    ).toEqual({ r0: 2, c0: 1, r1: 3, c1: 2 });
  });
  it("a path-patch result says why no lens is drawn", () => {
    const { model, el } = mount({ mode: "path" });
    model.set("result", {
      label: "path-patch set of 1: Cell('head', 0, head=1) → logits",
      site: "set",
      layer: null,
      position: null,
      head: null,
      cell: null,
      cells: [["head", 0, null, 1]],
      value: 0.5,
      clean: 1,
      corrupt: 0,
      top_tokens: [" x"],
      top_probs: f32([1], () => 0.5),
      lens: {},
      lens_note: "path patching: no lens",
      compute_ms: 1,
    });
    expect(el.querySelector("[data-testid=wb-lens-note]")!.textContent).toBe("(path patching: no lens)");
    expect(el.querySelector("[data-testid=wb-lens-title]")).toBeNull();
  });
});

describe("export of any view", () => {
  const svgOf = (model: StaticModel<Record<string, unknown>>) => {
    model.emit("msg:custom", { kind: "export", format: "svg", id: "e1" }, []);
    const last = model.sent.at(-1)!;
    expect(last.content).toMatchObject({ kind: "export_result", id: "e1", format: "svg" });
    const text = new TextDecoder().decode(last.buffers![0] as Uint8Array);
    return new DOMParser().parseFromString(text, "image/svg+xml");
  };
  const texts = (doc: Document) => [...doc.querySelectorAll("text")].map((t) => t.textContent ?? "");

  it("patch: the map with the set outlined, the set, and the result", () => {
    const { model } = mount({
      site: "head",
      cells: [["head", 1, null, 2]],
      result: {
        label: "patch head L1 H2",
        site: "head",
        layer: 1,
        position: null,
        head: 2,
        cell: [1, 2],
        cells: [["head", 1, null, 2]],
        value: 0.5,
        clean: 1,
        corrupt: 0,
        top_tokens: [" <b>x</b>"],
        top_probs: f32([1], () => 0.5),
        lens: lensData(4, 3, 2),
        compute_ms: 1,
      },
    });
    const doc = svgOf(model);
    const t = texts(doc);
    expect(t).toContain("Set of cells (1)");
    expect(t).toContain("head L1 H2");
    expect(t).toContain("patch head L1 H2");
    expect(t.some((x) => x.startsWith("prediction: ␣<b>x</b>"))).toBe(true);
    expect(t).toContain("Logit lens of the patched run (shaded: causal cone of the patch)");
    expect(doc.querySelectorAll("[data-outline=set]").length).toBe(1);
    expect(doc.querySelector("b")).toBeNull(); // model text stays text
  });
  it("path mode exports the receivers too", () => {
    const { model } = mount({ mode: "path", receivers: [["q", 3, null, 1]] });
    const t = texts(svgOf(model));
    expect(t).toContain("Receivers");
    expect(t).toContain("q L3 H1");
    expect(t).not.toContain("no path (sender at or above the receiver)"); // no sweep yet: nothing is "no path"
    const values = f32([4, 4], (i) => (i >= 12 ? NaN : i / 12));
    model.set("sweep", { values, normalized: values, clean: 1, corrupt: 0, site: "head", mode: "path", receivers: [["q", 3, null, 1]], axes: ["layer", "head"], method: "zero" });
    expect(texts(svgOf(model))).toContain("no path (sender at or above the receiver)");
  });
  it("lens: the heatmap and the pinned tokens' chart", () => {
    const model = new StaticModel<Record<string, unknown>>({
      _view_kind: "lens",
      status: "done",
      error: "",
      history: [],
      prompt: "p",
      data: lensData(3, 4, 2),
      pinned: [" Paris"],
      focus: " Paris",
      mode: "prob",
    });
    const el = document.createElement("div");
    document.body.append(el);
    widget.render({ model, el });
    const doc = svgOf(model);
    const t = texts(doc);
    expect(t.some((x) => x.startsWith("Pinned tokens at position 3"))).toBe(true);
    expect(t).toContain("␣Paris");
    expect(doc.querySelectorAll("polyline").length).toBe(1);
  });
  it("attention: the open head's pattern and its head view, tokens as text", () => {
    const model = new StaticModel<Record<string, unknown>>({
      _view_kind: "attention",
      status: "done",
      error: "",
      history: [],
      prompt: "p",
      tokens: ["a", "<img src=x>"],
      n_layers: 2,
      n_heads: 3,
      thumbs: f32([2, 3, 2, 2], () => 0.5),
      pattern: {},
    });
    const el = document.createElement("div");
    document.body.append(el);
    widget.render({ model, el });
    expect(texts(svgOf(model))).toContain("Layers × heads");
    model.set("pattern", { layer: 1, head: 2, tokens: ["a", "<img src=x>"], data: f32([2, 2], (i) => [1, 0, 0.3, 0.7][i]) });
    const doc = svgOf(model);
    const t = texts(doc);
    expect(t).toContain("Head view");
    expect(t.filter((x) => x === "<img␣src=x>").length).toBeGreaterThanOrEqual(2); // query and key columns
    expect(doc.querySelectorAll("line").length).toBeGreaterThanOrEqual(2); // weights above 0.05: 1 -> 0, 0.3, 0.7
    expect(doc.querySelector("img")).toBeNull();
  });
});
