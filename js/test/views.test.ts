import { describe, expect, it } from "vitest";
import widget from "../src/index";
import { StaticModel } from "../src/model";
import { LensView } from "../src/lens";
import type { ExportState, LensTraits } from "../src/traits";
import { f32, lensData, setBox } from "./helpers";

/** The content of the last message the view sent. */
function lastSent(model: StaticModel<Record<string, unknown>>): Record<string, unknown> {
  return model.sent.at(-1)!.content as Record<string, unknown>;
}

function mount(state: Record<string, unknown>) {
  const model = new StaticModel<Record<string, unknown>>({ status: "done", error: "", progress: 0, progress_text: "", history: [], code: "", selected: [], ...state });
  const el = document.createElement("div");
  document.body.append(el);
  const cleanup = widget.render({ model, el });
  return { model, el, cleanup };
}

describe("LensView", () => {
  it("draws layers x tokens with test ids and renders hostile token text as text", () => {
    const toks = ["<img src=x onerror=alert(1)>", " <script>", '"q"', "\n"];
    const { el, model, cleanup } = mount({ _view_kind: "lens", prompt: "p", data: lensData(3, 4, 2, toks), pinned: [" Paris"], focus: " Paris", mode: "prob" });
    const hm = el.querySelector("[data-testid=wb-heatmap][data-role=lens]")!;
    expect(hm.getAttribute("data-rows")).toBe("3");
    expect(hm.getAttribute("data-cols")).toBe("4");
    expect(el.querySelectorAll("[data-testid=wb-token]").length).toBe(4);
    expect(el.querySelectorAll("img").length).toBe(0);
    expect(el.querySelector("[data-testid=wb-linechart] polyline")).not.toBeNull();
    // switching the colour mode is a trait
    const mode = el.querySelector("[data-testid=wb-mode]") as HTMLSelectElement;
    mode.value = "entropy";
    mode.dispatchEvent(new Event("change"));
    expect(model.get("mode")).toBe("entropy");
    // pinning a typed token sets the pinned trait
    const pin = el.querySelector("[data-testid=wb-pin-input]") as HTMLInputElement;
    pin.value = "\u2423Rome";
    pin.dispatchEvent(new KeyboardEvent("keydown", { key: "Enter" }));
    expect(model.get("pinned")).toEqual([" Paris", " Rome"]);
    cleanup();
    expect(el.children.length).toBe(0);
  });
  it("shows status and a readable error", () => {
    const { el, model } = mount({ _view_kind: "lens", prompt: "p", data: {} });
    model.set("status", "error");
    model.set("error", "TokenizationError: 'Paris' is 2 tokens");
    const err = el.querySelector("[data-testid=wb-error]") as HTMLElement;
    expect(err.hidden).toBe(false);
    expect(err.textContent).toContain("TokenizationError");
    expect(el.querySelector("[data-testid=wb-status]")!.textContent).toBe("error");
  });
});

describe("PatchView", () => {
  const base = {
    _view_kind: "patch",
    clean: "a b c",
    corrupt: "a d c",
    target: " x",
    foil: " y",
    site: "resid_pre",
    mode: "patch",
    method: "zero",
    tokens_clean: ["a", " b", " c"],
    tokens_corrupt: ["a", " d", " c"],
    n_layers: 4,
    n_heads: 2,
    sweep: {},
    result: {},
  };
  it("a click sends one patch request with a request id", () => {
    const { el, model } = mount(base);
    const hm = el.querySelector("[data-role=sweep]") as HTMLCanvasElement;
    expect(hm.getAttribute("data-rows")).toBe("4");
    expect(hm.getAttribute("data-cols")).toBe("3");
    setBox(hm, 0, 0, 30, 40);
    hm.dispatchEvent(new MouseEvent("click", { clientX: 25, clientY: 15, bubbles: true }));
    const msg = lastSent(model);
    expect(msg.kind).toBe("patch");
    expect(msg).toMatchObject({ layer: 1, position: 2, head: null });
    expect(typeof msg.id).toBe("string");
  });
  it("heads site: layers x heads, the column is the head", () => {
    const { el, model } = mount({ ...base, site: "head" });
    const hm = el.querySelector("[data-role=sweep]") as HTMLCanvasElement;
    expect(hm.getAttribute("data-cols")).toBe("2");
    setBox(hm, 0, 0, 20, 40);
    hm.dispatchEvent(new MouseEvent("click", { clientX: 15, clientY: 35, bubbles: true }));
    expect(model.sent.at(-1)!.content).toMatchObject({ kind: "patch", layer: 3, head: 1, position: null });
  });
  it("sweep and cancel are messages; a result shows the prediction and the cone", () => {
    const { el, model } = mount(base);
    (el.querySelector("[data-testid=wb-sweep]") as HTMLButtonElement).click();
    expect(lastSent(model).kind).toBe("sweep");
    model.set("status", "running");
    const cancel = el.querySelector("[data-testid=wb-cancel]") as HTMLButtonElement;
    expect(cancel.disabled).toBe(false);
    cancel.click();
    expect(lastSent(model).kind).toBe("cancel");
    model.set("sweep", { values: f32([4, 3], (i) => i), normalized: f32([4, 3], (i) => i / 12), clean: 1, corrupt: 0, site: "resid_pre", mode: "patch" });
    expect(el.querySelector("[data-testid=wb-caption]")!.textContent).toContain("normalised");
    model.set("result", {
      label: "patch resid_pre L1 pos 2",
      site: "resid_pre",
      layer: 1,
      position: 2,
      cell: [1, 2],
      value: 0.5,
      clean: 1,
      corrupt: 0,
      top_tokens: [" x", " <b>"],
      top_probs: f32([2], (i) => 0.5 - i / 10),
      lens: lensData(4, 3, 2),
    });
    const pred = el.querySelector("[data-testid=wb-prediction]")!;
    expect(pred.getAttribute("data-top")).toBe(" x");
    expect(pred.querySelectorAll("b").length).toBe(1); // only our own label
    expect(el.querySelector("[data-role=patched-lens]")!.getAttribute("data-rows")).toBe("4");
    expect(el.querySelector("[data-role=sweep]")!.getAttribute("data-selected")).toBe("1,2");
  });
  it("answers an export request from the kernel with bytes", () => {
    const { model } = mount(base);
    model.emit("msg:custom", { kind: "export", format: "svg", id: "e1" }, []);
    const last = model.sent.at(-1)!;
    expect(last.content).toMatchObject({ kind: "export_result", id: "e1", format: "svg" });
    expect(new TextDecoder().decode(last.buffers![0] as Uint8Array)).toContain("<svg");
  });
});

describe("AttentionView", () => {
  it("a click on a thumbnail asks for that head only", () => {
    const { el, model } = mount({ _view_kind: "attention", prompt: "p", tokens: ["a", "b"], n_layers: 2, n_heads: 3, thumbs: f32([2, 3, 2, 2], () => 0.5), pattern: {} });
    const grid = el.querySelector("[data-role=heads]") as HTMLCanvasElement;
    setBox(grid, 0, 0, 30, 20);
    grid.dispatchEvent(new MouseEvent("click", { clientX: 25, clientY: 15, bubbles: true }));
    expect(model.sent.at(-1)!.content).toMatchObject({ kind: "head", layer: 1, head: 2 });
    model.set("pattern", { layer: 1, head: 2, tokens: ["a", "b"], data: f32([2, 2], (i) => [1, 0, 0.3, 0.7][i]) });
    expect(el.querySelector("[data-role=pattern]")!.getAttribute("data-rows")).toBe("2");
    const tok = el.querySelectorAll("[data-testid=wb-headview] [data-testid=wb-token]")[1];
    tok.dispatchEvent(new MouseEvent("mouseenter"));
    expect(el.querySelector("[data-role=pattern]")!.getAttribute("data-highlight")).toBe("1");
  });
});

describe("shared selection", () => {
  it("a selection set by the kernel moves the heatmap's selection", () => {
    const { el, model } = mount({ _view_kind: "lens", prompt: "p", data: lensData(3, 4, 2), pinned: [], mode: "prob" });
    model.set("selected", [2, 3]);
    expect(el.querySelector("[data-role=lens]")!.getAttribute("data-selected")).toBe("2,3");
  });
});

describe("issue 10 plumbing", () => {
  it("the bundle has no named render export (anywidget's deprecation warning) and a default { render }", async () => {
    const mod: Record<string, unknown> = await import("../src/index");
    expect("render" in mod).toBe(false);
    expect(typeof (mod.default as { render?: unknown }).render).toBe("function");
  });
  it("history arrives one entry at a time and shows the arguments that differ", () => {
    const { el, model } = mount({ _view_kind: "lens", prompt: "p", data: {} });
    expect(model.sent.some((m) => (m.content as { kind?: string }).kind === "attached")).toBe(true);
    const entry = (id: string, prompt: string) => ({ id, label: "lens", value: null, top: [], args: { prompt, pinned: [" Paris"] } });
    model.emit("msg:custom", { kind: "history_add", entry: entry("a", "The Eiffel Tower is located in the city of"), max: 50 }, []);
    model.emit("msg:custom", { kind: "history_add", entry: entry("b", "The Eiffel Tower is located in the town of"), max: 50 }, []);
    const args = [...el.querySelectorAll("[data-testid=wb-history-args]")].map((x) => x.textContent ?? "");
    expect(args.length).toBe(2);
    expect(args[0]).toContain("city");
    expect(args[1]).toContain("town");
    expect(args[0]).not.toContain("pinned"); // the same in both: not shown
    model.emit("msg:custom", { kind: "history", entries: [entry("c", "x")], max: 50 }, []);
    expect(el.querySelectorAll("[data-testid=wb-history-entry]").length).toBe(1);
  });
  it("an error status without a message still says something", () => {
    const { el, model } = mount({ _view_kind: "lens", prompt: "p", data: {} });
    model.set("status", "error");
    const err = el.querySelector("[data-testid=wb-error]") as HTMLElement;
    expect(err.hidden).toBe(false);
    expect(err.textContent).toContain("failed");
  });
  it("the lens export title is the prompt of the data shown, not of the box", () => {
    const model = new StaticModel<LensTraits & ExportState>({
      _view_kind: "lens",
      status: "error",
      error: "x",
      history: [],
      prompt: "new prompt",
      data: { ...lensData(2, 2, 2), prompt: "old prompt" },
    });
    const el = document.createElement("div");
    document.body.append(el);
    const v = new LensView(model, el);
    expect(v.title()).toBe('Logit lens · probability of the top-1 token · prompt "old prompt"');
    v.destroy();
  });
});

describe("figure parts of a heatmap", () => {
  it("draws axis titles and a colour legend with its range and label, and exports them as SVG text", async () => {
    const { Heatmap } = await import("../src/heatmap");
    const hm = new Heatmap({
      rows: 2,
      cols: 3,
      values: new Float32Array([-1, 0, 1, 0.5, -0.5, 0]),
      color: () => [10, 20, 30],
      rowLabels: ["L0", "L1"],
      colLabels: ["␣Paris", "is", "<b>x</b>"],
      rowTitle: "layer",
      colTitle: "position",
      legend: { lo: -1, hi: 1, label: "normalised effect (1 = clean, 0 = corrupt)" },
    });
    document.body.append(hm.el);
    hm.draw();
    expect(hm.el.querySelector('[data-testid="wb-axis-titles"]')!.textContent).toBe("position →layer ↓");
    const legend = hm.el.querySelector('[data-testid="wb-legend"]') as HTMLElement;
    expect(legend.hidden).toBe(false);
    expect(legend.textContent).toBe("-11normalised effect (1 = clean, 0 = corrupt)");
    const svg = hm.toSVG("Patching · site resid_pre");
    const texts = Array.from(svg.querySelectorAll("text")).map((t) => t.textContent);
    for (const want of ["Patching · site resid_pre", "position →", "layer ↓", "␣Paris", "<b>x</b>", "-1", "1", "normalised effect (1 = clean, 0 = corrupt)"]) expect(texts).toContain(want);
    expect(svg.querySelector("b")).toBeNull(); // model text stays text
    hm.setSpec({ rows: 2, cols: 3, values: new Float32Array(6), color: () => [0, 0, 0] });
    expect(legend.hidden).toBe(true);
    hm.el.remove();
  });
});

describe("visible tokens", () => {
  it("marks whitespace and shows control characters like the Python figures do", async () => {
    const { visibleToken } = await import("../src/tokens");
    expect(visibleToken(" Paris")).toBe("␣Paris");
    expect(visibleToken("a\nb\tc\r")).toBe("a↵b→c␍");
    expect(visibleToken("\u0000\u001b\u007f\u0085")).toBe("␀␛␡\\x85");
    expect(visibleToken("")).toBe("∅");
    expect(visibleToken("<b>x</b>")).toBe("<b>x</b>");
  });
});
