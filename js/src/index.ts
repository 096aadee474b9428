// anywidget entry point: one shared ES module for every Workbench view.
import { AttentionView } from "./attention";
import { CircuitView } from "./circuit";
import { DatasetView } from "./dataset";
import { FunctionVectorView } from "./function_vector";
import { LensView } from "./lens";
import type { AnyModel } from "./model";
import { PatchView } from "./patch";
import { SteerView } from "./steer";
import { injectStyles } from "./style";
import { TracingView } from "./tracing";
import type { AttentionTraits, BaseTraits, CircuitTraits, DatasetTraits, FunctionVectorTraits, LensTraits, PatchTraits, SteerTraits, TracingTraits } from "./traits";

export { StaticModel } from "./model";

/** The view of each `_view_kind`. The kernel's model is untyped: this is where it is read as that view's traits
 *  (tests/test_widget_contract.py checks that the trait interfaces name the Python traitlets). */
const VIEWS: Record<string, (m: AnyModel, el: HTMLElement) => { destroy(): void; root: HTMLElement }> = {
  lens: (m, el) => new LensView(m as unknown as AnyModel<LensTraits>, el),
  patch: (m, el) => new PatchView(m as unknown as AnyModel<PatchTraits>, el),
  attention: (m, el) => new AttentionView(m as unknown as AnyModel<AttentionTraits>, el),
  dataset: (m, el) => new DatasetView(m as unknown as AnyModel<DatasetTraits>, el),
  tracing: (m, el) => new TracingView(m as unknown as AnyModel<TracingTraits>, el),
  steer: (m, el) => new SteerView(m as unknown as AnyModel<SteerTraits>, el),
  function_vector: (m, el) => new FunctionVectorView(m as unknown as AnyModel<FunctionVectorTraits>, el),
  circuit: (m, el) => new CircuitView(m as unknown as AnyModel<CircuitTraits>, el),
};

// Not exported by name: anywidget >= 0.9 reads `default` ({ initialize?, render }) and warns
// ("Direct export of a 'render' will likely be deprecated") when the module exports `render` itself.
function render({ model, el }: { model: AnyModel; el: HTMLElement }): () => void {
  injectStyles(el);
  if (!el.isConnected) requestAnimationFrame(() => injectStyles(el)); // its shadow root, once attached
  const kind = String((model as unknown as AnyModel<BaseTraits>).get("_view_kind") ?? "");
  const make = VIEWS[kind];
  if (!make) {
    const msg = document.createElement("div");
    msg.textContent = `Workbench: unknown view kind ${JSON.stringify(kind)}`;
    el.append(msg);
    return () => msg.remove();
  }
  const view = make(model, el);
  return () => {
    view.destroy();
    view.root.remove();
  };
}

export default { render };
