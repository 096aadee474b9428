// Token strings with visible markers for whitespace, and the token strip.
import { h } from "./dom";

/** Make whitespace visible: space -> ␣ (U+2423), newline -> ↵, tab -> →, CR -> ␍. */
export function visibleToken(tok: string): string {
  if (tok === "") return "∅";
  return tok.replace(/ /g, "\u2423").replace(/\r/g, "\u240d").replace(/\n/g, "\u21b5").replace(/\t/g, "\u2192");
}

export interface StripOptions {
  label?: string;
  selected?: number | null;
  onClick?: (pos: number) => void;
  onHover?: (pos: number | null) => void;
  testid?: string;
  draggable?: boolean;
}

/** A row of tokens; every token has data-testid="wb-token" and data-pos. */
export function tokenStrip(tokens: string[], opts: StripOptions = {}): HTMLElement {
  const strip = h("div", { class: "wb-strip", "data-testid": opts.testid ?? "wb-tokens" });
  if (opts.label) strip.append(h("span", { class: "wb-strip-label" }, opts.label));
  tokens.forEach((t, i) => {
    const span = h(
      "span",
      {
        class: `wb-token${opts.selected === i ? " wb-selected" : ""}`,
        "data-testid": "wb-token",
        "data-pos": i,
        title: `position ${i}: ${JSON.stringify(t)}`,
      },
      visibleToken(t),
    );
    if (opts.onClick) span.addEventListener("click", () => opts.onClick!(i));
    if (opts.onHover) {
      span.addEventListener("mouseenter", () => opts.onHover!(i));
      span.addEventListener("mouseleave", () => opts.onHover!(null));
    }
    strip.append(span);
  });
  return strip;
}
