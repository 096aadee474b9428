// Token strings with visible markers for whitespace, and the token strip.
import { h } from "./dom";

const MARKS: Record<string, string> = { " ": "\u2423", "\r": "\u240d", "\n": "\u21b5", "\t": "\u2192" };

/** One character as the views show it: whitespace marked, other control characters as their Unicode control
 * pictures (␀ .. ␟, ␡) or \x80 .. \x9f; everything else as it is. */
function visibleChar(ch: string): string {
  const mark = MARKS[ch];
  if (mark) return mark;
  const code = ch.charCodeAt(0);
  if (code < 0x20) return String.fromCharCode(0x2400 + code);
  if (code === 0x7f) return "\u2421";
  if (code >= 0x80 && code < 0xa0) return `\\x${code.toString(16)}`;
  return ch;
}

/** Make whitespace and control characters visible: space -> ␣, newline -> ↵, tab -> →, CR -> ␍, empty -> ∅
 * (the twin of `workbench.figures.theme.visible_token`). */
export function visibleToken(tok: string): string {
  if (tok === "") return "∅";
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what this makes visible
  return tok.replace(/[\x00-\x20\x7f-\x9f]/g, visibleChar);
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
