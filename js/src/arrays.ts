// Binary arrays from the kernel: {shape, dtype, data} where data may be a DataView, any typed-array
// view (Colab delivers Uint8Array), or an ArrayBuffer. Never JSON float lists.

export type DType = "float32" | "int32";
export interface Packed {
  shape: number[];
  dtype: DType;
  data: unknown;
}
export interface NDArray<T extends Float32Array | Int32Array = Float32Array | Int32Array> {
  shape: number[];
  dtype: DType;
  data: T;
}

function bytesOf(data: unknown): Uint8Array {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (typeof SharedArrayBuffer !== "undefined" && data instanceof SharedArrayBuffer) return new Uint8Array(data);
  throw new TypeError("array data is not binary (expected DataView, typed array or ArrayBuffer)");
}

/** Decode a packed array. Copies only when the view is not 4-byte aligned. */
export function unpack(p: Packed): NDArray {
  if (!p || !Array.isArray(p.shape)) throw new TypeError("not a packed array: missing shape");
  if (p.dtype !== "float32" && p.dtype !== "int32") throw new TypeError(`unsupported dtype ${String(p.dtype)}`);
  const bytes = bytesOf(p.data);
  const n = p.shape.reduce((a, b) => a * b, 1);
  if (bytes.byteLength !== n * 4) {
    throw new RangeError(`array of shape [${p.shape}] needs ${n * 4} bytes, got ${bytes.byteLength}`);
  }
  let buf = bytes.buffer;
  let off = bytes.byteOffset;
  if (off % 4 !== 0) {
    const copy = new Uint8Array(bytes.byteLength);
    copy.set(bytes);
    buf = copy.buffer;
    off = 0;
  }
  if (p.dtype === "float32") return { shape: p.shape, dtype: "float32", data: new Float32Array(buf, off, n) };
  if (p.dtype === "int32") return { shape: p.shape, dtype: "int32", data: new Int32Array(buf, off, n) };
  throw new TypeError(`unsupported dtype ${String(p.dtype)}`);
}

export function maybeUnpack(p: unknown): NDArray | null {
  if (!p || typeof p !== "object" || !("shape" in p)) return null;
  return unpack(p as Packed);
}

/** Index helper for C-ordered arrays. */
export function at(a: NDArray, ...idx: number[]): number {
  let flat = 0;
  for (let i = 0; i < idx.length; i++) flat = flat * a.shape[i] + idx[i];
  for (let i = idx.length; i < a.shape.length; i++) flat *= a.shape[i];
  return a.data[flat];
}

export function finiteRange(data: ArrayLike<number>): [number, number] {
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    if (Number.isFinite(v)) {
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
  }
  if (lo === Infinity) return [0, 1];
  if (lo === hi) return [lo, lo + 1];
  return [lo, hi];
}
