/** A counting semaphore whose waiters can be aborted: caps the origin downloads one cache runs at once. */
export class Slots {
  private active = 0;
  private readonly waiting: (() => void)[] = [];

  /** `max` slots; 0 or less means no cap. */
  constructor(private readonly max: number) {}

  /** Waits for a free slot; resolves to the function that frees it (safe to call twice). */
  async acquire(signal: AbortSignal): Promise<() => void> {
    signal.throwIfAborted();
    if (this.max <= 0) return () => undefined;
    if (this.active < this.max) {
      this.active++;
    } else {
      // A freed slot passes straight to the next waiter, so `active` does not change.
      await new Promise<void>((resolve, reject) => {
        const wake = () => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        };
        const onAbort = () => {
          const i = this.waiting.indexOf(wake);
          if (i >= 0) this.waiting.splice(i, 1);
          reject(signal.reason);
        };
        this.waiting.push(wake);
        signal.addEventListener('abort', onAbort, { once: true });
      });
    }
    let freed = false;
    return () => {
      if (freed) return;
      freed = true;
      const next = this.waiting.shift();
      if (next) next();
      else this.active--;
    };
  }
}
