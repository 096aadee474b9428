// The traits of each view, one interface per Python view class, named exactly as its synced traitlets
// (workbench/widgets/*.py; tests/test_widget_contract.py checks that the names match on both sides).
import type { Packed } from "./arrays";

/** A run in the history: the kernel sends entries as messages; standalone HTML carries them in its state. */
export interface HistoryEntry {
  id: string;
  label: string;
  value?: number | null;
  clean?: number | null;
  corrupt?: number | null;
  top?: [string, number][];
  code?: string;
  args?: Record<string, unknown>;
}

/** WorkbenchWidget (widgets/base.py): status, progress, error, code and the selected cell. */
export interface BaseTraits {
  _view_kind: string;
  _standalone: boolean;
  status: string;
  error: string;
  progress: number;
  progress_text: string;
  code: string;
  selected: number[];
}

/** Not a synced trait: the run history a standalone export puts into the state (widgets/base.py standalone_html). */
export interface ExportState {
  history?: HistoryEntry[];
}

/** A LensResult as `pack_lens` sends it (top-k only). */
export interface PackedLens {
  tokens: string[];
  top_ids: Packed;
  top_probs: Packed;
  entropy: Packed;
  kl: Packed;
  id_text: Record<string, string>;
  pinned: Record<string, { prob: Packed; rank: Packed }>;
  /** LensView: the prompt of the data shown. */
  prompt?: string;
  /** PatchView's clean_lens when no lens is computed (remote models) or it failed. */
  note?: string;
  /** LensView: the lens that made the grid, and what it read with. */
  lens?: LensKind;
  target_prompt?: string;
  /** LensView, logit lens with a generation: the first generated column (the prompt's length). */
  generated_from?: number;
  /** LensView, Future Lens: each cell's predicted tokens for t+1..t+n. */
  future?: PackedFuture;
}

/** The decoders of LensView's lens switcher (widgets/lens.py LENSES). */
export type LensKind = "logit" | "tuned" | "patchscope" | "future";

/** `wb.future_lens(...)` as LensView sends it (widgets/lens.py pack_future). */
export interface PackedFuture {
  /** int32 [L, T, n]: the top-1 token for t+1..t+n at each (layer, position). */
  ids: Packed;
  /** float32 [L, T, n]: their probabilities (when the result has them). */
  probs?: Packed;
  /** float32 [L, n]: accuracy against the model's own continuation. */
  accuracy?: Packed;
  n: number;
  method: string;
}

/** `wb.generation_lens(...)` as LensView's `generation` trait (widgets/lens.py pack_generation). */
export interface GenerationState {
  prompt: string;
  text: string;
  tokens: string[];
  /** int32 [n]: the first layer from which each generated token stays top-1 (-1: never). */
  commit_layer: Packed;
  /** int32 [n]: the first layer where its probability passes 0.5 (-1: never). */
  confident_layer: Packed;
  /** float32 [L, n]: its probability at each layer, at the position that predicts it. */
  prob: Packed;
  n_prompt: number;
  n_layers: number;
  stopped_at_eos: boolean;
}

/** A Dict trait: {} until the kernel fills it. */
export type Maybe<T> = Partial<T>;

/** LensView (widgets/lens.py). */
export interface LensTraits extends BaseTraits {
  prompt: string;
  top_k: number;
  mode: string;
  pinned: string[];
  focus: string;
  data: Maybe<PackedLens>;
  hover: number[];
  /** Over a dataset ({} for one prompt). */
  dataset: Maybe<{ n: number; name: string; examples: ExampleRow[]; aligns: Record<string, string> }>;
  /** The dataset lens: the mean [L, C], every example's [N, L, C], the sem [L, C] (float32 buffers). */
  ds_lens: Maybe<DatasetLens>;
  align: string;
  /** The example shown as a single prompt, or -1: the dataset. */
  example: number;
  /** The lens switcher: which decoder reads the grid. */
  lens: LensKind;
  /** lens -> "" when it can run, else why not (the option's tooltip). */
  lenses: Partial<Record<LensKind, string>>;
  target_prompt: string;
  n_future: number;
  future_method: string;
  max_new_tokens: number;
  /** The generation lens of the prompt ({} until "generate"). */
  generation: Maybe<GenerationState>;
}

/** `wb.logit_lens(model, ds)` (a DatasetLensResult) as LensView sends it. */
export interface DatasetLens {
  values: Packed;
  per_example: Packed;
  sem: Packed;
  columns: string[];
  align: string;
  metric: string;
}

export type PatchMode = "patch" | "ablate" | "path";
/** A place in the model as the `cells` trait holds it: [site, layer, position | null, head | null] (wb.Cell). */
export type CellTuple = [string, number, number | null, number | null];
/** Path patching's receivers: the final residual stream, or cells. */
export type Receivers = "logits" | CellTuple[];

/** A site as the Site table describes it (workbench/engine/sites.py), for the picker and the grid. */
export interface SiteInfo {
  name: string;
  doc: string;
  /** null: one vector per position; "query": n_heads columns; "kv": n_kv_heads columns. */
  heads: "query" | "kv" | null;
  /** Layer rows (1 for embed). */
  layers: number;
}

export interface SweepData {
  values: Packed;
  normalized: Packed | null;
  clean: number | null;
  corrupt: number | null;
  axes: string[];
  site: string;
  mode: PatchMode;
  method: string;
  receivers: Receivers | null;
  /** Over a dataset: every kept example's grid [n, ...grid] and baselines [n], which examples (indices into
   *  the dataset, int32 [n]), the alignment and its column labels. */
  per_example?: Packed;
  clean_each?: Packed;
  corrupt_each?: Packed;
  ids?: Packed;
  align?: string;
  columns?: string[];
}

export interface PatchResult {
  label: string;
  site: string;
  layer: number | null;
  position: number | null;
  head: number | null;
  source_layer?: number | null;
  source_position?: number | null;
  /** The heatmap cell clicked (null for a set). */
  cell: [number, number] | null;
  cells: CellTuple[];
  value: number | null;
  clean: number | null;
  corrupt: number | null;
  top_tokens: string[];
  top_probs: Packed;
  lens: Maybe<PackedLens>;
  /** Why no lens is drawn (path patching, or the lens of a set failed). */
  lens_note?: string;
  compute_ms: number;
  /** Over a dataset (a click before a sweep): each kept example's value and baselines [n], and which examples. */
  per_example?: Packed;
  clean_each?: Packed;
  corrupt_each?: Packed;
  ids?: Packed;
}

/** One example of a dataset as the views show it (text: it goes into the DOM as text). */
export interface ExampleRow {
  clean: string;
  corrupt: string;
  target: string;
  foil: string;
  /** DatasetView: the clean (and corrupt) prompt's tokens. */
  tokens?: string[];
  corrupt_tokens?: string[];
}

/** Each example's clean prediction (workbench/data/predict.py) as binary arrays. */
export interface PredictionState {
  top_token: string[];
  top_prob: Packed;
  target_prob: Packed;
  /** int32 [N]: 1 when the top-1 token is the target. */
  correct: Packed;
  /** Why there are none (a remote model). */
  note?: string;
}

/** PatchView's `dataset` trait: {} for one prompt pair. */
export interface DatasetState {
  n: number;
  name: string;
  examples: ExampleRow[];
  /** align -> "" when it works for this dataset, else why not. */
  aligns: Record<string, string>;
  columns: string[];
  /** The examples the filter keeps (indices). */
  shown: number[];
  predictions: Maybe<PredictionState>;
  has_corrupt: boolean;
}

export interface WordInfo {
  text?: string;
  tokens?: string[];
  warning?: string;
  error?: string;
}

/** PatchView (widgets/patch.py). */
export interface PatchTraits extends BaseTraits {
  clean: string;
  corrupt: string;
  target: string;
  foil: string;
  site: string;
  mode: PatchMode;
  method: string;
  tokens_clean: string[];
  tokens_corrupt: string[];
  n_layers: number;
  n_heads: number;
  n_kv_heads: number;
  sites: SiteInfo[];
  cells: CellTuple[];
  receivers: Receivers;
  receiver_site: string;
  sweep: Maybe<SweepData>;
  result: Maybe<PatchResult>;
  inputs: Record<string, WordInfo>;
  clean_lens: Maybe<PackedLens>;
  dataset: Maybe<DatasetState>;
  align: string;
  filter_text: string;
  correct_only: boolean;
  /** The example shown as a single pair, or -1: the dataset. */
  example: number;
}

/** DatasetView (widgets/dataset.py). */
export interface DatasetTraits extends BaseTraits {
  dataset: Maybe<{ n: number; name: string; examples: ExampleRow[] }>;
  predictions: Maybe<PredictionState>;
  filter_text: string;
  correct_only: boolean;
  shown: number[];
}

export interface HeadPattern {
  layer: number;
  head: number;
  tokens: string[];
  data: Packed;
}

/** The chosen head detector's scores (widgets/attention.py `_send_detector`). */
export interface DetectorScores {
  /** "induction", "previous_token" or "duplicate_token". */
  name: string;
  /** float32 [L, H] in 0..1. */
  scores: Packed;
  /** The top heads, highest first: [layer, head, score]. */
  top: [number, number, number][];
  /** What the scores were measured on. */
  source: string;
}

/** AttentionView (widgets/attention.py). */
export interface AttentionTraits extends BaseTraits {
  prompt: string;
  tokens: string[];
  n_layers: number;
  n_heads: number;
  thumbs: Maybe<Packed>;
  pattern: Maybe<HeadPattern>;
  /** "" (none) or a detector name; the view's selector sets it, the kernel answers with detector_scores. */
  detector: string;
  detector_scores: Maybe<DetectorScores>;
}

/** One panel of CausalTraceView: a causal trace of one kind (widgets/tracing.py `_trace_entry`). */
export interface TracePanel {
  kind: string;
  /** float32 [L, C]: p(target) restored at (layer, column); C = tokens, or ROME's 6 groups over a dataset. */
  values: Packed;
  high: number | null;
  low: number | null;
  /** Column labels: tokens with the subject's marked *, or the position groups. */
  labels: string[];
  tokens?: string[];
  subject: [number, number] | null;
  target: string;
  settings: Record<string, unknown>;
  /** Over a dataset: group means, with their sem [L, 6], the pooled counts [6] and the number of facts. */
  grouped: boolean;
  sem?: Packed;
  counts?: number[];
  n?: number;
}

/** The state of one cell restored alone (workbench/ops/tracing_restore.py) as CausalTraceView sends it. */
export interface RestoredCell {
  kind: string;
  layer: number;
  position: number;
  token: string;
  value: number | null;
  high: number | null;
  low: number | null;
  target: string;
  top_tokens: string[];
  top_probs: Packed;
  lens_tokens: string[];
  lens_probs: Packed;
  lens_target: Packed;
  layers: number[];
  sever: string;
}

/** A fact of the dataset as CausalTraceView lists it (text only). */
export interface TraceExample {
  clean: string;
  target: string;
  subject: string;
}

/** CausalTraceView (widgets/tracing.py). */
export interface TracingTraits extends BaseTraits {
  prompt: string;
  subject: string;
  target: string;
  noise: number;
  samples: number;
  window: number;
  sever: string;
  seed: number;
  n_layers: number;
  traces: Partial<Record<string, TracePanel>>;
  stale: string[];
  restored: Maybe<RestoredCell>;
  dataset: Maybe<{ n: number; name: string; examples: TraceExample[] }>;
  /** The fact whose grids are shown, or -1: the group means. */
  example: number;
}

/** What SteerView says about its vector (widgets/steer.py `vector_info`; text only). */
export interface VectorInfo {
  kind: "vector" | "function vector" | "pair";
  label: string;
  positive?: string;
  negative?: string;
  /** A function vector's heads, [layer, head] each. */
  heads: [number, number][];
  d_model: number;
}

/** The settings a SteerView run was made with (widgets/steer.py `_settings`). */
export interface SteerSettings {
  prompt: string;
  layer: number;
  scale: number;
  positions: string;
  max_new_tokens: number;
  sweep: number[];
}

/** One row of a finished (or cancelled) SteerView run: row 0 is the unsteered baseline. */
export interface SteerRow {
  label: string;
  /** null: the unsteered row. */
  scale: number | null;
  /** int32 [n]: the generated ids (cut after an EOS pick). */
  ids: Packed;
  /** The text each token adds (they join to the row's text). */
  pieces: string[];
  /** float32 [n]: each pick's probability. */
  probs: Packed;
  /** The push: |scale * vector| / median |resid_pre| at the layer. */
  relative?: number | null;
  /** The first token where this row differs from the unsteered one (null: nowhere). */
  diverges_at?: number | null;
  done?: boolean;
  /** int32 / float32 [n, k]: each step's top-k (the alternatives). */
  top_ids?: Packed;
  top_probs?: Packed;
}

/** SteerView's `run` trait: the last run. */
export interface SteerRun {
  id: string;
  state: "running" | "done" | "cancelled" | "failed";
  /** False for a remote model: one request, the whole text at once. */
  live: boolean;
  prompt: string;
  settings: SteerSettings;
  rows: SteerRow[];
  id_text: Record<string, string>;
  resid_norm?: number | null;
  text?: string;
  baseline?: string;
  steps: number;
  ms_first?: number | null;
}

/** SteerView (widgets/steer.py). */
export interface SteerTraits extends BaseTraits {
  prompt: string;
  layer: number;
  scale: number;
  positions: string;
  max_new_tokens: number;
  sweep: number[];
  n_layers: number;
  scale_min: number;
  scale_max: number;
  scale_step: number;
  vector_info: Maybe<VectorInfo>;
  /** float32 [L] each: the prompt's median resid_pre norm and the vector's norm at every layer. */
  norms: Maybe<{ resid: Packed; vector: Packed }>;
  run: Maybe<SteerRun>;
}

/** The task FunctionVectorView studies (text only: pairs go into the DOM as text). */
export interface TaskInfo {
  name: string;
  n_pairs: number;
  /** The first few (input, answer) pairs. */
  examples: [string, string][];
  template: string;
  description: string;
}

/** `wb.head_effects` as FunctionVectorView sends it (widgets/function_vector.py `_show_effects`). */
export interface HeadEffectsState {
  /** float32 [L, H]: the mean rise of p(answer) with the head's mean output patched into the shuffled prompts. */
  values: Packed;
  sem: Packed;
  normalized: Packed;
  /** [L][H]: each head's mean output decoded, top-1. */
  top_tokens: string[][];
  clean: number | null;
  corrupt: number | null;
  n: number;
  settings: { n_shots: number; n_prompts: number; seed: number };
}

/** The head opened in FunctionVectorView: its effect and its mean output decoded. */
export interface OpenedHead {
  layer: number;
  head: number;
  effect: number | null;
  sem: number | null;
  normalized: number | null;
  rank: number;
  tokens: string[];
  probs: Packed;
}

/** The opened head's attention on one n-shot example. */
export interface ExamplePattern {
  layer: number;
  head: number;
  example: number;
  tokens: string[];
  target: string;
  /** float32 [T, T]: query (rows) x key (columns). */
  data: Packed;
}

/** The function vector shown: its heads, their effects and its top tokens through the unembedding. */
export interface VectorState {
  heads: [number, number][];
  scores: Packed;
  norm: number | null;
  tokens: string[];
  probs: Packed;
}

/** `wb.evaluate_vector` over every layer, as FunctionVectorView sends it. */
export interface EvaluationState {
  /** float32 [n]: zero-shot accuracy with the vector added after block `layers[i]`. */
  accuracy: Packed;
  sem: Packed;
  mean_probs: Packed;
  layers: number[];
  baseline: number | null;
  baseline_prob: number | null;
  best_layer: number;
  best_accuracy: number | null;
  n: number;
  /** The heads of the vector evaluated. */
  heads: [number, number][];
}

/** The vector tried on a prompt (`wb.steer`): the continuation with and without it. */
export interface TrialState {
  prompt: string;
  layer: number;
  steer_layer: number;
  scale: number;
  positions: string;
  max_new_tokens: number;
  heads: [number, number][];
  text: string;
  baseline: string;
  pieces: string[];
  baseline_pieces: string[];
  diverges_at: number | null;
  /** Whether `diverges_at` was measured token by token (else only the texts are compared). */
  diverge_known: boolean;
  same: boolean;
  relative: number | null;
}

/** FunctionVectorView (widgets/function_vector.py). */
export interface FunctionVectorTraits extends BaseTraits {
  task: Maybe<TaskInfo>;
  n_shots: number;
  n_prompts: number;
  seed: number;
  top_n: number;
  eval_prompts: number;
  n_layers: number;
  n_heads: number;
  heads: [number, number][];
  effects: Maybe<HeadEffectsState>;
  head: Maybe<OpenedHead>;
  example: number;
  pattern: Maybe<ExamplePattern>;
  vector: Maybe<VectorState>;
  evaluation: Maybe<EvaluationState>;
  stale: string[];
  prompt: string;
  /** The vector is added after block `layer` (-1: the best layer once known). */
  layer: number;
  scale: number;
  max_new_tokens: number;
  positions: string;
  position_modes: string[];
  trial: Maybe<TrialState>;
}

/** The graph CircuitView draws (widgets/circuit.py `_graph_state`): fixed for the view's life. */
export interface CircuitGraphState {
  senders: string[];
  receivers: string[];
  /** The columns of a by-position graph (token positions, or roles with align="roles"); null without positions. */
  columns: string[] | null;
  n_layers: number;
  n_heads: number;
  n_kv_heads: number;
  n_edges: number;
  method: string;
  metric: string;
  n_examples: number;
  align: string;
  by_position: boolean;
  clean: number | null;
  corrupt: number | null;
  /** Grouped-query attention: the key-value heads have their own ports (where edges into .k / .v end). */
  gqa: boolean;
  /** Every node: "embed", "L{l}H{h}", "L{l}KV{g}" (ports), "MLP{l}", "logits". */
  names: string[];
  kinds: string[];
  /** int32 [N]: each node's layer (embed -1, logits L) and head / key-value head index. */
  layers: Packed;
  index: Packed;
  /** int32 [S] / [R]: the node of each sender / receiver. */
  sender_node: Packed;
  receiver_node: Packed;
  /** Each receiver's input: "q", "k", "v", "mlp", "logits". */
  receiver_kind: string[];
  /** float32 [N, C]: the sum of every edge out of / into each node (C = 1 without positions); node_in_kv the part
   *  through .k / .v inputs. */
  node_in: Packed;
  node_out: Packed;
  node_in_kv: Packed;
}

/** The circuit cut for the current settings (widgets/circuit.py `_draw`): the drawn edges, largest |score| first. */
export interface CircuitCutState {
  key: string;
  n: number;
  /** Edges in the circuit (top n - pinned out + pinned in, over every column). */
  size: number;
  added: number;
  dropped: number;
  cut: number;
  pin_threshold: number | null;
  max_abs: number | null;
  per_column: number[];
  in_column: number;
  drawn: number;
  /** int32 [k]: sender, receiver and column of each drawn edge; float32 [k] its score. */
  s: Packed;
  r: Packed;
  c: Packed;
  score: Packed;
  /** float32 [N]: the kept edges' sums out of / into each node at the column drawn. */
  node_in: Packed;
  node_out: Packed;
}

/** `wb.faithfulness` of a circuit; `key` names the circuit it measured (stale when it is not the one shown). */
export interface CircuitFaithState {
  key: string;
  value: number | null;
  raw: number | null;
  clean: number | null;
  corrupt: number | null;
  n_edges: number;
  sem: number | null;
}

/** The faithfulness curve measured so far (int32 sizes, float32 values / raw) and the sizes it will have. */
export interface CircuitCurveState {
  sizes: Packed;
  values: Packed;
  raw: Packed;
  target: number[];
  done: boolean;
}

/** One exact check: a node's wb.patch or an edge's wb.edge_patch, beside the estimate. */
export interface CircuitCheck {
  kind: "node" | "edge";
  name: string;
  node?: number;
  edge?: number[];
  column: string | null;
  exact: number | null;
  estimate: number | null;
  raw: number | null;
  clean: number | null;
  corrupt: number | null;
  normalized: number | null;
  n: number;
  site?: string;
  receiver_kind?: string;
}

/** CircuitView (widgets/circuit.py). */
export interface CircuitTraits extends BaseTraits {
  graph: Maybe<CircuitGraphState>;
  n: number;
  column: number;
  pinned_in: string[];
  pinned_out: string[];
  max_drawn: number;
  circuit: Maybe<CircuitCutState>;
  faithfulness: Maybe<CircuitFaithState>;
  curve: Maybe<CircuitCurveState>;
  inspected: Maybe<CircuitCheck>;
  checks: CircuitCheck[];
}
