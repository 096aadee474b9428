export function f32(shape: number[], fill: (i: number) => number) {
  const n = shape.reduce((a, b) => a * b, 1);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = fill(i);
  return { shape, dtype: "float32" as const, data: new DataView(a.buffer) };
}
export function i32(shape: number[], fill: (i: number) => number) {
  const n = shape.reduce((a, b) => a * b, 1);
  const a = new Int32Array(n);
  for (let i = 0; i < n; i++) a[i] = fill(i);
  // Colab delivers Uint8Array views: use one here
  return { shape, dtype: "int32" as const, data: new Uint8Array(a.buffer) };
}
export function lensData(L: number, T: number, k: number, tokens?: string[]) {
  return {
    tokens: tokens ?? Array.from({ length: T }, (_, i) => ` t${i}`),
    top_ids: i32([L, T, k], (i) => i % 7),
    top_probs: f32([L, T, k], (i) => (i % k === 0 ? 0.6 : 0.1)),
    entropy: f32([L, T], (i) => (i % 5) / 5),
    kl: f32([L, T], () => 0.5),
    id_text: { "0": " Paris", "1": " Rome", "2": "<img src=x onerror=alert(1)>", "3": "\n", "4": " a", "5": "b", "6": "c" },
    pinned: { " Paris": { prob: f32([L, T], (i) => i / (L * T)), rank: i32([L, T], (i) => i % 10) } },
  };
}
/** happy-dom has no layout: give an element a fixed box. */
export function setBox(el: Element, x: number, y: number, w: number, h: number) {
  (el as HTMLElement).getBoundingClientRect = () => ({ x, y, left: x, top: y, width: w, height: h, right: x + w, bottom: y + h, toJSON() {} }) as DOMRect;
}
