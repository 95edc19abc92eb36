/**
 * `npm run findings`: what the lab's traversals found, read from Redis, for people and for CI.
 *
 *   --task <taskId>            the task's findings grouped by signature (a table, or --json)
 *   --task <taskId> --junit f  also writes the task's JUnit XML to f (one test case per device)
 *   --app <package> [--since 7d] [--limit 50]
 *                              the app's finding groups, new in the window first, then by count
 *
 * Redis and the key prefix come from REDIS_URL and DT_REDIS_KEY_PREFIX, as for the worker.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import Redis from 'ioredis';
import { loadConfig, parseDuration } from './config';
import { checkIdentifier, PACKAGE_PATTERN, preview } from './contract/ids';
import { junitXml } from './findings/junit';
import { groupTaskFindings, readAppGroups, readTaskFindings } from './findings/read';
import { appGroupsTable, taskFindingsTable } from './findings/table';

const USAGE = `usage: npm run findings -- --task <taskId> [--json] [--junit out.xml]
       npm run findings -- --app <package> [--since 7d] [--limit 50] [--json]
Reads REDIS_URL (default redis://127.0.0.1:6379) and DT_REDIS_KEY_PREFIX.`;

/** What the command was asked for. */
export interface FindingsArgs {
  task?: string;
  app?: string;
  json: boolean;
  junit?: string;
  sinceMs?: number;
  limit?: number;
}

/** A usage error: the message and the usage text, exit code 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** Reads the command line; undefined for --help. */
export function parseFindingsArgs(argv: string[], now = Date.now()): FindingsArgs | undefined {
  if (argv.includes('--help') || argv.includes('-h')) return undefined;
  const out: FindingsArgs = { json: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--json') {
      out.json = true;
      continue;
    }
    const eq = arg.indexOf('=');
    const flag = eq > 0 ? arg.slice(0, eq) : arg;
    const value = eq > 0 ? arg.slice(eq + 1) : argv[++i];
    if (value === undefined || value === '') throw new UsageError(`${flag} needs a value`);
    switch (flag) {
      case '--task':
        out.task = value;
        break;
      case '--app':
        out.app = value;
        break;
      case '--junit':
        out.junit = value;
        break;
      case '--since': {
        const ms = parseDuration(value) ?? (Number.isNaN(Date.parse(value)) ? undefined : now - Date.parse(value));
        if (ms === undefined)
          throw new UsageError(`--since expects a duration like 7d or 12h, or a date; got ${value}`);
        out.sinceMs = now - ms;
        break;
      }
      case '--limit': {
        const n = Number(value);
        if (!Number.isInteger(n) || n < 1)
          throw new UsageError(`--limit expects a positive whole number, got ${value}`);
        out.limit = n;
        break;
      }
      default:
        throw new UsageError(`unknown option ${flag}`);
    }
  }
  if ((out.task === undefined) === (out.app === undefined)) throw new UsageError('give either --task or --app');
  // Checked as the starter checks them: an id is a literal, never a pattern of keys.
  const problem =
    out.task !== undefined
      ? checkIdentifier('taskId', out.task, '--task')
      : PACKAGE_PATTERN.test(out.app!)
        ? undefined
        : `--app: must be an Android application id like com.example.app, got ${preview(out.app)}`;
  if (problem) throw new UsageError(problem);
  if (out.junit !== undefined && out.task === undefined) throw new UsageError('--junit goes with --task');
  if (out.sinceMs !== undefined && out.app === undefined) throw new UsageError('--since goes with --app');
  return out;
}

/** Runs the command against `redis`; returns the text to print and the exit code. */
export async function runFindings(
  args: FindingsArgs,
  redis: Redis,
  prefix = '',
): Promise<{ text: string; code: number }> {
  if (args.task !== undefined) {
    const task = await readTaskFindings(redis, args.task, prefix);
    if (task.results.length === 0 && task.pending.length === 0)
      return { text: `no task ${args.task} in Redis (no record and no published result)`, code: 1 };
    const groups = groupTaskFindings(task.results);
    let written = '';
    if (args.junit) {
      const file = path.resolve(args.junit);
      writeFileSync(file, junitXml(task));
      written = `\nJUnit XML written to ${file}`;
    }
    if (args.json)
      return {
        text: JSON.stringify(
          {
            taskId: task.taskId,
            packageName: task.packageName,
            summary: task.summary ?? null,
            pending: task.pending,
            devices: task.results.map((r) => ({ deviceId: r.deviceId, status: r.status, reportUrl: r.reportUrl })),
            groups,
          },
          null,
          2,
        ),
        code: 0,
      };
    const statuses = task.results.map((r) => r.status);
    const count = (s: string) => statuses.filter((x) => x === s).length;
    const newCount = groups.filter((g) => g.newForApp).length;
    const head =
      `Task ${task.taskId} (${task.packageName}): ${task.results.length + task.pending.length} devices, ` +
      `${count('completed')} completed, ${count('failed')} failed, ${count('cancelled')} cancelled, ${task.pending.length} pending; ` +
      `${groups.length} distinct findings, ${newCount} new for the app`;
    const body = groups.length ? `\n${taskFindingsTable(groups)}` : '\nNo crash or ANR found.';
    return { text: `${head}${body}${written}`, code: 0 };
  }
  const sinceMs = args.sinceMs ?? 0;
  const groups = await readAppGroups(redis, args.app!, { sinceMs, limit: args.limit, prefix });
  if (args.json)
    return { text: JSON.stringify({ packageName: args.app, since: new Date(sinceMs), groups }, null, 2), code: 0 };
  const window = args.sinceMs !== undefined ? ` seen since ${new Date(sinceMs).toISOString()}` : '';
  if (groups.length === 0) return { text: `No findings for ${args.app}${window}.`, code: 0 };
  const fresh = groups.filter((g) => Date.parse(g.firstSeen) >= sinceMs).length;
  return {
    text: `${args.app}: ${groups.length} finding groups${window}, ${fresh} first seen in that window\n${appGroupsTable(groups, sinceMs)}`,
    code: 0,
  };
}

async function main(): Promise<number> {
  let args: FindingsArgs | undefined;
  try {
    args = parseFindingsArgs(process.argv.slice(2));
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`${err.message}\n${USAGE}\n`);
    return 2;
  }
  if (!args) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const config = loadConfig();
  const redis = new Redis(config.redisUrl, { maxRetriesPerRequest: 2, lazyConnect: true });
  try {
    await redis.connect().catch((err: Error) => {
      throw new Error(`cannot reach Redis at ${config.redisUrl}: ${err.message}`);
    });
    const { text, code } = await runFindings(args, redis, config.redisKeyPrefix);
    (code === 0 ? process.stdout : process.stderr).write(`${text}\n`);
    return code;
  } finally {
    redis.disconnect();
  }
}

if (require.main === module)
  main().then(
    (code) => process.exit(code),
    (err) => {
      process.stderr.write(`findings: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
