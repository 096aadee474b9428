// Colour scales that follow the notebook theme: they blend from the page background.
export type RGB = [number, number, number];

export function parseColor(css: string, fallback: RGB): RGB {
  const c = css.trim();
  let m = /^#([0-9a-f]{3})$/i.exec(c);
  if (m) return [0, 1, 2].map((i) => parseInt(m![1][i] + m![1][i], 16)) as RGB;
  m = /^#([0-9a-f]{6})/i.exec(c);
  if (m) return [0, 2, 4].map((i) => parseInt(m![1].slice(i, i + 2), 16)) as RGB;
  m = /^rgba?\(\s*([\d.]+)[ ,]+([\d.]+)[ ,]+([\d.]+)/i.exec(c);
  if (m) return [Number(m[1]), Number(m[2]), Number(m[3])];
  return fallback;
}

export interface Theme {
  bg: RGB;
  fg: RGB;
  border: RGB;
  dark: boolean;
  font: string;
}

export function luminance([r, g, b]: RGB): number {
  return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255;
}

export function readTheme(el: Element): Theme {
  const cs = getComputedStyle(el);
  const v = (name: string) => cs.getPropertyValue(name);
  const bg = parseColor(v("--jp-layout-color0") || v("--wb-bg"), [255, 255, 255]);
  const fg = parseColor(v("--jp-ui-font-color1") || v("--wb-fg"), luminance(bg) < 0.5 ? [230, 230, 230] : [33, 33, 33]);
  const border = parseColor(v("--jp-border-color1"), luminance(bg) < 0.5 ? [90, 90, 90] : [200, 200, 200]);
  const font = (v("--jp-ui-font-family") || "system-ui, sans-serif").trim();
  return { bg, fg, border, dark: luminance(bg) < 0.5, font };
}

function mix(a: RGB, b: RGB, t: number): RGB {
  return [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t];
}

const BLUE: RGB = [33, 102, 172];
const RED: RGB = [178, 24, 43];
const BLUE_D: RGB = [90, 160, 235];
const RED_D: RGB = [240, 90, 90];

/** Sequential scale: background (low) -> blue (high). */
export function sequential(theme: Theme, lo: number, hi: number): (v: number) => RGB {
  const top = theme.dark ? BLUE_D : BLUE;
  const span = hi - lo || 1;
  return (v) => {
    if (!Number.isFinite(v)) return mix(theme.bg, theme.border, 0.6);
    const t = Math.min(1, Math.max(0, (v - lo) / span));
    return mix(theme.bg, top, Math.sqrt(t) * 0.95);
  };
}

const ORANGE: RGB = [217, 95, 2];
const ORANGE_D: RGB = [255, 170, 70];

/** A score 0..1 as a warm tint over the background (head detector colouring; distinct from the blue patterns). */
export function warm(theme: Theme): (v: number) => RGB {
  const top = theme.dark ? ORANGE_D : ORANGE;
  return (v) => (Number.isFinite(v) ? mix(theme.bg, top, Math.min(1, Math.max(0, v))) : theme.bg);
}

/** Diverging scale centred on 0: negative blue, positive red, zero = background. */
export function diverging(theme: Theme, absMax: number): (v: number) => RGB {
  const pos = theme.dark ? RED_D : RED;
  const neg = theme.dark ? BLUE_D : BLUE;
  const m = absMax || 1;
  return (v) => {
    if (!Number.isFinite(v)) return mix(theme.bg, theme.border, 0.6);
    const t = Math.min(1, Math.abs(v) / m);
    return mix(theme.bg, v >= 0 ? pos : neg, t * 0.95);
  };
}

export function textOn(c: RGB, theme: Theme): string {
  const l = luminance(c);
  if (Math.abs(l - luminance(theme.fg)) > 0.35) return `rgb(${theme.fg.join(",")})`;
  return l > 0.5 ? "#111" : "#f4f4f4";
}

export function css(c: RGB): string {
  return `rgb(${Math.round(c[0])},${Math.round(c[1])},${Math.round(c[2])})`;
}

/** Viridis (perceptually even, readable in light and dark themes): t in 0..1, early (purple) -> late (yellow). */
const VIRIDIS: RGB[] = [
  [68, 1, 84],
  [59, 82, 139],
  [33, 145, 140],
  [94, 201, 98],
  [253, 231, 37],
];
export function viridis(t: number): RGB {
  const x = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  return mix(VIRIDIS[i], VIRIDIS[i + 1], x - i);
}

/** Black or white text, whichever reads on `c`. */
export function inkOn(c: RGB): string {
  return luminance(c) > 0.5 ? "#111" : "#fff";
}
