import { describe, expect, it } from "vitest";
import { cellColumn, meanSem, ranked, shown, unitsOf } from "../src/dataset";
import widget from "../src/index";
import { StaticModel } from "../src/model";
import type { SiteInfo } from "../src/traits";
import { f32, i32, lensData, setBox } from "./helpers";

const SITES: SiteInfo[] = [{ name: "resid_pre", doc: "the stream into block l", heads: null, layers: 2 }];
const HOSTILE = "<img src=x onerror=alert(1)> went";
const EXAMPLES = [0, 1, 2].map((i) => ({ clean: i === 1 ? HOSTILE : `prompt ${i}`, corrupt: `corrupt ${i}`, target: " A", foil: " B" }));
// per-example metric [3 examples, 2 layers, 3 columns]; clean means 2, corrupt 0 -> normalised = v / 2
const PER = [1, 0, 0, 0, 0, 2, /* ex 1 */ 2, 0, 0, 0, 0, 2, /* ex 2 */ 0, 0, 0, 0, 0, 2];

function mount(extra: Record<string, unknown> = {}) {
  const model = new StaticModel<Record<string, unknown>>({
    _view_kind: "patch",
    status: "done",
    error: "",
    progress: 0,
    progress_text: "",
    code: "",
    selected: [],
    history: [],
    clean: "",
    corrupt: "",
    target: "",
    foil: "",
    site: "resid_pre",
    mode: "patch",
    method: "zero",
    tokens_clean: [],
    tokens_corrupt: [],
    n_layers: 2,
    n_heads: 2,
    n_kv_heads: 2,
    sites: SITES,
    cells: [],
    receivers: "logits",
    receiver_site: "head",
    result: {},
    inputs: {},
    clean_lens: {},
    dataset: { n: 3, name: "", examples: EXAMPLES, aligns: { exact: "", right: "", roles: "no fields" }, columns: ["0", "1", "2"], shown: [0, 1, 2], predictions: {}, has_corrupt: true },
    align: "exact",
    filter_text: "",
    correct_only: false,
    example: -1,
    sweep: {
      values: f32([2, 3], (i) => (PER[i] + PER[6 + i] + PER[12 + i]) / 3),
      normalized: f32([2, 3], (i) => (PER[i] + PER[6 + i] + PER[12 + i]) / 6),
      clean: 2,
      corrupt: 0,
      axes: ["layer", "position"],
      site: "resid_pre",
      mode: "patch",
      method: "zero",
      receivers: null,
      per_example: f32([3, 2, 3], (i) => PER[i]),
      clean_each: f32([3], () => 2),
      corrupt_each: f32([3], () => 0),
      ids: i32([3], (i) => i),
      align: "exact",
      columns: ["0", "1", "2"],
    },
    ...extra,
  });
  const el = document.createElement("div");
  document.body.append(el);
  const cleanup = widget.render({ model, el });
  return { model, el, cleanup };
}

describe("dataset statistics", () => {
  it("mean and sem (ddof 1) of the finite values", () => {
    const st = meanSem([1, 2, 3, Number.NaN]);
    expect(st.n).toBe(3);
    expect(st.mean).toBeCloseTo(2);
    expect(st.sem).toBeCloseTo(1 / Math.sqrt(3));
    expect(Number.isNaN(meanSem([5]).sem)).toBe(true);
  });
  it("shows values in the map's units", () => {
    expect(Array.from(shown(unitsOf("patch", 2, 0, null), [1, 2]))).toEqual([0.5, 1]);
    expect(Array.from(shown(unitsOf("ablate", 3, null, [3, 1]), [1, 2]))).toEqual([-2, 1]);
    expect(unitsOf("patch", 1, 1, null).kind).toBe("metric");
  });
  it("ranks the best and worst examples without overlap", () => {
    const r = ranked([0.1, 0.9, 0.5, -1], [10, 11, 12, 13], 3);
    expect(r.best.map((x) => x[0])).toEqual([11, 12]);
    expect(r.worst.map((x) => x[0])).toEqual([13, 10]);
  });
  it("reads one cell of every example", () => {
    expect(Array.from(cellColumn({ shape: [3, 2, 3], dtype: "float32", data: Float32Array.from(PER) }, 0))).toEqual([1, 2, 0]);
  });
});

describe("PatchView over a dataset", () => {
  it("hover says mean ± sem, a click draws the distribution with best and worst, an example opens", () => {
    const { el, model, cleanup } = mount();
    const hm = el.querySelector("[data-role=sweep]") as HTMLCanvasElement;
    expect(hm.getAttribute("data-cols")).toBe("3");
    expect(el.querySelector("[data-testid=wb-ds-controls]")?.hasAttribute("hidden")).toBe(false);
    expect((el.querySelector("[data-testid=wb-align] option[value=roles]") as HTMLOptionElement).disabled).toBe(true);
    setBox(hm, 0, 0, 102, 32);
    hm.dispatchEvent(new MouseEvent("mousemove", { clientX: 5, clientY: 5, bubbles: true }));
    const tip = el.querySelector("[data-testid=wb-tooltip]")!.textContent ?? "";
    expect(tip).toContain("mean ± sem: 0.500 ± 0.289, n = 3");
    hm.dispatchEvent(new MouseEvent("click", { clientX: 5, clientY: 5, bubbles: true }));
    expect(model.sent.some((m) => (m.content as { kind?: string }).kind === "patch")).toBe(false); // no kernel call
    expect(el.querySelectorAll("[data-testid=wb-dist-point]").length).toBe(3);
    const best = el.querySelectorAll("[data-testid=wb-best] [data-testid=wb-example]");
    expect(best[0].getAttribute("data-example")).toBe("1");
    expect(best[0].textContent).toContain(HOSTILE); // as text
    expect(el.querySelectorAll("img").length).toBe(0);
    (best[0] as HTMLElement).click();
    expect(model.get("example")).toBe(1);
    cleanup();
  });
  it("an opened example shows its pair and a way back", () => {
    const { el, model, cleanup } = mount({ example: 2, clean: "prompt 2", corrupt: "corrupt 2", tokens_clean: ["prompt", " 2"], tokens_corrupt: ["corrupt", " 2"], sweep: {} });
    expect(el.querySelector("[data-testid=wb-ds-controls]")?.hasAttribute("hidden")).toBe(true);
    expect(el.querySelector("[data-testid=wb-example-title]")?.textContent).toBe("Example #2 of 3");
    (el.querySelector("[data-testid=wb-back]") as HTMLButtonElement).click();
    expect(model.get("example")).toBe(-1);
    cleanup();
  });
});

function mountLens(extra: Record<string, unknown> = {}) {
  const model = new StaticModel<Record<string, unknown>>({
    _view_kind: "lens",
    status: "done",
    error: "",
    progress: 0,
    progress_text: "",
    code: "",
    selected: [],
    history: [],
    prompt: "",
    top_k: 5,
    mode: "prob",
    pinned: [],
    focus: "",
    data: {},
    hover: [],
    dataset: { n: 3, name: "", examples: EXAMPLES, aligns: { exact: "", right: "", roles: "no fields" } },
    align: "exact",
    example: -1,
    ds_lens: {
      values: f32([2, 3], (i) => (PER[i] + PER[6 + i] + PER[12 + i]) / 6),
      per_example: f32([3, 2, 3], (i) => PER[i] / 2),
      sem: f32([2, 3], () => 0),
      columns: ["<b>x</b>", " 1", "2"],
      align: "exact",
      metric: "target probability",
    },
    ...extra,
  });
  const el = document.createElement("div");
  document.body.append(el);
  const cleanup = widget.render({ model, el });
  return { model, el, cleanup };
}

describe("LensView over a dataset", () => {
  it("draws the mean map, hover says mean ± sem, a click shows every example's value, an example opens", () => {
    const { el, model, cleanup } = mountLens();
    const hm = el.querySelector("[data-role=lens]") as HTMLCanvasElement;
    expect([hm.getAttribute("data-rows"), hm.getAttribute("data-cols")]).toEqual(["2", "3"]);
    expect(el.querySelector("[data-testid=wb-prompt]")?.closest("[hidden]")).not.toBeNull();
    expect((el.querySelector("[data-testid=wb-align] option[value=roles]") as HTMLOptionElement).disabled).toBe(true);
    expect(el.querySelectorAll("[data-testid=wb-ds-example]").length).toBe(3);
    setBox(hm, 0, 0, 168, 36);
    hm.dispatchEvent(new MouseEvent("mousemove", { clientX: 5, clientY: 5, bubbles: true }));
    const tip = el.querySelector("[data-testid=wb-tooltip]")!.textContent ?? "";
    expect(tip).toContain("mean ± sem: 0.500 ± 0.289, n = 3");
    expect(tip).toContain("column <b>x</b>"); // a column label as text
    hm.dispatchEvent(new MouseEvent("click", { clientX: 5, clientY: 5, bubbles: true }));
    expect(el.querySelectorAll("[data-testid=wb-dist-point]").length).toBe(3);
    expect(el.querySelector("[data-testid=wb-dist-summary]")?.textContent).toContain("target probability");
    const best = el.querySelectorAll("[data-testid=wb-best] [data-testid=wb-example]");
    expect(best[0].getAttribute("data-example")).toBe("1");
    expect(best[0].textContent).toContain(HOSTILE); // as text
    expect(el.querySelectorAll("img, b").length).toBe(0);
    (best[0] as HTMLElement).click();
    expect(model.get("example")).toBe(1);
    cleanup();
  });
  it("an opened example is the single-prompt lens with a way back", () => {
    const { el, model, cleanup } = mountLens({ example: 2, prompt: "prompt 2", data: lensData(2, 4, 2, ["a", "b", "c", "d"]) });
    expect(el.querySelector("[data-testid=wb-ds-controls]")?.hasAttribute("hidden")).toBe(true);
    expect(el.querySelector("[data-testid=wb-example-title]")?.textContent).toBe("Example #2 of 3");
    expect(el.querySelector("[data-role=lens]")?.getAttribute("data-cols")).toBe("4");
    expect(el.querySelectorAll("[data-testid=wb-ds-example]").length).toBe(0);
    (el.querySelector("[data-testid=wb-back]") as HTMLButtonElement).click();
    expect(model.get("example")).toBe(-1);
    expect(el.querySelector("[data-role=lens]")?.getAttribute("data-cols")).toBe("3");
    cleanup();
  });
});

describe("DatasetView", () => {
  it("lists the shown examples with tokens and predictions, as text", () => {
    const model = new StaticModel<Record<string, unknown>>({
      _view_kind: "dataset",
      status: "done",
      error: "",
      progress: 0,
      progress_text: "",
      code: "",
      selected: [],
      dataset: { n: 3, name: "", examples: EXAMPLES.map((e) => ({ ...e, tokens: e.clean.split(" ") })) },
      predictions: { top_token: [" A", " B", " A"], top_prob: f32([3], () => 0.5), target_prob: f32([3], () => 0.5), correct: i32([3], (i) => (i === 1 ? 0 : 1)) },
      filter_text: "",
      correct_only: false,
      shown: [0, 1],
    });
    const el = document.createElement("div");
    document.body.append(el);
    const cleanup = widget.render({ model, el });
    const rows = el.querySelectorAll("[data-testid=wb-ds-row]");
    expect(rows.length).toBe(2);
    expect(rows[1].getAttribute("data-correct")).toBe("0");
    expect(rows[1].querySelector("[data-testid=wb-ds-ok]")?.textContent).toBe("✗");
    expect(el.querySelectorAll("img").length).toBe(0);
    const box = el.querySelector("[data-testid=wb-ds-correct]") as HTMLInputElement;
    box.checked = true;
    box.dispatchEvent(new Event("change"));
    expect(model.get("correct_only")).toBe(true);
    cleanup();
  });
});
