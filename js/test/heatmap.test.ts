import { describe, expect, it, vi } from "vitest";
import { Heatmap } from "../src/heatmap";
import { setBox } from "./helpers";

function make(rows = 3, cols = 4) {
  const hm = new Heatmap({ rows, cols, values: new Float32Array(rows * cols).map((_, i) => i), color: () => [1, 2, 3], tooltip: (r, c) => [`cell ${r},${c}`] });
  document.body.append(hm.el);
  hm.draw();
  setBox(hm.canvas, 100, 50, cols * 10, rows * 10);
  return hm;
}

describe("Heatmap", () => {
  it("exposes rows, cols and a test id", () => {
    const hm = make();
    expect(hm.canvas.getAttribute("data-testid")).toBe("wb-heatmap");
    expect(hm.canvas.getAttribute("data-rows")).toBe("3");
    expect(hm.canvas.getAttribute("data-cols")).toBe("4");
    expect(hm.canvas.hasAttribute("data-selected")).toBe(false);
  });
  it("a click at the centre of (row, col) selects and applies it", () => {
    const hm = make();
    const apply = vi.fn();
    hm.onApply = apply;
    hm.canvas.dispatchEvent(new MouseEvent("click", { clientX: 100 + 2.5 * 10, clientY: 50 + 1.5 * 10, bubbles: true }));
    expect(hm.canvas.getAttribute("data-selected")).toBe("1,2");
    expect(apply).toHaveBeenCalledWith(1, 2);
  });
  it("arrows move the selection, Enter applies", () => {
    const hm = make();
    const apply = vi.fn();
    hm.onApply = apply;
    hm.select(1, 1, false);
    const key = (k: string) => hm.canvas.dispatchEvent(new KeyboardEvent("keydown", { key: k, bubbles: true }));
    key("ArrowRight");
    key("ArrowDown");
    key("ArrowDown"); // clamped at the last row
    expect(hm.canvas.getAttribute("data-selected")).toBe("2,2");
    expect(apply).not.toHaveBeenCalled();
    key("Enter");
    expect(apply).toHaveBeenCalledWith(2, 2);
  });
  it("hover shows a tooltip as text", () => {
    const hm = make();
    hm.canvas.dispatchEvent(new MouseEvent("mousemove", { clientX: 105, clientY: 55, bubbles: true }));
    const tip = hm.el.querySelector("[data-testid=wb-tooltip]") as HTMLElement;
    expect(tip.hidden).toBe(false);
    expect(tip.textContent).toBe("cell 0,0");
    hm.canvas.dispatchEvent(new MouseEvent("mouseleave"));
    expect(tip.hidden).toBe(true);
  });
  it("clicks outside the grid do nothing", () => {
    const hm = make();
    hm.canvas.dispatchEvent(new MouseEvent("click", { clientX: 10, clientY: 10, bubbles: true }));
    expect(hm.canvas.hasAttribute("data-selected")).toBe(false);
  });
  it("builds an SVG of the cells", () => {
    const hm = make(2, 2);
    const svg = hm.toSVG("t");
    expect(svg.querySelectorAll("rect").length).toBe(1 + 4);
  });
});
