// Styles: JupyterLab theme variables with fallbacks (light and dark). Injected once per document.
export const CSS = `
.wb-root{--wb-fg:var(--jp-ui-font-color1,#222);--wb-bg:var(--jp-layout-color0,#fff);--wb-bg2:var(--jp-layout-color1,#f6f6f6);--wb-border:var(--jp-border-color1,#ccc);--wb-accent:var(--jp-brand-color1,#1976d2);--wb-err:var(--jp-error-color1,#d32f2f);
 color:var(--wb-fg);background:var(--wb-bg);font-family:var(--jp-ui-font-family,system-ui,sans-serif);font-size:var(--jp-ui-font-size1,13px);padding:6px;border:1px solid var(--wb-border);border-radius:4px;max-width:100%;overflow:auto;position:relative}
.wb-root [hidden]{display:none !important}
.wb-header{display:flex;align-items:center;gap:8px;flex-wrap:wrap;margin-bottom:6px}
.wb-title{font-weight:600}
.wb-status{padding:1px 6px;border-radius:8px;background:var(--wb-bg2);border:1px solid var(--wb-border);font-size:12px}
.wb-status[data-state=running]{border-color:var(--wb-accent)}
.wb-status[data-state=error]{border-color:var(--wb-err);color:var(--wb-err)}
.wb-progress{width:140px}
.wb-exports{margin-left:auto;display:flex;gap:4px}
.wb-btn{font:inherit;color:var(--wb-fg);background:var(--wb-bg2);border:1px solid var(--wb-border);border-radius:3px;padding:2px 8px;cursor:pointer}
.wb-btn:hover:not(:disabled){border-color:var(--wb-accent)}
.wb-btn:disabled{opacity:.5;cursor:default}
.wb-primary{background:var(--wb-accent);color:var(--jp-ui-inverse-font-color1,#fff);border-color:var(--wb-accent)}
.wb-select,.wb-input,.wb-prompt{font:inherit;color:var(--wb-fg);background:var(--wb-bg);border:1px solid var(--wb-border);border-radius:3px;padding:2px 4px}
.wb-prompt{flex:1;min-width:300px;font-family:var(--jp-code-font-family,monospace)}
.wb-wide{min-width:320px}
.wb-row,.wb-controls{display:flex;gap:8px;align-items:center;flex-wrap:wrap;margin:4px 0}
.wb-field{display:inline-flex;gap:4px;align-items:center}
.wb-field>span{opacity:.8}
.wb-error{color:var(--wb-err);border:1px solid var(--wb-err);border-radius:3px;padding:4px 6px;margin:4px 0;white-space:pre-wrap}
.wb-strip{display:flex;flex-wrap:wrap;gap:2px;margin:3px 0;align-items:center;max-height:8.5em;overflow:auto}
.wb-strip-label{opacity:.75;margin-right:4px;min-width:58px}
.wb-token{font-family:var(--jp-code-font-family,monospace);white-space:pre;border:1px solid var(--wb-border);border-radius:3px;padding:0 3px;background:var(--wb-bg2);cursor:default}
.wb-token.wb-selected{border-color:var(--wb-accent);box-shadow:0 0 0 1px var(--wb-accent)}
.wb-heatmap{position:relative;display:inline-block;max-width:100%;overflow:auto}
.wb-hm-grid{display:grid;grid-template-columns:max-content max-content;align-items:end}
.wb-collabels{display:flex;align-items:flex-end;max-height:64px;overflow:hidden}
.wb-collabel{writing-mode:vertical-rl;transform:rotate(180deg);font-family:var(--jp-code-font-family,monospace);font-size:10px;white-space:pre;overflow:hidden;max-height:64px;text-align:left;line-height:1}
.wb-rowlabels{display:flex;flex-direction:column;font-size:10px;text-align:right;padding-right:4px;opacity:.8;align-self:start;overflow:hidden}
.wb-rowlabel{white-space:pre;overflow:hidden}
.wb-hm-cell{line-height:0;align-self:start}
.wb-hm-corner{font-size:10px;opacity:.75;padding:0 6px 2px 0;text-align:right;align-self:end;white-space:nowrap;line-height:1.3}
.wb-scale{display:flex;align-items:center;gap:6px;font-size:10px;margin:6px 0 2px;opacity:.9}
.wb-scale[hidden]{display:none}
.wb-scale-bar{border:1px solid var(--wb-border);width:160px;height:10px}
.wb-scale-label{margin-left:4px}
.wb-canvas{display:block;cursor:pointer;outline:none}
.wb-canvas:focus-visible{outline:2px solid var(--wb-accent);outline-offset:1px}
.wb-tip{position:absolute;z-index:10;pointer-events:none;background:var(--wb-bg);color:var(--wb-fg);border:1px solid var(--wb-border);border-radius:3px;padding:4px 6px;font-family:var(--jp-code-font-family,monospace);font-size:11px;white-space:pre;box-shadow:0 2px 6px rgba(0,0,0,.25)}
.wb-ghost{position:fixed;z-index:1000;pointer-events:none;background:var(--jp-layout-color0,#fff);color:var(--jp-ui-font-color1,#222);border:1px dashed var(--jp-brand-color1,#1976d2);padding:2px 6px;font-size:11px}
.wb-panes{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}
.wb-pane{min-width:0}
.wb-result{min-width:280px}
.wb-subtitle{font-weight:600;margin:6px 0 3px}
.wb-caption,.wb-hint{opacity:.8;margin:4px 0}
.wb-prediction{font-family:var(--jp-code-font-family,monospace);margin:3px 0}
.wb-pred-tok{border:1px solid var(--wb-border);border-radius:3px;padding:0 3px;white-space:pre}
.wb-pred-p{opacity:.8;white-space:pre}
.wb-code{font-family:var(--jp-code-font-family,monospace);font-size:11px;background:var(--wb-bg2);border:1px solid var(--wb-border);padding:6px;max-height:300px;overflow:auto;white-space:pre}
.wb-history-list{margin:2px 0;padding-left:22px;font-size:12px}
.wb-history-list li>span{margin-left:6px}
.wb-h-args{font-family:var(--jp-code-font-family,monospace);white-space:pre;color:var(--wb-accent)}
.wb-words{display:flex;gap:12px;flex-wrap:wrap;margin:2px 0;font-size:12px}
.wb-word{display:inline-flex;gap:4px;align-items:center}
.wb-word-tok{font-family:var(--jp-code-font-family,monospace);white-space:pre;border:1px solid var(--wb-border);border-radius:3px;padding:0 3px;background:var(--wb-bg2)}
.wb-word-bad{border-color:var(--wb-err);color:var(--wb-err)}
.wb-warn{color:var(--jp-warn-color1,#b26a00);border:1px solid var(--jp-warn-color1,#b26a00);border-radius:3px;padding:2px 6px;margin:2px 0;white-space:pre-wrap;font-size:12px}
.wb-h-top{font-family:var(--jp-code-font-family,monospace);white-space:pre;opacity:.85}
.wb-compare{border-collapse:collapse;font-size:12px}
.wb-compare td,.wb-compare th{border:1px solid var(--wb-border);padding:1px 6px;white-space:pre}
.wb-chip{display:inline-flex;align-items:center;gap:2px;border:1px solid var(--wb-border);border-radius:10px;padding:0 2px 0 6px;font-family:var(--jp-code-font-family,monospace);white-space:pre}
.wb-chip-x{border:none;background:none;padding:0 4px}
.wb-chart svg{overflow:visible}
.wb-chart line{stroke:var(--wb-fg);stroke-width:1;opacity:.6}
.wb-chart text{fill:var(--wb-fg);font-size:10px}
.wb-legend{display:flex;gap:10px;flex-wrap:wrap;font-family:var(--jp-code-font-family,monospace);font-size:11px}
.wb-legend-item{display:inline-flex;align-items:center;gap:4px;white-space:pre}
.wb-swatch{display:inline-block;width:12px;height:3px}
.wb-headview{display:flex;align-items:flex-start;max-height:520px;overflow:auto;border:1px solid var(--wb-border);padding:4px}
.wb-hv-col{display:flex;flex-direction:column;font-family:var(--jp-code-font-family,monospace);font-size:11px}
.wb-hv-tok{white-space:pre;line-height:16px;padding:0 4px;cursor:default}
.wb-hv-tok.wb-hl{background:var(--wb-accent);color:var(--jp-ui-inverse-font-color1,#fff)}
.wb-hv-lines{width:140px}
.wb-tabs{display:flex;gap:2px;border-bottom:1px solid var(--wb-border);margin-bottom:4px}
.wb-dsbox{border:1px solid var(--wb-border);border-radius:3px;padding:2px 6px;margin:4px 0;background:var(--wb-bg2)}
.wb-example-bar{gap:12px}
.wb-dist{margin-top:8px;max-width:640px}
.wb-strip-plot{display:block;overflow:visible}
.wb-dist-axis{stroke:var(--wb-fg);stroke-width:1;opacity:.6}
.wb-dist-mean{stroke:var(--wb-fg);stroke-width:2}
.wb-dist-band{fill:var(--jp-warn-color3,rgba(255,170,0,.25));opacity:.6}
.wb-dist-text{fill:var(--wb-fg);font-size:10px}
.wb-dist-dot{fill:var(--wb-accent);fill-opacity:.75;stroke:var(--wb-bg);stroke-width:1;cursor:pointer}
.wb-dist-dot:hover,.wb-dist-dot:focus{fill-opacity:1;stroke:var(--wb-fg);outline:none}
.wb-ex-head{font-weight:600;margin:6px 0 2px;font-size:12px}
.wb-ex-list{margin:2px 0;padding-left:0;list-style:none;font-size:12px;max-height:320px;overflow:auto}
.wb-ex{display:flex;gap:8px;padding:1px 4px;border-radius:3px;cursor:pointer}
.wb-ex:hover,.wb-ex:focus{background:var(--wb-bg2);outline:1px solid var(--wb-accent)}
.wb-ex-val{font-family:var(--jp-code-font-family,monospace);white-space:pre;min-width:90px;opacity:.85}
.wb-ex-text{white-space:pre-wrap;word-break:break-word}
.wb-ds td{vertical-align:top;white-space:normal}
.wb-ds-tok{font-family:var(--jp-code-font-family,monospace);white-space:pre}
.wb-ds-bad{color:var(--wb-err)}
.wb-ds-tokens .wb-strip{margin:1px 0}
.wb-spacer{flex:1}
.wb-num{width:56px}
.wb-target{min-height:4.5em}
.wb-gen{margin:6px 0}
.wb-gen-token{font-weight:600}
.wb-steer-controls{gap:14px;row-gap:6px}
.wb-steer-slider{width:200px;accent-color:var(--wb-accent)}
.wb-steer-value{font-family:var(--jp-code-font-family,monospace);min-width:2ch}
.wb-steer-push{font-size:12px;opacity:.85;white-space:nowrap}
.wb-steer-push[data-strong=true]{color:var(--jp-warn-color0,#e65100);opacity:1}
.wb-steer-cols{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:12px;margin:8px 0 4px}
.wb-steer-col{border:1px solid var(--wb-border);border-radius:6px;padding:8px 10px;background:var(--wb-bg2);min-width:0}
.wb-steer-col[data-row="1"]{border-color:var(--wb-accent)}
.wb-steer-head{display:flex;gap:8px;align-items:baseline;flex-wrap:wrap;font-weight:600;margin-bottom:6px}
.wb-steer-sub{font-weight:400;font-size:12px;opacity:.75}
.wb-steer-text{font-family:var(--jp-content-font-family,system-ui,sans-serif);font-size:14px;line-height:1.6;white-space:pre-wrap;word-break:break-word;min-height:3.2em}
.wb-steer-prompt{opacity:.55}
.wb-steer-tok{border-radius:3px;padding:1px 0}
.wb-steer-tok:hover{outline:1px solid var(--wb-accent)}
.wb-steer-tok[data-state=diverge]{background:color-mix(in srgb,var(--jp-warn-color1,#ff9800) 38%,transparent);box-shadow:inset 0 -2px 0 var(--jp-warn-color1,#ff9800);font-weight:600}
.wb-steer-tok[data-state=after]{background:color-mix(in srgb,var(--wb-accent) 14%,transparent)}
.wb-steer-caret{display:inline-block;width:.45em;height:1.05em;margin-left:1px;vertical-align:text-bottom;background:var(--wb-accent);animation:wb-blink 1s steps(1) infinite}
@keyframes wb-blink{50%{opacity:0}}
.wb-steer-sweep{border-collapse:collapse;width:100%;margin:6px 0}
.wb-steer-sweep th{text-align:left;font-weight:600;font-size:12px;opacity:.8;padding:2px 8px;white-space:nowrap}
.wb-steer-sweep td{border-top:1px solid var(--wb-border);padding:4px 8px;vertical-align:top}
.wb-steer-rowlabel{white-space:nowrap;font-weight:600;width:1%}
.wb-steer-rowlabel .wb-steer-sub{display:block}
.wb-steer-legend{display:flex;gap:10px;align-items:center;flex-wrap:wrap;font-size:12px}
.wb-steer-legend .wb-steer-tok{padding:0 4px}
.wb-fv-sub{opacity:.85;margin:6px 0 2px;font-size:12px}
.wb-fv-toplist{margin:2px 0;padding-left:26px;font-size:12px;columns:2;column-gap:18px}
.wb-fv-toplist li{break-inside:avoid;white-space:nowrap}
.wb-fv-bar{display:inline-block;height:9px;margin:0 6px;vertical-align:middle;background:var(--wb-accent);border-radius:1px}
.wb-fv-attn .wb-token{border-color:transparent}
.wb-fv-chips{gap:4px}
.wb-fv-decoded{gap:3px 6px}
.wb-fv-gen{display:flex;flex-wrap:wrap;gap:2px;align-items:center;margin:3px 0;font-family:var(--jp-code-font-family,monospace)}
.wb-fv-gen-label{min-width:118px;font-family:var(--jp-ui-font-family,system-ui,sans-serif);font-weight:600}
.wb-fv-gen-prompt{opacity:.55;white-space:pre;margin-right:4px}
.wb-fv-diverged{border-color:var(--jp-warn-color1,#b26a00);font-weight:600}
.wb-fv-try{border-top:1px solid var(--wb-border);margin-top:8px;padding-top:4px}
.wb-fv-details summary{cursor:pointer;opacity:.85;font-size:12px;margin:4px 0}
[data-stale=true]{opacity:.6}
.wb-gen-none{background:repeating-linear-gradient(45deg,var(--wb-bg2),var(--wb-bg2) 3px,var(--wb-border) 3px,var(--wb-border) 5px)}
`;

function addStyle(root: Document | ShadowRoot): void {
  if (root.getElementById("wb-styles")) return;
  const isDoc = root.nodeType === 9; // Node.DOCUMENT_NODE (instanceof differs between windows and test DOMs)
  const doc = isDoc ? (root as Document) : (root.ownerDocument ?? document);
  const style = doc.createElement("style");
  style.id = "wb-styles";
  style.textContent = CSS;
  if (isDoc) (root as Document).head.append(style);
  else root.append(style);
}

/** Injects the views' styles once into the document and, when `where` sits in a shadow root (marimo renders
 * anywidgets inside one, where the document's styles do not reach), once into that shadow root too. */
export function injectStyles(where: Node = document): void {
  addStyle(where.nodeType === 9 ? (where as Document) : (where.ownerDocument ?? document));
  const root = where.getRootNode();
  if (root.nodeType === 11 && "host" in root) addStyle(root as ShadowRoot); // a shadow root
}
