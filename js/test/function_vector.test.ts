import { describe, expect, it } from "vitest";
import { accuracyChart, layerAt } from "../src/function_vector";
import widget from "../src/index";
import { StaticModel } from "../src/model";
import { f32, setBox } from "./helpers";

const L = 4;
const H = 3;
const XSS = "<img src=x onerror=alert(1)>";
const toks = [" Q", ":", " hot", "\n", "A", ":", " cold", XSS, "A", ":"];
const T = toks.length;

function state(extra: Record<string, unknown> = {}) {
  return {
    _view_kind: "function_vector",
    status: "done",
    error: "",
    progress: 0,
    progress_text: "",
    history: [],
    code: "",
    selected: [],
    task: {
      name: "antonyms",
      n_pairs: 50,
      examples: [
        ["hot", "cold"],
        [XSS, "b"],
      ],
      template: "Q: {x}\nA: {y}\n\n",
      description: "",
    },
    n_shots: 5,
    n_prompts: 3,
    seed: 0,
    top_n: 2,
    eval_prompts: 10,
    n_layers: L,
    n_heads: H,
    heads: [
      [2, 1],
      [1, 0],
    ],
    effects: {
      values: f32([L, H], (i) => (i === 7 ? 0.3 : i === 3 ? 0.1 : -0.01 * (i % 3))),
      sem: f32([L, H], () => 0.01),
      normalized: f32([L, H], (i) => i / 12),
      top_tokens: Array.from({ length: L }, (_, l) => Array.from({ length: H }, (_, hd) => (l === 2 && hd === 1 ? XSS : ` t${l}${hd}`))),
      clean: 0.6,
      corrupt: 0.1,
      n: 3,
      settings: { n_shots: 5, n_prompts: 3, seed: 0 },
    },
    head: {},
    example: 0,
    pattern: {},
    vector: {
      heads: [
        [2, 1],
        [1, 0],
      ],
      scores: f32([2], (i) => 0.3 - 0.2 * i),
      norm: 12.5,
      tokens: [" cold", XSS],
      probs: f32([2], (i) => 0.4 - 0.1 * i),
    },
    evaluation: {
      accuracy: f32([L], (i) => [0.1, 0.5, 0.3, 0.0][i]),
      sem: f32([L], () => 0.05),
      mean_probs: f32([L], () => 0.2),
      layers: [0, 1, 2, 3],
      baseline: 0.05,
      baseline_prob: 0.02,
      best_layer: 1,
      best_accuracy: 0.5,
      n: 10,
      heads: [
        [2, 1],
        [1, 0],
      ],
    },
    stale: [],
    prompt: "Q: hot\nA:",
    layer: -1,
    scale: 1,
    max_new_tokens: 5,
    positions: "last",
    position_modes: ["last", "all"],
    trial: {},
    ...extra,
  };
}

function mount(extra: Record<string, unknown> = {}) {
  const model = new StaticModel<Record<string, unknown>>(state(extra));
  const el = document.createElement("div");
  document.body.append(el);
  const cleanup = widget.render({ model, el });
  return { model, el, cleanup };
}

describe("FunctionVectorView", () => {
  it("draws the [L, H] map with the chosen heads outlined; a click opens a head, shift-click toggles it", () => {
    const { el, model, cleanup } = mount();
    const c = el.querySelector("[data-testid=wb-heatmap][data-role=fv-heads]") as HTMLCanvasElement;
    expect(c.getAttribute("data-rows")).toBe(String(L));
    expect(c.getAttribute("data-cols")).toBe(String(H));
    expect(c.getAttribute("data-outlined")).toBe("set:2,1 set:1,0");
    setBox(c, 0, 0, H * 30, L * 14);
    c.dispatchEvent(new MouseEvent("click", { clientX: 30 + 3, clientY: 2 * 14 + 3, bubbles: true }));
    expect(model.sent.at(-1)!.content).toMatchObject({ kind: "head", layer: 2, head: 1 });
    c.dispatchEvent(new MouseEvent("click", { clientX: 2 * 30 + 3, clientY: 3, shiftKey: true, bubbles: true }));
    expect(model.sent.at(-1)!.content).toMatchObject({ kind: "toggle", layer: 0, head: 2 });
    expect(el.querySelectorAll("img").length).toBe(0);
    cleanup();
    el.remove();
  });

  it("shows an opened head's decoded tokens and its attention from the last token, as text", () => {
    const { el, model, cleanup } = mount({
      head: { layer: 2, head: 1, effect: 0.3, sem: 0.01, normalized: 0.6, rank: 1, tokens: [XSS, " cold"], probs: f32([2], (i) => 0.5 - 0.2 * i) },
      pattern: { layer: 2, head: 1, example: 0, tokens: toks, target: " cold", data: f32([T, T], (i) => (i % T === 6 ? 0.7 : 0.3 / T)) },
    });
    expect(el.querySelector("[data-testid=wb-fv-head-title]")!.textContent).toBe("Layer 2, head 1");
    expect(el.querySelector("[data-testid=wb-fv-toggle]")!.textContent).toBe("Take out of the vector");
    const decoded = [...el.querySelectorAll("[data-testid=wb-fv-head-token] code")].map((x) => x.textContent);
    expect(decoded).toEqual(["<img␣src=x␣onerror=alert(1)>", "␣cold"]);
    const strip = [...el.querySelectorAll("[data-testid=wb-fv-attn-strip] [data-testid=wb-token]")];
    expect(strip.length).toBe(T);
    const w = strip.map((s) => Number(s.getAttribute("data-weight")));
    expect(w.indexOf(Math.max(...w))).toBe(6); // the last query row: most weight on " cold"
    expect(el.querySelectorAll("img").length).toBe(0);
    (el.querySelector("[data-testid=wb-fv-toggle]") as HTMLButtonElement).click();
    expect(model.sent.at(-1)!.content).toMatchObject({ kind: "toggle", layer: 2, head: 1 });
    cleanup();
    el.remove();
  });

  it("draws the accuracy by layer against the baseline; a click on the chart picks the layer to try", () => {
    const { el, model, cleanup } = mount();
    const title = el.querySelector("[data-testid=wb-fv-chart-title]")!.textContent!;
    expect(title).toContain("baseline 0.05");
    expect(title).toContain("best layer 1: 0.50");
    const svg = el.querySelector("[data-testid=wb-fv-chart-svg]") as SVGSVGElement;
    expect(svg.querySelectorAll("polyline").length).toBe(1);
    expect(svg.textContent).toContain("best: layer 1");
    setBox(svg, 0, 0, 640, 230);
    const g = accuracyChart(state().evaluation as never, [0.1, 0.5, 0.3, 0], [0, 0, 0, 0], 1, false);
    svg.dispatchEvent(new MouseEvent("click", { clientX: g.x(2) + 1, clientY: 50, bubbles: true }));
    expect(model.get("layer")).toBe(2);
    expect((el.querySelector("[data-testid=wb-fv-layer]") as HTMLInputElement).value).toBe("2");
    expect(layerAt(g, [0, 1, 2], g.x(3))).toBe(2); // the last layer cannot be tried (no next block): nearest allowed
    cleanup();
    el.remove();
  });

  it("Generate sends the prompt box; the trial shows both continuations with the divergence marked", () => {
    const { el, model, cleanup } = mount({
      trial: {
        prompt: "Q: hot\nA:",
        layer: 1,
        steer_layer: 2,
        scale: 1,
        positions: "last",
        max_new_tokens: 3,
        heads: [[2, 1]],
        text: " cold\n\n",
        baseline: " hot\n\n",
        pieces: [" cold", "\n", XSS],
        baseline_pieces: [" hot", "\n", "\n"],
        diverges_at: 0,
        diverge_known: true,
        same: false,
        relative: 0.5,
      },
    });
    (el.querySelector("[data-testid=wb-fv-generate]") as HTMLButtonElement).click();
    expect(model.sent.at(-1)!.content).toMatchObject({ kind: "steer", prompt: "Q: hot\nA:", layer: 1, scale: 1, max_new_tokens: 5, positions: "last" });
    const steered = [...el.querySelectorAll("[data-testid=wb-fv-steered] [data-testid=wb-fv-piece]")].map((x) => x.textContent);
    expect(steered).toEqual(["␣cold", "↵", "<img␣src=x␣onerror=alert(1)>"]);
    expect(el.querySelector("[data-testid=wb-fv-steered] [data-first-diverged=true]")!.textContent).toBe("␣cold");
    expect(el.querySelector("[data-testid=wb-fv-trial-note]")!.textContent).toContain("token 0");
    expect(el.querySelectorAll("img").length).toBe(0);
    cleanup();
    el.remove();
  });

  it("marks stale parts and says when no heads are chosen", () => {
    const { el, model, cleanup } = mount({ stale: ["vector", "evaluation"] });
    expect(el.querySelector("[data-testid=wb-fv-vector-title]")!.getAttribute("data-stale")).toBe("true");
    expect(el.querySelector("[data-testid=wb-fv-chart-title]")!.textContent).toContain("re-measuring");
    model.set("heads", []);
    model.set("vector", {});
    expect(el.querySelector("[data-testid=wb-fv-no-heads]")).not.toBeNull();
    cleanup();
    el.remove();
  });
});
