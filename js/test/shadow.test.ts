// marimo renders anywidgets inside a shadow root: the views' styles must reach them there.
import { describe, expect, it } from "vitest";
import widget, { StaticModel } from "../src/index";
import { lensData } from "./helpers";

describe("a view in a shadow root (marimo)", () => {
  it("gets the styles inside the shadow root, once, and in the document", () => {
    const host = document.createElement("div");
    document.body.append(host);
    const shadow = host.attachShadow({ mode: "open" });
    const state = {
      _view_kind: "lens",
      status: "done",
      error: "",
      progress: 0,
      progress_text: "",
      history: [],
      code: "",
      selected: [],
      prompt: "p",
      data: lensData(2, 3, 2),
      pinned: [],
      focus: "",
      mode: "prob",
    };
    for (let i = 0; i < 2; i++) {
      const el = document.createElement("div");
      shadow.append(el);
      widget.render({ model: new StaticModel<Record<string, unknown>>(state), el });
    }
    expect(shadow.querySelectorAll("style#wb-styles").length).toBe(1);
    expect(document.querySelectorAll("style#wb-styles").length).toBe(1);
    expect(shadow.querySelectorAll("[data-testid=wb-view]").length).toBe(2);
  });
});
