// The custom messages between a view and its kernel. One-off commands only: state lives in traits.
// tests/test_widget_contract.py reads these lists and checks them against what workbench/widgets/*.py sends and
// handles, so a message nobody reads cannot come back.
import type { HistoryEntry } from "./traits";

/** Every kind the kernel sends (WorkbenchWidget.send in widgets/base.py); View.onMessage handles each one. */
export const KERNEL_MESSAGES = ["history", "history_add", "export", "html", "stream"] as const;
export type KernelKind = (typeof KERNEL_MESSAGES)[number];

/** The content of each kernel message (binary buffers travel beside it). */
export interface KernelMessage {
  history: { kind: "history"; entries: HistoryEntry[]; max?: number };
  history_add: { kind: "history_add"; entry: HistoryEntry; max?: number };
  /** view.save_png / save_svg: answer with an export_result carrying the bytes. */
  export: { kind: "export"; format: string; id: string };
  /** The standalone page the HTML button asked for, as one buffer. */
  html: { kind: "html"; id?: string };
  /** A run streaming its output (SteerView): "start", then one "step" per generated token; the finished run
   *  lands in a trait. A step's probabilities travel as one float32 buffer. */
  stream: StreamStart | StreamStep;
}

export interface StreamStart {
  kind: "stream";
  event: "start";
  run: string;
  live: boolean;
  prompt: string;
  settings: Record<string, unknown>;
  rows: { label: string; scale: number | null }[];
}

export interface StreamStep {
  kind: "stream";
  event: "step";
  run: string;
  step: number;
  /** Each row's new token (null once the row has stopped). */
  ids: (number | null)[];
  pieces: string[];
  probs: { shape: number[]; dtype: "float32" };
}

/** The requests each view sends: the keys of its Python `_handlers`. */
export const VIEW_REQUESTS = {
  common: ["cancel", "export_html", "export_result", "attached", "detached"],
  lens: ["generate"],
  patch: ["patch", "ablate", "sweep", "apply_set"],
  attention: ["head"],
  dataset: [],
  tracing: ["restore"],
  steer: ["generate"],
  function_vector: ["head", "toggle", "steer", "recompute"],
  circuit: ["node", "edge", "measure"],
} as const;

export type CommonRequest = (typeof VIEW_REQUESTS.common)[number];
export type PatchRequest = (typeof VIEW_REQUESTS.patch)[number];
export type AttentionRequest = (typeof VIEW_REQUESTS.attention)[number];
export type TracingRequest = (typeof VIEW_REQUESTS.tracing)[number];
export type LensRequest = (typeof VIEW_REQUESTS.lens)[number];
export type SteerRequest = (typeof VIEW_REQUESTS.steer)[number];
export type FunctionVectorRequest = (typeof VIEW_REQUESTS.function_vector)[number];
export type CircuitRequest = (typeof VIEW_REQUESTS.circuit)[number];

/** A kernel message of a known kind, or null (anything else is ignored). */
export function kernelMessage(content: unknown): KernelMessage[KernelKind] | null {
  if (!content || typeof content !== "object") return null;
  const kind = (content as { kind?: unknown }).kind;
  return typeof kind === "string" && (KERNEL_MESSAGES as readonly string[]).includes(kind) ? (content as KernelMessage[KernelKind]) : null;
}
