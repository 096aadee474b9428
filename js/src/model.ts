// The subset of the anywidget model API the views use, and a kernel-less model for standalone HTML.

export type Handler = (...args: any[]) => void;
export interface AnyModel {
  get(name: string): any;
  set(name: string, value: unknown): void;
  save_changes(): void;
  on(event: string, cb: Handler): void;
  off(event?: string | null, cb?: Handler | null): void;
  send(content: unknown, callbacks?: unknown, buffers?: (ArrayBuffer | ArrayBufferView)[]): void;
}

/** A model with fixed state and no kernel: used by exported standalone HTML and by unit tests. */
export class StaticModel implements AnyModel {
  state: Record<string, unknown>;
  sent: { content: unknown; buffers?: (ArrayBuffer | ArrayBufferView)[] }[] = [];
  private handlers = new Map<string, Set<Handler>>();
  constructor(state: Record<string, unknown>) {
    this.state = { ...state };
  }
  get(name: string): any {
    return this.state[name];
  }
  set(name: string, value: unknown): void {
    this.state[name] = value;
    this.emit(`change:${name}`, value);
  }
  save_changes(): void {}
  on(event: string, cb: Handler): void {
    if (!this.handlers.has(event)) this.handlers.set(event, new Set());
    this.handlers.get(event)!.add(cb);
  }
  off(event?: string | null, cb?: Handler | null): void {
    if (!event) this.handlers.clear();
    else if (!cb) this.handlers.delete(event);
    else this.handlers.get(event)?.delete(cb);
  }
  send(content: unknown, _callbacks?: unknown, buffers?: (ArrayBuffer | ArrayBufferView)[]): void {
    this.sent.push({ content, buffers });
  }
  emit(event: string, ...args: unknown[]): void {
    for (const cb of this.handlers.get(event) ?? []) cb(...args);
  }
}
