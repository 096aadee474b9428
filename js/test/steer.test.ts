import { describe, expect, it } from "vitest";
import widget from "../src/index";
import { StaticModel } from "../src/model";
import { divergence, parseScales, runFromTrait, tokenStates, wrapSegments } from "../src/steer";
import { f32, i32 } from "./helpers";

const HOSTILE = "<img src=x onerror=alert(1)>";

function mount(state: Record<string, unknown>) {
  const model = new StaticModel<Record<string, unknown>>({
    _view_kind: "steer",
    status: "done",
    error: "",
    progress: 0,
    progress_text: "",
    history: [],
    code: "",
    selected: [],
    prompt: `I went to the park ${HOSTILE}`,
    layer: 6,
    scale: 1,
    positions: "all",
    max_new_tokens: 4,
    sweep: [],
    n_layers: 30,
    scale_min: -5,
    scale_max: 5,
    scale_step: 0.05,
    vector_info: { kind: "pair", label: "contrastive pair", positive: "The food was delicious", negative: "The food was", heads: [], d_model: 576 },
    norms: { resid: f32([30], () => 10), vector: f32([30], () => 4) },
    run: {},
    ...state,
  });
  const el = document.createElement("div");
  document.body.append(el);
  const cleanup = widget.render({ model, el });
  return { model, el, cleanup };
}

function step(run: string, s: number, ids: (number | null)[], pieces: string[]) {
  const probs = new Float32Array(ids.map(() => 0.5));
  return [{ kind: "stream", event: "step", run, step: s, ids, pieces, probs: { shape: [ids.length], dtype: "float32" } }, [new DataView(probs.buffer)]];
}

describe("SteerView", () => {
  it("streams rows token by token, marks the divergence, and keeps model text as text", () => {
    const { el, model, cleanup } = mount({});
    expect(el.querySelector("[data-testid=wb-steer-push]")!.textContent).toBe("0.40× the residual stream");
    expect(el.querySelector("[data-testid=wb-steer-vector]")!.textContent).toContain('"The food was delicious"');
    model.emit(
      "msg:custom",
      {
        kind: "stream",
        event: "start",
        run: "r1",
        live: true,
        prompt: model.get("prompt"),
        settings: { layer: 6, positions: "all" },
        rows: [
          { label: "unsteered", scale: null },
          { label: "scale 1", scale: 1 },
        ],
      },
      [],
    );
    model.emit("msg:custom", ...step("r1", 0, [5, 5], [" we", " we"]));
    model.emit("msg:custom", ...step("r1", 1, [6, 9], [" walked", ` ${HOSTILE}`]));
    const steered = el.querySelector("[data-testid=wb-steer-steered]")!;
    const toks = [...steered.querySelectorAll("[data-testid=wb-steer-tok]")];
    expect(toks.map((t) => t.textContent)).toEqual([" we", ` ${HOSTILE}`]);
    expect(toks.map((t) => t.getAttribute("data-state"))).toEqual(["same", "diverge"]);
    expect(steered.getAttribute("data-diverges-at")).toBe("1");
    const base = [...el.querySelectorAll("[data-testid=wb-steer-unsteered] [data-testid=wb-steer-tok]")];
    expect(base.map((t) => t.getAttribute("data-state"))).toEqual(["same", "diverge"]);
    model.emit("msg:custom", ...step("r1", 2, [7, null], [" home", ""]));
    expect(steered.querySelectorAll("[data-testid=wb-steer-tok]").length).toBe(2);
    expect(el.querySelectorAll("img").length).toBe(0);
    expect(el.querySelector("[data-testid=wb-steer-note]")!.textContent).toContain("token 1");
    // a step of another run is ignored
    model.emit("msg:custom", ...step("old", 3, [1, 1], ["x", "x"]));
    expect(el.querySelectorAll("[data-testid=wb-steer-unsteered] [data-testid=wb-steer-tok]").length).toBe(3);
    cleanup();
  });

  it("draws a finished run from the trait (sweep rows, tooltips with alternatives) and exports it", () => {
    const row = (label: string, scale: number | null, ids: number[], pieces: string[]) => ({
      label,
      scale,
      ids: i32([ids.length], (i) => ids[i]),
      pieces,
      probs: f32([ids.length], () => 0.25),
      relative: scale === null ? null : 0.4 * scale,
      diverges_at: null,
      top_ids: i32([ids.length, 2], (i) => (i % 2 ? 9 : ids[Math.floor(i / 2)])),
      top_probs: f32([ids.length, 2], (i) => (i % 2 ? 0.1 : 0.25)),
    });
    const run = {
      id: "r2",
      state: "done",
      live: true,
      prompt: "Hi",
      settings: { prompt: "Hi", layer: 3, scale: 1, positions: "last", max_new_tokens: 2, sweep: [2] },
      rows: [row("unsteered", null, [1, 2], [" a", " b"]), row("scale 1", 1, [1, 3], [" a", " c"]), row("scale 2", 2, [4, 3], [" d", " c"])],
      id_text: { "1": " a", "2": " b", "3": " c", "4": " d", "9": HOSTILE },
      steps: 2,
      ms_first: 123,
    };
    const { el, cleanup } = mount({ run });
    const rows = el.querySelectorAll("[data-testid=wb-steer-sweep-row]");
    expect(rows.length).toBe(1);
    expect(rows[0].getAttribute("data-diverges-at")).toBe("0");
    const tok = el.querySelector("[data-testid=wb-steer-steered] [data-i='1']")!;
    expect(tok.getAttribute("data-state")).toBe("diverge");
    expect(tok.getAttribute("title")).toContain("p = 0.250");
    expect(tok.getAttribute("title")).toContain("<img␣src=x␣onerror=alert(1)> 0.10");
    expect(el.querySelector("[data-testid=wb-steer-note]")!.textContent).toContain("first token 123 ms");
    expect(el.querySelector("[data-testid=wb-steer-steered] [data-testid=wb-steer-head]")!.textContent).toContain("last position only");
    expect(el.querySelectorAll("img").length).toBe(0);
    cleanup();
  });

  it("refuses a bad sweep in the view, and Generate sends the sliders' settings first", () => {
    const { el, model, cleanup } = mount({});
    const sweep = el.querySelector("[data-testid=wb-steer-sweep]") as HTMLInputElement;
    sweep.value = "1, two";
    sweep.dispatchEvent(new Event("change"));
    const err = el.querySelector("[data-testid=wb-steer-input-error]") as HTMLElement;
    expect(err.hidden).toBe(false);
    expect(err.textContent).toContain('"two" is not a number');
    (el.querySelector("[data-testid=wb-steer-generate]") as HTMLButtonElement).click();
    expect(model.sent.filter((m) => (m.content as { kind: string }).kind === "generate").length).toBe(0);
    const slider = el.querySelector("[data-testid=wb-steer-scale]") as HTMLInputElement;
    slider.value = "2.5";
    slider.dispatchEvent(new Event("input"));
    expect(el.querySelector("[data-testid=wb-steer-push]")!.textContent).toBe("1.00× the residual stream");
    slider.dispatchEvent(new Event("change"));
    expect(model.get("scale")).toBe(2.5);
    sweep.value = "0.5, 2"; // typed, not yet applied: Generate applies it
    (el.querySelector("[data-testid=wb-steer-generate]") as HTMLButtonElement).click();
    expect(model.get("sweep")).toEqual([0.5, 2]);
    expect(model.sent.at(-1)!.content).toMatchObject({ kind: "generate" });
    expect("prompt" in (model.sent.at(-1)!.content as object)).toBe(false);
    const box = el.querySelector("[data-testid=wb-prompt]") as HTMLTextAreaElement;
    box.value = "A new prompt";
    box.dispatchEvent(new KeyboardEvent("keydown", { key: "Enter", bubbles: true }));
    expect(model.sent.at(-1)!.content).toMatchObject({ kind: "generate", prompt: "A new prompt" });
    cleanup();
  });

  it("helpers: divergence, states, scale parsing, wrapping", () => {
    expect(divergence([1, 2, 3], [1, 2, 4], false)).toBe(2);
    expect(divergence([1, 2], [1, 2, 4], false)).toBe(null);
    expect(divergence([1, 2], [1, 2, 4], true)).toBe(2);
    expect(tokenStates(4, 1)).toEqual(["same", "diverge", "after", "after"]);
    expect(parseScales("0.5, -2 4").scales).toEqual([0.5, -2, 4]);
    expect(parseScales("1,2,3,4,5,6,7,8,9").error).toContain("at most 8");
    const lines = wrapSegments([{ text: "aaaa bbbb\ncc", state: "same" }], 40, (t) => t.length * 10);
    expect(lines.map((l) => l.map((s) => s.text).join(""))).toEqual(["aaaa", "bbbb↵", "cc"]);
    const long = wrapSegments(
      [
        { text: "abcdefghij", state: "same" },
        { text: " k", state: "after" },
      ],
      40,
      (t) => t.length * 10,
    );
    expect(long.map((l) => l.map((s) => s.text).join(""))).toEqual(["abcd", "efgh", "ij k"]);
    expect(runFromTrait({})).toBe(null);
  });
});
