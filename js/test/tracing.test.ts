import { describe, expect, it } from "vitest";
import widget from "../src/index";
import { StaticModel } from "../src/model";
import { panelGrid, sideBySide, TracingView } from "../src/tracing";
import { f32, setBox } from "./helpers";

const L = 3;
const labels = [" The", " <img src=x onerror=alert(1)>*", " Tower*", " is", " of"];
const T = labels.length;

function panel(kind: string, grouped = false) {
  return {
    kind,
    values: f32([L, T], (i) => 0.1 + (0.8 * i) / (L * T)),
    high: 0.9,
    low: 0.1,
    labels,
    tokens: labels.map((t) => t.replace(/\*$/, "")),
    subject: [1, 3] as [number, number],
    target: " Paris",
    settings: { sever: kind === "resid" ? "mlp" : "", window: 3 },
    grouped,
    ...(grouped ? { sem: f32([L, T], () => 0.01), counts: [1, 1, 1, 1, 1], n: 2 } : {}),
  };
}

function mount(state: Record<string, unknown>) {
  const model = new StaticModel<Record<string, unknown>>({
    _view_kind: "tracing",
    status: "done",
    error: "",
    progress: 0,
    progress_text: "",
    history: [],
    code: "",
    selected: [],
    prompt: "The Eiffel Tower is located in the city of",
    subject: "Eiffel Tower",
    target: "",
    noise: 3,
    samples: 10,
    window: 3,
    sever: "",
    seed: 0,
    n_layers: L,
    traces: { resid: panel("resid"), mlp: panel("mlp"), attn: panel("attn") },
    stale: [],
    restored: {},
    dataset: {},
    example: -1,
    ...state,
  });
  const el = document.createElement("div");
  document.body.append(el);
  const cleanup = widget.render({ model, el });
  return { model, el, cleanup };
}

describe("CausalTraceView", () => {
  it("draws three panels (tokens x layers), hostile tokens as text, and a click asks to restore", () => {
    const { el, model, cleanup } = mount({});
    for (const kind of ["resid", "mlp", "attn"]) {
      const c = el.querySelector(`[data-testid=wb-heatmap][data-role=trace-${kind}]`)!;
      expect(c.getAttribute("data-rows")).toBe(String(T));
      expect(c.getAttribute("data-cols")).toBe(String(L));
    }
    expect(el.querySelectorAll("img").length).toBe(0);
    const titles = [...el.querySelectorAll("[data-testid=wb-trace-title]")].map((t) => t.textContent);
    expect(titles[0]).toContain("Impact of restoring state after corrupted input");
    expect(titles[0]).toContain("MLP severed");
    expect(titles[1]).toContain("Impact of restoring MLP after corrupted input");
    expect(titles[2]).toContain("Impact of restoring Attn after corrupted input");
    expect(el.textContent).toContain("␣<img␣src=x␣onerror=alert(1)>*");
    const canvas = el.querySelector("[data-role=trace-mlp]") as HTMLCanvasElement;
    setBox(canvas, 0, 0, 3 * 28, T * 18);
    canvas.dispatchEvent(new MouseEvent("click", { clientX: 2 * 28 + 3, clientY: 18 + 3, bubbles: true }));
    const sent = model.sent.at(-1)!.content as Record<string, unknown>;
    expect(sent).toMatchObject({ kind: "restore", panel: "mlp", layer: 2, position: 1 });
    const sever = el.querySelector("[data-testid=wb-trace-sever]") as HTMLSelectElement;
    sever.value = "attn";
    sever.dispatchEvent(new Event("change"));
    expect(model.get("sever")).toBe("attn");
    cleanup();
  });
  it("shows the restored prediction and lens, and marks stale panels", () => {
    const { el, model } = mount({});
    model.set("restored", {
      kind: "mlp",
      layer: 1,
      position: 2,
      token: " Tower*",
      value: 0.5,
      high: 0.9,
      low: 0.1,
      target: " Paris",
      top_tokens: [" Paris", " <b>x</b>", " Rome", " a", " b"],
      top_probs: f32([5], (i) => 0.5 - i * 0.1),
      lens_tokens: [" a", " b", " Paris"],
      lens_probs: f32([3], () => 0.4),
      lens_target: f32([3], (i) => i * 0.2),
      layers: [0, 1, 2],
      sever: "",
    });
    const top = [...el.querySelectorAll("[data-testid=wb-trace-top-token]")].map((t) => t.textContent);
    expect(top.length).toBe(5);
    expect(top[0]).toContain("␣Paris");
    expect(el.querySelectorAll("b").length).toBe(0);
    expect(el.querySelector("[data-role=trace-lens]")!.getAttribute("data-rows")).toBe("3");
    expect(el.querySelector("[data-testid=wb-trace-restored-title]")!.textContent).toContain("layers 0–2");
    model.set("stale", ["attn"]);
    expect(el.querySelector("[data-testid=wb-trace-panel-attn]")!.getAttribute("data-stale")).toBe("true");
  });
  it("over a dataset: group means, a picker, and no restore on a mean", () => {
    const { el, model } = mount({
      dataset: {
        n: 2,
        name: "facts",
        examples: [
          { clean: "a b", target: " x", subject: "a" },
          { clean: "c d", target: " y", subject: "c" },
        ],
      },
      traces: { resid: panel("resid", true), mlp: panel("mlp", true), attn: panel("attn", true) },
    });
    expect((el.querySelector("[data-testid=wb-trace-single]") as HTMLElement).hidden).toBe(true);
    const pick = el.querySelector("[data-testid=wb-trace-example]") as HTMLSelectElement;
    expect(pick.options.length).toBe(3);
    const canvas = el.querySelector("[data-role=trace-resid]") as HTMLCanvasElement;
    setBox(canvas, 0, 0, 3 * 28, T * 18);
    const before = model.sent.length;
    canvas.dispatchEvent(new MouseEvent("click", { clientX: 5, clientY: 5, bubbles: true }));
    expect(model.sent.length).toBe(before);
    expect(el.querySelector("[data-testid=wb-trace-note]")!.textContent).toContain("pick an example");
    pick.value = "1";
    pick.dispatchEvent(new Event("change"));
    expect(model.get("example")).toBe(1);
  });
  it("transposes [L, C] to rows = columns and puts figures side by side", () => {
    const g = panelGrid(panel("resid"))!;
    expect(g.C).toBe(T);
    expect(g.L).toBe(L);
    expect(g.values[1 * L + 2]).toBeCloseTo(0.1 + (0.8 * (2 * T + 1)) / (L * T));
    const f = sideBySide([
      { width: 10, height: 5, paint() {}, svg: () => document.createElementNS("http://www.w3.org/2000/svg", "g") },
      { width: 20, height: 8, paint() {}, svg: () => document.createElementNS("http://www.w3.org/2000/svg", "g") },
    ]);
    expect(f.width).toBe(42);
    expect(f.height).toBe(8);
  });
});

describe("CausalTraceView export", () => {
  it("exports the three panels side by side with layer ticks and the restored run", () => {
    const { el, model } = mount({ n_layers: 30, traces: {} });
    const p = (kind: string) => ({ ...panel(kind), values: f32([30, T], (i) => i / (30 * T)) });
    model.set("traces", { resid: p("resid"), mlp: p("mlp"), attn: p("attn") });
    const view = el.querySelector("[data-testid=wb-view]");
    expect(view).not.toBeNull();
    expect(el.querySelectorAll("[data-testid=wb-trace-ticks]").length).toBe(3);
    expect(el.querySelector("[data-testid=wb-trace-ticks]")!.textContent).toBe("0510152025");
    const direct = new TracingView(model as never, document.createElement("div"));
    const svg = direct.svgString();
    for (const title of ["Impact of restoring state after corrupted input", "Impact of restoring MLP after", "Impact of restoring Attn after"]) expect(svg).toContain(title);
    expect(svg).toContain(">25</text>");
    expect(svg).not.toContain("<img");
    direct.destroy();
  });
});
