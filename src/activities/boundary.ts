/**
 * The activity boundary: what every activity gets on the way in and on the way out, applied once to
 * the whole object createActivities returns.
 * - In: the identifiers of the input (taskId, deviceId, packageName) are checked again before they
 *   become paths, argv entries or Redis keys. The starter validates tasks, but a workflow can also
 *   be started or signalled directly through Temporal (CLI, Web UI, another client).
 * - Out: project errors become ApplicationFailures typed by their code (toFailure), and each
 *   failure is counted.
 * - Start: `onStart` hears of every activity that passed the guard (the worker uses it to tell a run
 *   that waited for its host that the host took the step).
 *
 * A wrapper rather than the SDK's activity inbound interceptor: an interceptor runs only inside a
 * Worker, while tests and tools call the functions of createActivities(...) directly and must meet
 * the same guard and the same typed failures. Behaviour that needs the worker itself (the attempt
 * journal) is an interceptor.
 */
import { ApplicationFailure } from '@temporalio/common';
import { InvalidTaskError, toFailure } from '../contract/errors';
import { checkIdentifier, ID_RULES } from '../contract/ids';

const ID_FIELDS = Object.keys(ID_RULES) as (keyof typeof ID_RULES)[];

/** Problems with the identifier fields (taskId, deviceId, packageName) present in an activity input. */
function identifierProblems(input: unknown): string[] {
  if (typeof input !== 'object' || input === null) return [];
  const rec = input as Record<string, unknown>;
  return ID_FIELDS.filter((f) => rec[f] !== undefined)
    .map((f) => checkIdentifier(f, rec[f]))
    .filter((p): p is string => p !== undefined);
}

/**
 * Wraps every activity: an input with a malformed identifier fails as InvalidTask before any work,
 * and project errors cross the boundary as typed failures, each reported to `onFailure`.
 */
export function activityBoundary<T extends Record<string, (...args: any[]) => Promise<unknown>>>(
  acts: T,
  onFailure?: (activity: string, type: string) => void,
  onStart?: (activity: string) => void,
): T {
  const wrapped: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(acts)) {
    wrapped[name] = async (...args: unknown[]) => {
      try {
        const problems = args.flatMap(identifierProblems);
        if (problems.length) throw new InvalidTaskError(problems);
        onStart?.(name);
        return await fn(...args);
      } catch (err) {
        const failure = toFailure(err);
        const type =
          failure instanceof ApplicationFailure ? (failure.type ?? 'Error') : ((err as Error)?.name ?? 'Error');
        // Cancellation is not a failure of the activity; don't count it.
        if (type !== 'CancelledFailure') onFailure?.(name, type);
        throw failure;
      }
    };
    Object.defineProperty(wrapped[name], 'name', { value: name });
  }
  return wrapped as T;
}
