// Issue 15: LensView's lens switcher, the patchscope target prompt, Future Lens cells and the generation strip.
import { describe, expect, it } from "vitest";
import { viridis } from "../src/colors";
import widget from "../src/index";
import { commitColor, decodeFuture, decodeGeneration, decodeLens, futureLabel, futureTooltip, generatedTitle, LENS_OPTIONS, LensView } from "../src/lens";
import { StaticModel } from "../src/model";
import type { LensTraits } from "../src/traits";
import { f32, i32, lensData } from "./helpers";

const NO_TUNED = "No tuned lens given: train one with wb.tuned_lens(model) and pass tuned=... (or set view.tuned = tl).";
const LENSES = { logit: "", patchscope: "", tuned: NO_TUNED, future: "" };

function mount(state: Record<string, unknown>) {
  const model = new StaticModel<Record<string, unknown>>({
    _view_kind: "lens",
    status: "done",
    error: "",
    progress: 0,
    progress_text: "",
    history: [],
    code: "",
    selected: [],
    prompt: "p",
    pinned: [" Paris"],
    focus: " Paris",
    mode: "prob",
    lens: "logit",
    lenses: LENSES,
    target_prompt: "cat -> cat\n?",
    n_future: 2,
    future_method: "fixed",
    max_new_tokens: 20,
    generation: {},
    ...state,
  });
  const el = document.createElement("div");
  document.body.append(el);
  const cleanup = widget.render({ model, el });
  return { model, el, cleanup };
}

function generation(tokens: string[], commit: number[], L: number) {
  return {
    prompt: "p",
    text: tokens.join(""),
    tokens,
    commit_layer: i32([tokens.length], (i) => commit[i]),
    confident_layer: i32([tokens.length], (i) => commit[i]),
    prob: f32([L, tokens.length], () => 0.7),
    n_prompt: 3,
    n_layers: L,
    stopped_at_eos: false,
  };
}

function futureData(L: number, T: number, n: number) {
  const d = lensData(L, T, 2);
  return {
    ...d,
    lens: "future" as const,
    entropy: f32([L, T], () => Number.NaN),
    future: { ids: i32([L, T, n], (i) => i % 3), probs: f32([L, T, n], () => 0.25), accuracy: f32([L, n], (i) => i / (L * n)), n, method: "fixed" },
  };
}

describe("the lens switcher", () => {
  it("offers the four lenses; one that cannot run is disabled and says how to get it", () => {
    expect(LENS_OPTIONS.map(([v]) => v)).toEqual(["logit", "tuned", "patchscope", "future"]);
    const { el, model } = mount({ data: { ...lensData(3, 4, 2), lens: "logit" } });
    const sel = el.querySelector("[data-testid=wb-lens]") as HTMLSelectElement;
    const tuned = Array.from(sel.options).find((o) => o.value === "tuned")!;
    expect(tuned.disabled).toBe(true);
    expect(tuned.title).toContain("wb.tuned_lens(model)");
    expect(tuned.title).toContain("tuned=");
    expect(Array.from(sel.options).find((o) => o.value === "patchscope")!.disabled).toBe(false);
    sel.value = "patchscope";
    sel.dispatchEvent(new Event("change"));
    expect(model.get("lens")).toBe("patchscope");
    // a tuned lens given later enables the option
    model.set("lenses", { ...LENSES, tuned: "" });
    expect(Array.from((el.querySelector("[data-testid=wb-lens]") as HTMLSelectElement).options).find((o) => o.value === "tuned")!.disabled).toBe(false);
  });

  it("patchscope: the target prompt is editable (Enter runs, Shift+Enter does not) and titles the export", () => {
    const { el, model } = mount({ lens: "patchscope", data: { ...lensData(3, 4, 2), lens: "patchscope", target_prompt: "cat -> cat\n?", prompt: "p" } });
    const box = el.querySelector("[data-testid=wb-ps-controls]") as HTMLElement;
    expect(box.hidden).toBe(false);
    expect((el.querySelector("[data-testid=wb-future-controls]") as HTMLElement).hidden).toBe(true);
    const ta = el.querySelector("[data-testid=wb-target-prompt]") as HTMLTextAreaElement;
    expect(ta.value).toBe("cat -> cat\n?");
    ta.value = "a -> a\n?";
    ta.dispatchEvent(new KeyboardEvent("keydown", { key: "Enter", shiftKey: true }));
    expect(model.get("target_prompt")).toBe("cat -> cat\n?");
    ta.dispatchEvent(new KeyboardEvent("keydown", { key: "Enter" }));
    expect(model.get("target_prompt")).toBe("a -> a\n?");
    expect(el.querySelector("[data-testid=wb-title]")!.textContent).toBe("Patchscope");
    // KL has no meaning here: the colour option is disabled, with the reason
    const kl = Array.from((el.querySelector("[data-testid=wb-mode]") as HTMLSelectElement).options).find((o) => o.value === "kl")!;
    expect(kl.disabled).toBe(true);
    expect(kl.title).toContain("target prompt");
    // the kernel puts the box back (a bad target prompt): the box follows
    model.set("target_prompt", "cat -> cat\n?");
    expect(ta.value).toBe("cat -> cat\n?");
    expect(el.querySelector("[data-testid=wb-legend-label]")!.textContent).toContain("target prompt says next");
  });

  it("the view's export title names the lens and the target prompt", () => {
    const model = new StaticModel<LensTraits>({
      _view_kind: "lens",
      prompt: "p",
      data: { ...lensData(2, 2, 2), lens: "patchscope", target_prompt: "x\n?", prompt: "shown" },
      lens: "patchscope",
      lenses: LENSES,
      pinned: [],
      focus: "",
      mode: "prob",
    } as never);
    const el = document.createElement("div");
    const v = new LensView(model, el);
    expect(v.title()).toContain("Patchscope");
    expect(v.title()).toContain('target "x↵?"');
    expect(v.title()).toContain('prompt "shown"');
  });
});

describe("Future Lens cells", () => {
  it("show the next n tokens in the cell label and the hover; n_future is a control", () => {
    const raw = futureData(3, 4, 2);
    const d = decodeLens(raw)!;
    const f = decodeFuture(raw.future)!;
    expect(f.n).toBe(2);
    // ids 0,1 -> " Paris", " Rome": visible text joined
    expect(futureLabel(d, f)(0, 0)).toBe("␣Paris·␣Rome");
    const tip = futureTooltip(d, f)(0, 0);
    expect(tip[1]).toBe("t+1: ␣Paris  0.250");
    expect(tip[2]).toBe("t+2: ␣Rome  0.250");
    const { el, model } = mount({ lens: "future", data: raw, n_future: 2 });
    const controls = el.querySelector("[data-testid=wb-future-controls]") as HTMLElement;
    expect(controls.hidden).toBe(false);
    const n = el.querySelector("[data-testid=wb-n-future]") as HTMLInputElement;
    expect(n.value).toBe("2");
    n.value = "4";
    n.dispatchEvent(new Event("change"));
    expect(model.get("n_future")).toBe(4);
    // wider cells for the longer labels, probability colour only, the accuracy chart, no pin chart
    const hm = el.querySelector("[data-testid=wb-heatmap][data-role=lens]") as HTMLCanvasElement;
    expect(Number.parseFloat(hm.style.width)).toBe(4 * (34 + 26 * 2));
    const modes = Array.from((el.querySelector("[data-testid=wb-mode]") as HTMLSelectElement).options);
    expect(modes.filter((o) => !o.disabled).map((o) => o.value)).toEqual(["prob"]);
    expect(el.textContent).toContain("Future Lens accuracy by layer");
    expect(el.querySelector("[data-testid=wb-linechart] polyline")).not.toBeNull();
    expect(el.querySelector("[data-testid=wb-title]")!.textContent).toBe("Future Lens");
  });
});

describe("the generation strip", () => {
  it("colours each generated token by its commit layer, early to late, with a legend; text stays text", () => {
    const L = 5;
    const toks = [" Paris", "<img src=x onerror=alert(1)>", "\n", " end"];
    const { el, model } = mount({ data: { ...lensData(L, 7, 2), lens: "logit", generated_from: 3 }, generation: generation(toks, [0, 4, -1, 2], L) });
    const spans = Array.from(el.querySelectorAll("[data-testid=wb-gen-token]")) as HTMLElement[];
    expect(spans.map((s) => s.textContent)).toEqual(["␣Paris", "<img␣src=x␣onerror=alert(1)>", "↵", "␣end"]);
    expect(el.querySelectorAll("[data-testid=wb-generation] img").length).toBe(0);
    expect(spans.map((s) => s.getAttribute("data-commit"))).toEqual(["0", "4", "-1", "2"]);
    const [r0, g0, b0] = viridis(0);
    const [r4, g4, b4] = viridis(1);
    expect(spans[0].style.background.replace(/\s/g, "")).toBe(`rgb(${r0},${g0},${b0})`);
    expect(spans[1].style.background.replace(/\s/g, "")).toBe(`rgb(${r4},${g4},${b4})`);
    expect(spans[2].classList.contains("wb-gen-none")).toBe(true);
    expect(spans[0].title).toContain("top-1 from layer 0 on");
    expect(spans[2].title).toContain("no commit layer");
    const legend = el.querySelector("[data-testid=wb-gen-legend]")!;
    expect(legend.textContent).toContain("early L0");
    expect(legend.textContent).toContain(`late L${L - 1}`);
    // the grid covers the generated positions; a click on a generated token selects the cell that predicts it
    expect(el.querySelector("[data-testid=wb-heatmap][data-role=lens]")!.getAttribute("data-cols")).toBe("7");
    spans[3].click();
    expect(el.querySelector("[data-testid=wb-heatmap][data-role=lens]")!.getAttribute("data-selected")).toBe("2,5");
    // the generate button sends one request with the count
    (el.querySelector("[data-testid=wb-max-new]") as HTMLInputElement).value = "7";
    (el.querySelector("[data-testid=wb-generate]") as HTMLButtonElement).click();
    expect(model.sent.at(-1)!.content).toMatchObject({ kind: "generate", max_new_tokens: 7 });
    expect(el.querySelector("[data-testid=wb-gen-note]")).toBeNull();
  });

  it("under another lens the strip stays and says where the generated positions are", () => {
    const { el } = mount({ lens: "patchscope", data: { ...lensData(3, 3, 2), lens: "patchscope", target_prompt: "?" }, generation: generation([" a"], [1], 3) });
    expect(el.querySelectorAll("[data-testid=wb-gen-token]").length).toBe(1);
    expect(el.querySelector("[data-testid=wb-gen-note]")!.textContent).toContain("switch the lens to logit");
  });

  it("exports the strip with the grid (SVG text, PNG figure list)", () => {
    const model = new StaticModel<LensTraits>({
      _view_kind: "lens",
      prompt: "p",
      data: { ...lensData(3, 4, 2), lens: "logit", generated_from: 3 },
      generation: generation([" Paris", "!"], [1, 2], 3),
      lens: "logit",
      lenses: LENSES,
      pinned: [" Paris"],
      focus: " Paris",
      mode: "prob",
    } as never);
    const el = document.createElement("div");
    document.body.append(el);
    const v = new LensView(model, el);
    const figs = v.figures();
    expect(figs.length).toBe(3); // grid, generation strip, pinned chart
    const svg = figs[1].svg({ bg: [255, 255, 255], fg: [0, 0, 0], border: [200, 200, 200], dark: false, font: "sans-serif" });
    expect(svg.textContent).toContain("␣Paris");
    expect(svg.textContent).toContain("commit layer");
  });

  it("decodes and colours robustly", () => {
    expect(commitColor(-1, 30)).toBeNull();
    expect(commitColor(0, 30)).toEqual(viridis(0));
    expect(commitColor(29, 30)).toEqual(viridis(1));
    expect(decodeGeneration({})).toBeNull();
    expect(decodeGeneration({ tokens: ["a", "b"], commit_layer: i32([1], () => 0) })).toBeNull(); // lengths disagree
    const g = decodeGeneration(generation([" x"], [3], 4))!;
    expect(generatedTitle(g, 0)).toContain("p at the last layer 0.700");
  });
});

describe("typing in the view's fields", () => {
  it("keys typed in a text box do not reach the notebook (Shift+Enter is a line break, not run-cell)", () => {
    const { el } = mount({ lens: "patchscope", data: { ...lensData(2, 2, 2), lens: "patchscope", target_prompt: "?" } });
    const seen: string[] = [];
    const outer = (e: Event) => seen.push((e as KeyboardEvent).key);
    document.body.addEventListener("keydown", outer);
    const ta = el.querySelector("[data-testid=wb-target-prompt]") as HTMLTextAreaElement;
    ta.dispatchEvent(new KeyboardEvent("keydown", { key: "Enter", shiftKey: true, bubbles: true }));
    (el.querySelector("[data-testid=wb-prompt]") as HTMLTextAreaElement).dispatchEvent(new KeyboardEvent("keydown", { key: "x", bubbles: true }));
    // a key on the heatmap (arrow keys move the selection) is not a text field's
    (el.querySelector("[data-testid=wb-heatmap][data-role=lens]") as HTMLElement).dispatchEvent(new KeyboardEvent("keydown", { key: "q", bubbles: true }));
    document.body.removeEventListener("keydown", outer);
    expect(seen).toEqual(["q"]);
  });
});
