import { describe, expect, it } from "vitest";
import { tokenStrip, visibleToken } from "../src/tokens";
import { h } from "../src/dom";
import { causalCone } from "../src/patch";
import { diverging, parseColor, sequential, type Theme } from "../src/colors";

const XSS = `A <img src=x onerror=alert(1)> <script>alert(2)</script> "dq" 'sq'`;

describe("tokens", () => {
  it("marks whitespace", () => {
    expect(visibleToken(" Paris")).toBe("\u2423Paris");
    expect(visibleToken("a\nb\tc")).toBe("a\u21b5b\u2192c");
    expect(visibleToken("")).toBe("∅");
  });
  it("renders hostile text as text with test ids and positions", () => {
    const strip = tokenStrip(["<img src=x onerror=alert(1)>", "<script>alert(2)</script>", XSS]);
    document.body.append(strip);
    expect(document.querySelectorAll("img").length).toBe(0);
    expect(document.querySelectorAll("script").length).toBe(0);
    const toks = strip.querySelectorAll("[data-testid=wb-token]");
    expect(toks.length).toBe(3);
    expect(toks[1].getAttribute("data-pos")).toBe("1");
    expect(toks[0].textContent).toBe("<img\u2423src=x\u2423onerror=alert(1)>");
    strip.remove();
  });
  it("h() sets text, not markup", () => {
    const el = h("div", { text: "<b>x</b>", title: XSS });
    expect(el.children.length).toBe(0);
    expect(el.textContent).toBe("<b>x</b>");
    expect(el.getAttribute("title")).toBe(XSS);
  });
});

describe("causal cone", () => {
  it("covers the patched layer and later, the patched position and later", () => {
    expect(causalCone("resid_pre", 5, 3, 30, 10)).toEqual({ r0: 5, c0: 3, r1: 29, c1: 9 });
    expect(causalCone("head", 2, null, 30, 10)).toEqual({ r0: 2, c0: 0, r1: 29, c1: 9 });
  });
});

describe("colours", () => {
  const light: Theme = { bg: [255, 255, 255], fg: [0, 0, 0], border: [200, 200, 200], dark: false, font: "x" };
  const dark: Theme = { bg: [17, 17, 17], fg: [230, 230, 230], border: [90, 90, 90], dark: true, font: "x" };
  it("blends from the theme background", () => {
    expect(sequential(light, 0, 1)(0)).toEqual([255, 255, 255]);
    expect(sequential(dark, 0, 1)(0)).toEqual([17, 17, 17]);
    const d = diverging(light, 1);
    expect(d(1)[0]).toBeGreaterThan(d(-1)[0]);
    expect(sequential(light, 0, 1)(NaN)).not.toEqual(light.bg);
  });
  it("parses css colours", () => {
    expect(parseColor("#fff", [0, 0, 0])).toEqual([255, 255, 255]);
    expect(parseColor(" rgb(1, 2, 3)", [0, 0, 0])).toEqual([1, 2, 3]);
    expect(parseColor("", [9, 9, 9])).toEqual([9, 9, 9]);
  });
});
