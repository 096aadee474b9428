import { describe, expect, it } from "vitest";
import { at, finiteRange, unpack } from "../src/arrays";
import type { DType } from "../src/arrays";

describe("unpack", () => {
  it("reads a DataView", () => {
    const a = new Float32Array([1, 2, 3, 4, 5, 6]);
    const u = unpack({ shape: [2, 3], dtype: "float32", data: new DataView(a.buffer) });
    expect(Array.from(u.data)).toEqual([1, 2, 3, 4, 5, 6]);
    expect(at(u, 1, 2)).toBe(6);
  });
  it("reads an unaligned Uint8Array (copies)", () => {
    const raw = new Uint8Array(4 * 3 + 1);
    new DataView(raw.buffer).setInt32(1, 7, true);
    new DataView(raw.buffer).setInt32(5, -2, true);
    new DataView(raw.buffer).setInt32(9, 42, true);
    const u = unpack({ shape: [3], dtype: "int32", data: raw.subarray(1) });
    expect(Array.from(u.data)).toEqual([7, -2, 42]);
  });
  it("reads an ArrayBuffer and any typed array view", () => {
    const a = new Float32Array([0.5, NaN]);
    expect(unpack({ shape: [2], dtype: "float32", data: a.buffer }).data[0]).toBe(0.5);
    expect(Number.isNaN(unpack({ shape: [2], dtype: "float32", data: a }).data[1])).toBe(true);
  });
  it("rejects a wrong size, a JSON list and an unknown dtype", () => {
    expect(() => unpack({ shape: [3], dtype: "float32", data: new Float32Array(2) })).toThrow(/needs 12 bytes/);
    expect(() => unpack({ shape: [1], dtype: "float32", data: [1] })).toThrow(/not binary/);
    expect(() => unpack({ shape: [1], dtype: "float64" as unknown as DType, data: new Float32Array(2) })).toThrow(/dtype/);
  });
  it("finds the finite range", () => {
    expect(finiteRange([NaN, 2, -1, Infinity])).toEqual([-1, 2]);
    expect(finiteRange([NaN])).toEqual([0, 1]);
  });
});
