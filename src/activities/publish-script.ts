/**
 * The one Redis script that publishes a traversal's result: the result key, the results stream
 * event, the app's finding groups and the task's summary, in one step. Redis runs a script with
 * nothing else in between, and everything that could fail it (memory, key types) is checked before
 * its first write, so a retried publish finds either everything written or nothing.
 */
import { GROUP_CAPS, groupUpdates, withoutFlag } from '../findings/groups';
import type { TraversalResult } from '../contract/messages';
import {
  appFindingsKey,
  findingAppsKey,
  findingGroupKeys,
  resultKey,
  resultsStream,
  taskKey,
  taskSignaturesKey,
  taskSummaryKey,
} from '../contract/redis-keys';

/** Stands for the findings array in the result JSON until the script knows which are new. */
const FINDINGS_SLOT = '"findings":"@@findings@@"';

/**
 * What the script does, in order:
 *
 * 1. Checks every key's type first, so a key of the wrong type fails the publish with nothing written.
 * 2. A result key that already holds this run's result means an earlier attempt published it (its
 *    reply was lost): it writes nothing and answers with the stored result.
 * 3. Per signature: creates the group when the app never met it (this task becomes its first task),
 *    adds the occurrences, moves first/last seen, and records the device, task and APK hash in
 *    sorted sets trimmed to the newest members. A signature is new for the app when its group's
 *    first task is this one, so every device of the task that found it says so.
 * 4. Writes the result (each finding marked `newForApp`) and its stream event.
 * 5. For a task the starter registered: marks this device done, rewrites the summary, and when no
 *    device is pending any more, adds a `task-finished` event to the stream, once (when the task's
 *    `finishedAt` is first set).
 * 6. Groups expire `findingRetention` after they were last seen, and the app's and the apps' indexes
 *    drop what was last seen before that, so what Redis keeps follows the lab's rate, not its age.
 *
 * KEYS: result, stream, apps index, app index, task, task signatures, summary, then per group: group,
 *   devices, tasks, apks.
 * ARGV: 1 result JSON with FINDINGS_SLOT, 2 runId, 3 stream max length, 4 taskId, 5 deviceId,
 *   6 status, 7 package, 8 now (ms), 9 now (ISO), 10 APK sha256 or '', 11 task retention (s),
 *   12 crashes, 13 anrs, 14 group count G, 15 finding count F, 16-18 caps (devices, tasks, apks),
 *   19 finding retention (s),
 *   then G × (signature, kind, exception, message, count, first ms, last ms, example),
 *   then F × (signature, finding JSON).
 * Returns { stream id or '', 1 when the task has no pending device else 0, the stored result when it
 *   was published before or '', the signatures new for the app joined by commas }.
 */
const SCRIPT = `#!lua
local GROUP_ARGS, HEAD = 8, 19
local function check(key, wanted)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= wanted then
    return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. t .. ', not a ' .. wanted .. '; nothing was written')
  end
end
local wanted = { 'string', 'stream', 'zset', 'zset', 'hash', 'hash', 'string' }
for i = 8, #KEYS do
  wanted[i] = ((i - 8) % 4 == 0) and 'hash' or 'zset'
end
for i = 1, #KEYS do
  local bad = check(KEYS[i], wanted[i])
  if bad then return bad end
end

local taskId, deviceId, now = ARGV[4], ARGV[5], ARGV[8]
local function taskDone()
  if redis.call('EXISTS', KEYS[5]) == 0 then return 0 end
  local fields = redis.call('HGETALL', KEYS[5])
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 7) == 'device:' and fields[i + 1] == 'pending' then return 0 end
  end
  return 1
end

local old = redis.call('GET', KEYS[1])
if old then
  local ok, prev = pcall(cjson.decode, old)
  if ok and type(prev) == 'table' and prev.runId == ARGV[2] then return { '', taskDone(), old, '' } end
end

local taskKnown = redis.call('EXISTS', KEYS[5]) == 1
local groups, findings = tonumber(ARGV[14]), tonumber(ARGV[15])
local caps = { tonumber(ARGV[16]), tonumber(ARGV[17]), tonumber(ARGV[18]) }
local isNew, newList, appLast = {}, {}, nil
local function remember(set, score, member, cap)
  redis.call('ZADD', set, score, member)
  redis.call('ZREMRANGEBYRANK', set, 0, -(cap + 1))
end
for g = 1, groups do
  local a = HEAD + (g - 1) * GROUP_ARGS
  local sig, last = ARGV[a + 1], ARGV[a + 7]
  local k = 7 + (g - 1) * 4
  local group = KEYS[k + 1]
  if redis.call('EXISTS', group) == 0 then
    redis.call('HSET', group, 'app', ARGV[7], 'signature', sig, 'kind', ARGV[a + 2], 'exception', ARGV[a + 3],
      'message', ARGV[a + 4], 'example', ARGV[a + 8], 'count', 0, 'firstSeen', ARGV[a + 6], 'lastSeen', last,
      'firstTask', taskId, 'firstDevice', deviceId, 'lastTask', taskId, 'lastDevice', deviceId)
  end
  redis.call('HINCRBY', group, 'count', ARGV[a + 5])
  -- A group missing a field (written by hand, say) takes this result's value instead of failing.
  if tonumber(ARGV[a + 6]) < tonumber(redis.call('HGET', group, 'firstSeen') or ARGV[a + 6]) then
    redis.call('HSET', group, 'firstSeen', ARGV[a + 6])
  end
  if tonumber(last) >= tonumber(redis.call('HGET', group, 'lastSeen') or last) then
    redis.call('HSET', group, 'lastSeen', last, 'lastTask', taskId, 'lastDevice', deviceId)
  end
  remember(KEYS[k + 2], last, deviceId, caps[1])
  remember(KEYS[k + 3], last, taskId, caps[2])
  if ARGV[10] ~= '' then remember(KEYS[k + 4], last, ARGV[10], caps[3]) end
  for j = 1, 4 do redis.call('EXPIRE', KEYS[k + j], ARGV[19]) end
  redis.call('ZADD', KEYS[4], redis.call('HGET', group, 'lastSeen'), sig)
  if appLast == nil or tonumber(last) > tonumber(appLast) then appLast = last end
  local fresh = redis.call('HGET', group, 'firstTask') == taskId
  isNew[sig] = fresh
  if fresh then newList[#newList + 1] = sig end
  if taskKnown then redis.call('HSETNX', KEYS[6], sig, fresh and 'new' or 'seen') end
end
if appLast then redis.call('ZADD', KEYS[3], 'GT', appLast, ARGV[7]) end
local cutoff = tonumber(now) - tonumber(ARGV[19]) * 1000
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. cutoff)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. cutoff)

local parts = {}
local f0 = HEAD + groups * GROUP_ARGS
for i = 1, findings do
  local sig, json = ARGV[f0 + 2 * i - 1], ARGV[f0 + 2 * i]
  parts[i] = string.sub(json, 1, -2) .. ',"newForApp":' .. (isNew[sig] and 'true' or 'false') .. '}'
end
local slot = '${FINDINGS_SLOT}'
local at = string.find(ARGV[1], slot, 1, true)
local result = string.sub(ARGV[1], 1, at - 1) .. '"findings":[' .. table.concat(parts, ',') .. ']' ..
  string.sub(ARGV[1], at + #slot)
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'taskId', taskId, 'deviceId', deviceId,
  'status', ARGV[6], 'runId', ARGV[2], 'result', result, 'event', 'result', 'newSignatures', table.concat(newList, ','))
redis.call('SET', KEYS[1], result)

local done = 0
if taskKnown then
  redis.call('HSET', KEYS[5], 'device:' .. deviceId, ARGV[6])
  redis.call('HINCRBY', KEYS[5], 'crashes', ARGV[12])
  redis.call('HINCRBY', KEYS[5], 'anrs', ARGV[13])
  local s = { taskId = taskId, packageName = redis.call('HGET', KEYS[5], 'package') or ARGV[7],
    devices = 0, completed = 0, failed = 0, cancelled = 0, pending = 0, deviceStatus = {},
    uniqueFindings = 0, newFindings = 0, crashes = tonumber(redis.call('HGET', KEYS[5], 'crashes')),
    anrs = tonumber(redis.call('HGET', KEYS[5], 'anrs')), updatedAt = ARGV[9] }
  local fields = redis.call('HGETALL', KEYS[5])
  for i = 1, #fields, 2 do
    if string.sub(fields[i], 1, 7) == 'device:' then
      local state = fields[i + 1]
      s.devices = s.devices + 1
      s.deviceStatus[string.sub(fields[i], 8)] = state
      if s[state] then s[state] = s[state] + 1 end
    end
  end
  for _, v in ipairs(redis.call('HVALS', KEYS[6])) do
    s.uniqueFindings = s.uniqueFindings + 1
    if v == 'new' then s.newFindings = s.newFindings + 1 end
  end
  s.finished = s.pending == 0
  if s.finished then done = 1 end
  local finishing = false
  if s.finished then
    finishing = redis.call('HSETNX', KEYS[5], 'finishedAt', ARGV[9]) == 1
    s.finishedAt = redis.call('HGET', KEYS[5], 'finishedAt')
  end
  s.junitUrl = redis.call('HGET', KEYS[5], 'junitUrl') or nil
  local ttl = tonumber(ARGV[11])
  local summary = cjson.encode(s)
  redis.call('SET', KEYS[7], summary, 'EX', ttl)
  redis.call('EXPIRE', KEYS[5], ttl)
  redis.call('EXPIRE', KEYS[6], ttl)
  if finishing then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'event', 'task-finished', 'taskId', taskId,
      'summary', summary)
  end
end
return { id, done, '', table.concat(newList, ',') }
`;

/** What the caller needs to run the publish script for one result. */
export interface PublishCall {
  script: string;
  keys: string[];
  args: string[];
}

/** Settings of a publish that are not in the result. */
export interface PublishSettings {
  prefix: string;
  streamMaxLen: number;
  taskRetentionSec: number;
  /** How long a group is kept after it was last seen, s. */
  findingRetentionSec: number;
  now?: Date;
}

/** Builds the keys and arguments of the publish script for one result. */
export function publishCall(result: TraversalResult, s: PublishSettings): PublishCall {
  const p = s.prefix;
  const now = s.now ?? new Date();
  // Results of runs from before findings existed carry none.
  const findings = result.findings ?? [];
  // A tool's clock (or its bug) must not date a group into the future, which would pin it there.
  const updates = groupUpdates(findings, now.getTime());
  const keys = [
    resultKey(result.taskId, result.deviceId, p),
    resultsStream(p),
    findingAppsKey(p),
    appFindingsKey(result.packageName ?? '', p),
    taskKey(result.taskId, p),
    taskSignaturesKey(result.taskId, p),
    taskSummaryKey(result.taskId, p),
  ];
  for (const u of updates) {
    const g = findingGroupKeys(result.packageName ?? '', u.signature, p);
    keys.push(g.group, g.devices, g.tasks, g.apks);
  }
  // The findings go in as separate arguments, spliced in by the script with their flags.
  const json = JSON.stringify({ ...result, findings: '@@findings@@' });
  if (!json.includes(FINDINGS_SLOT)) throw new Error('the result JSON lost its findings slot');
  const args = [
    json,
    result.runId,
    String(s.streamMaxLen),
    result.taskId,
    result.deviceId,
    result.status,
    result.packageName ?? '',
    String(now.getTime()),
    now.toISOString(),
    result.apk?.sha256 ?? '',
    String(Math.max(1, Math.round(s.taskRetentionSec))),
    String(result.crashes ?? 0),
    String(result.anrs ?? 0),
    String(updates.length),
    String(findings.length),
    String(GROUP_CAPS.devices),
    String(GROUP_CAPS.tasks),
    String(GROUP_CAPS.apks),
    String(Math.max(1, Math.round(s.findingRetentionSec))),
  ];
  for (const u of updates)
    args.push(
      u.signature,
      u.kind,
      u.exception,
      u.message,
      String(u.count),
      String(u.firstMs),
      String(u.lastMs),
      u.example,
    );
  for (const f of findings) args.push(f.signature, JSON.stringify(withoutFlag(f)));
  return { script: SCRIPT, keys, args };
}

/** What the script answered. */
export interface PublishReply {
  /** The new stream event's id; undefined when an earlier attempt had published this run. */
  streamId?: string;
  /** No device of the task is pending any more (false for a task no starter registered). */
  taskFinished: boolean;
  /** The signatures of the result that are new for the app. */
  newSignatures: string[];
}

/** Reads the script's reply. */
export function parseReply(reply: unknown): PublishReply {
  const [id, done, old, fresh] = reply as [string, number, string, string | undefined];
  // Published before: the stored result says which of its findings were new.
  const newSignatures = old
    ? [
        ...new Set(
          ((JSON.parse(old) as TraversalResult).findings ?? []).filter((f) => f.newForApp).map((f) => f.signature),
        ),
      ]
    : (fresh ?? '').split(',').filter(Boolean);
  return { streamId: id || undefined, taskFinished: Number(done) === 1, newSignatures };
}
