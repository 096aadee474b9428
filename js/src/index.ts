// anywidget entry point: one shared ES module for every Workbench view.
import { AttentionView } from "./attention";
import { LensView } from "./lens";
import type { AnyModel } from "./model";
import { PatchView } from "./patch";
import { injectStyles } from "./style";
import type { View } from "./view";

export { StaticModel } from "./model";

const VIEWS: Record<string, new (m: AnyModel, el: HTMLElement) => View> = {
  lens: LensView,
  patch: PatchView,
  attention: AttentionView,
};

// Not exported by name: anywidget >= 0.9 reads `default` ({ initialize?, render }) and warns
// ("Direct export of a 'render' will likely be deprecated") when the module exports `render` itself.
function render({ model, el }: { model: AnyModel; el: HTMLElement }): () => void {
  injectStyles(el);
  if (!el.isConnected) requestAnimationFrame(() => injectStyles(el)); // its shadow root, once attached
  const kind = String(model.get("_view_kind") ?? "");
  const Cls = VIEWS[kind];
  if (!Cls) {
    const msg = document.createElement("div");
    msg.textContent = `Workbench: unknown view kind ${JSON.stringify(kind)}`;
    el.append(msg);
    return () => msg.remove();
  }
  const view = new Cls(model, el);
  return () => {
    view.destroy();
    view.root.remove();
  };
}

export default { render };
