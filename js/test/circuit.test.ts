import { describe, expect, it } from "vitest";
import { circuitLayout, graphInfo, sliderN, sliderPos } from "../src/circuit";
import widget from "../src/index";
import { StaticModel } from "../src/model";
import { f32, i32 } from "./helpers";

// 2 layers, 2 query heads, 1 key-value head (grouped-query): nodes embed, L0H0, L0H1, L0KV0, MLP0, L1H0, L1H1, L1KV0, MLP1, logits
const names = ["embed", "L0H0", "L0H1", "L0KV0", "MLP0", "L1H0", "L1H1", "L1KV0", "MLP1", "logits"];
const kinds = ["embed", "head", "head", "kv", "mlp", "head", "head", "kv", "mlp", "logits"];
const layers = [-1, 0, 0, 0, 0, 1, 1, 1, 1, 2];
const index = [0, 0, 1, 0, 2, 0, 1, 0, 2, 0];
const senders = ["embed", "L0H0", "L0H1", "MLP0", "L1H0", "L1H1", "MLP1"];
const receivers = ["L0H0.q", "L0H1.q", "L0H0.k", "L0H0.v", "MLP0", "L1H0.q", "L1H1.q", "L1H0.k", "L1H0.v", "MLP1", "logits"];
const senderNode = [0, 1, 2, 4, 5, 6, 8];
const receiverNode = [1, 2, 3, 3, 4, 5, 6, 7, 7, 8, 9];
const N = names.length;

function state(extra: Record<string, unknown> = {}) {
  return {
    _view_kind: "circuit",
    status: "done",
    error: "",
    progress: 0,
    progress_text: "",
    history: [],
    code: "",
    selected: [],
    graph: {
      senders,
      receivers,
      columns: null,
      n_layers: 2,
      n_heads: 2,
      n_kv_heads: 1,
      n_edges: 40,
      method: "eap",
      metric: "logit_diff()",
      n_examples: 2,
      align: "exact",
      by_position: false,
      clean: 1,
      corrupt: 0,
      gqa: true,
      names,
      kinds,
      layers: i32([N], (i) => layers[i]),
      index: i32([N], (i) => index[i]),
      sender_node: i32([senders.length], (i) => senderNode[i]),
      receiver_node: i32([receivers.length], (i) => receiverNode[i]),
      receiver_kind: ["q", "q", "k", "v", "mlp", "q", "q", "k", "v", "mlp", "logits"],
      node_in: f32([N, 1], (i) => i / 10),
      node_out: f32([N, 1], (i) => -i / 10),
      node_in_kv: f32([N, 1], () => 0),
    },
    n: 3,
    column: -1,
    pinned_in: [],
    pinned_out: ["MLP0"],
    max_drawn: 500,
    circuit: {
      key: "(3, (), ('MLP0',))",
      n: 3,
      size: 3,
      added: 0,
      dropped: 1,
      cut: 0.1,
      pin_threshold: null,
      max_abs: 0.5,
      per_column: [3],
      in_column: 3,
      drawn: 3,
      s: i32([3], (i) => [0, 4, 6][i]),
      r: i32([3], (i) => [7, 10, 10][i]),
      c: i32([3], () => 0),
      score: f32([3], (i) => [0.5, -0.2, 0.1][i]),
      node_in: f32([N], () => 0),
      node_out: f32([N], () => 0),
    },
    faithfulness: { key: "(3, (), ('MLP0',))", value: 0.75, raw: 0.75, clean: 1, corrupt: 0, n_edges: 3, sem: 0 },
    curve: { sizes: i32([2], (i) => [10, 20][i]), values: f32([2], (i) => [0.5, 0.9][i]), raw: f32([2], () => 0), target: [10, 20], done: true },
    inspected: {},
    checks: [],
    ...extra,
  };
}

function mount(extra: Record<string, unknown> = {}) {
  const el = document.createElement("div");
  document.body.append(el);
  const model = new StaticModel(state(extra));
  widget.render({ model: model as never, el });
  return { el, model };
}

describe("circuit view", () => {
  it("maps the slider logarithmically and back", () => {
    for (const n of [0, 1, 10, 100, 1000, 70651]) expect(Math.abs(sliderN(sliderPos(n, 70651), 70651) - n)).toBeLessThanOrEqual(Math.max(1, n * 0.012));
    expect(sliderN(1000, 304)).toBe(304);
    expect(sliderN(0, 304)).toBe(0);
  });

  it("lays layers out bottom to top, MLPs half a layer up, ports under their heads", () => {
    const g = graphInfo(state().graph as never);
    expect(g).not.toBeNull();
    const lay = circuitLayout(g!);
    const y = (name: string) => lay.y[names.indexOf(name)];
    const x = (name: string) => lay.x[names.indexOf(name)];
    expect(y("embed")).toBeGreaterThan(y("L0H0"));
    expect(y("L0H0")).toBeGreaterThan(y("MLP0"));
    expect(y("MLP0")).toBeGreaterThan(y("L1H0"));
    expect(y("L1H0")).toBeGreaterThan(y("logits"));
    expect(x("L0KV0")).toBeCloseTo((x("L0H0") + x("L0H1")) / 2);
    expect(y("L0KV0")).toBeGreaterThan(y("L0H0"));
    expect(x("MLP0")).toBeGreaterThan(x("L0H1"));
  });

  it("draws every node, the kept edges, the pins, and the faithfulness", () => {
    const { el } = mount();
    expect(el.querySelectorAll("[data-testid=wb-circuit-node]").length).toBe(N);
    const edges = [...el.querySelectorAll("[data-testid=wb-circuit-edge]")];
    expect(edges.length).toBe(3);
    // the strongest edge is drawn last (on top)
    expect(edges[2].getAttribute("data-edge")).toBe("0,7,0");
    expect(el.querySelector("[data-testid=wb-circuit-faith]")?.textContent).toBe("0.750");
    expect(el.querySelector("[data-testid=wb-circuit-faith]")?.getAttribute("data-stale")).toBe("false");
    const mlp0 = el.querySelector("[data-testid=wb-circuit-node][data-node=MLP0]");
    expect(mlp0?.querySelector("[stroke-dasharray]")).not.toBeNull();
    expect(el.querySelector("[data-testid=wb-circuit-pin-out-chip]")?.getAttribute("data-node")).toBe("MLP0");
    expect(el.querySelector("[data-testid=wb-circuit-drawn]")?.textContent).toContain("3 drawn of 3 kept edges");
  });

  it("says a faithfulness of another circuit is stale", () => {
    const { el } = mount({ faithfulness: { key: "other", value: 0.1, raw: 0.1, clean: 1, corrupt: 0, n_edges: 9, sem: 0 }, status: "running" });
    expect(el.querySelector("[data-testid=wb-circuit-faith]")?.getAttribute("data-stale")).toBe("true");
    expect(el.querySelector("[data-testid=wb-circuit-faith-note]")?.textContent).toContain("measuring");
  });

  it("hover text names the node and its attribution; edge text names the receiver input", () => {
    const { el } = mount();
    const node = el.querySelector("[data-testid=wb-circuit-node][data-node=L1H1] circle") as SVGElement;
    node.dispatchEvent(new MouseEvent("mousemove", { bubbles: true, clientX: 5, clientY: 5 }));
    const tip = el.querySelector("[data-testid=wb-tooltip]") as HTMLElement;
    expect(tip.hidden).toBe(false);
    expect(tip.textContent).toContain("L1H1: attention head 1 of layer 1");
    expect(tip.textContent).toContain("out: -0.600");
    const edge = el.querySelector("[data-testid=wb-circuit-edge][data-edge='0,7,0'] path") as SVGElement;
    edge.dispatchEvent(new MouseEvent("mousemove", { bubbles: true }));
    expect(tip.textContent).toContain("embed -> L1H0.k");
    expect(tip.textContent).toContain("key input of L1H0");
  });

  it("a click patches a node or an edge; arrows move the selection, Enter patches, o pins out", () => {
    const { el, model } = mount();
    const node = el.querySelector("[data-testid=wb-circuit-node][data-node=L0H1] circle") as SVGElement;
    node.dispatchEvent(new MouseEvent("click", { bubbles: true }));
    expect(model.sent.at(-1)?.content).toMatchObject({ kind: "node", node: "L0H1" });
    const edge = el.querySelector("[data-testid=wb-circuit-edge][data-edge='4,10,0'] path") as SVGElement;
    edge.dispatchEvent(new MouseEvent("click", { bubbles: true }));
    expect(model.sent.at(-1)?.content).toMatchObject({ kind: "edge", sender: 4, receiver: 10, column: null });
    const svg = el.querySelector("[data-testid=wb-circuit-svg]") as SVGElement;
    svg.dispatchEvent(new KeyboardEvent("keydown", { key: "ArrowUp", bubbles: true }));
    expect(el.querySelector("[data-testid=wb-circuit-node-title]")?.textContent).toBe("L1H1");
    (el.querySelector("[data-testid=wb-circuit-svg]") as SVGElement).dispatchEvent(new KeyboardEvent("keydown", { key: "ArrowRight", bubbles: true }));
    expect(el.querySelector("[data-testid=wb-circuit-node-title]")?.textContent).toBe("MLP1");
    (el.querySelector("[data-testid=wb-circuit-svg]") as SVGElement).dispatchEvent(new KeyboardEvent("keydown", { key: "Enter", bubbles: true }));
    expect(model.sent.at(-1)?.content).toMatchObject({ kind: "node", node: "MLP1" });
    (el.querySelector("[data-testid=wb-circuit-svg]") as SVGElement).dispatchEvent(new KeyboardEvent("keydown", { key: "o", bubbles: true }));
    expect(model.get("pinned_out")).toEqual(["MLP0", "MLP1"]);
  });
});
