// The anywidget model API the views use, typed by each view's traits (anywidget's `AnyModel<T>`), and a
// kernel-less model for standalone HTML and unit tests.

/** Called on `change:<trait>`. */
export type ChangeCallback = () => void;
/** Called on `msg:custom`: a message from the kernel and its binary buffers. */
export type MessageCallback = (content: unknown, buffers: DataView[]) => void;
export type Callback = ChangeCallback | MessageCallback;
export type Buffers = (ArrayBuffer | ArrayBufferView)[];

/** The model of one widget: `get`/`set` are typed by its traits `T` (names exactly as the Python traitlets). */
export interface AnyModel<T extends object = Record<string, unknown>> {
  get<K extends keyof T & string>(name: K): T[K];
  set<K extends keyof T & string>(name: K, value: T[K]): void;
  save_changes(): void;
  on(event: "msg:custom", cb: MessageCallback): void;
  on(event: `change:${keyof T & string}`, cb: ChangeCallback): void;
  off(event?: string | null, cb?: Callback | null): void;
  send(content: object, callbacks?: unknown, buffers?: Buffers): void;
}

/** A model with fixed state and no kernel: used by exported standalone HTML and by unit tests. */
export class StaticModel<T extends object = Record<string, unknown>> implements AnyModel<T> {
  state: Partial<T>;
  sent: { content: object; buffers?: Buffers }[] = [];
  private handlers = new Map<string, Set<Callback>>();
  constructor(state: Partial<T>) {
    this.state = { ...state };
  }
  get<K extends keyof T & string>(name: K): T[K] {
    return this.state[name] as T[K];
  }
  set<K extends keyof T & string>(name: K, value: T[K]): void {
    this.state[name] = value;
    this.emit(`change:${name}`);
  }
  save_changes(): void {}
  on(event: string, cb: Callback): void {
    if (!this.handlers.has(event)) this.handlers.set(event, new Set());
    this.handlers.get(event)!.add(cb);
  }
  off(event?: string | null, cb?: Callback | null): void {
    if (!event) this.handlers.clear();
    else if (!cb) this.handlers.delete(event);
    else this.handlers.get(event)?.delete(cb);
  }
  send(content: object, _callbacks?: unknown, buffers?: Buffers): void {
    this.sent.push({ content, buffers });
  }
  /** Deliver an event as the real model would: `change:<trait>`, or `msg:custom` with (content, buffers). */
  emit(event: string, ...args: unknown[]): void {
    for (const cb of this.handlers.get(event) ?? []) (cb as (...a: unknown[]) => void)(...args);
  }
}
