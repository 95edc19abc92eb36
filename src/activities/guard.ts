/**
 * Defence in depth for activity inputs. The starter validates tasks, but a workflow can also be
 * started or signalled directly through Temporal (CLI, Web UI, another client), so identifiers are
 * checked again at the activity boundary before they become paths, argv entries or Redis keys.
 */
import { InvalidTaskError } from '../contract/errors';
import { checkIdentifier, ID_RULES } from '../contract/ids';

const ID_FIELDS = Object.keys(ID_RULES) as (keyof typeof ID_RULES)[];

/** Problems with the identifier fields (taskId, deviceId, packageName) present in an activity input. */
export function identifierProblems(input: unknown): string[] {
  if (typeof input !== 'object' || input === null) return [];
  const rec = input as Record<string, unknown>;
  return ID_FIELDS.filter((f) => rec[f] !== undefined)
    .map((f) => checkIdentifier(f, rec[f]))
    .filter((p): p is string => p !== undefined);
}

/** Wraps every activity so an input with a malformed identifier fails as InvalidTask before any work. */
export function guardIdentifiers<T extends Record<string, (...args: any[]) => Promise<unknown>>>(acts: T): T {
  const wrapped: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(acts)) {
    wrapped[name] = async (...args: unknown[]) => {
      const problems = args.flatMap(identifierProblems);
      if (problems.length) throw new InvalidTaskError(problems);
      return fn(...args);
    };
    Object.defineProperty(wrapped[name], 'name', { value: name });
  }
  return wrapped as T;
}
