/**
 * Cleanup scopes: everything a benchmark, a test or the demo starts registers how to stop it, and
 * the scope stops it all in reverse order at the end, after a failure, or on Ctrl-C (`closeAllScopes`).
 */

/** How long one cleanup may take before the scope moves on, ms. */
const CLEANUP_TIMEOUT_MS = 30_000;

/** Scopes not yet closed, oldest first. */
const open = new Set<Scope>();

/** Named cleanups run last-in first-out. */
export class Scope {
  private readonly cleanups: { name: string; fn: () => unknown }[] = [];
  private closing?: Promise<void>;

  /**
   * `name` appears in the messages about cleanups that failed; those, and what the services started
   * in this scope have to say, go to `report` (default: a line on stderr).
   */
  constructor(
    readonly name: string,
    readonly report: (msg: string) => void = (msg) => process.stderr.write(`${msg}\n`),
  ) {
    open.add(this);
  }

  /** Registers a cleanup; on a scope already closing it runs at once. */
  add(name: string, fn: () => unknown): void {
    if (this.closing) {
      void this.closing.then(() => runCleanup(this.name, name, fn, this.report));
      return;
    }
    this.cleanups.push({ name, fn });
  }

  /** Runs every cleanup, newest first; a failing one is reported and the rest still run. Safe to call twice. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      for (const c of this.cleanups.splice(0).reverse()) await runCleanup(this.name, c.name, c.fn, this.report);
      open.delete(this);
    })();
    return this.closing;
  }
}

async function runCleanup(
  scope: string,
  name: string,
  fn: () => unknown,
  report: (msg: string) => void,
): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      Promise.resolve().then(fn),
      new Promise((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`did not finish within ${CLEANUP_TIMEOUT_MS / 1000} s`)),
          CLEANUP_TIMEOUT_MS,
        );
      }),
    ]);
  } catch (err) {
    report(`${scope}: stopping ${name} failed: ${err instanceof Error ? err.message : String(err)}`);
  } finally {
    clearTimeout(timer);
  }
}

/** Closes every open scope, newest first (Ctrl-C and fatal errors). */
export async function closeAllScopes(): Promise<void> {
  for (const scope of [...open].reverse()) await scope.close();
}
