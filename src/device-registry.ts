/**
 * The device registry: a JSON file mapping device ids to their agent (and, on a farm of hosts, the
 * host whose USB the phone hangs off), plus a default agent:
 *   {"sim-1": "http://10.0.0.5:7301", "pixel-7": {"agent": "http://10.0.0.6:7301", "host": "rack-b"}}
 */
import { readFileSync } from 'node:fs';
import { checkHttpUrl, DEVICE_ID_PATTERN } from './contract/ids';
import { HOST_ID_PATTERN } from './contract/messages';
import { UrlPolicy, type UrlPolicyOptions } from './net/url-policy';

/** Where device ids are looked up when a task names no agent. */
export interface AgentDirectory {
  /** Agent base URL for a device, or undefined when unknown. */
  agentFor(deviceId: string): string | undefined;
  /** True when the URL is one of the directory's agents (so a task may name it). */
  knows?(agentUrl: string): boolean;
  /** The host the registry says owns the phone, or undefined when it names none. */
  hostFor?(deviceId: string): string | undefined;
}

/** A loaded registry: lookups, its device ids and every agent URL it names (the default included). */
export type DeviceRegistry = AgentDirectory & { devices: string[]; agentUrls: string[] };

function normalise(url: string): string {
  return url.replace(/\/+$/, '');
}

/** Loads the registry file (if any); throws naming the file and the bad entry. */
export function loadDeviceRegistry(file: string, defaultAgentUrl = ''): DeviceRegistry {
  const map = new Map<string, string>();
  const hosts = new Map<string, string>();
  if (file) {
    let doc: unknown;
    try {
      doc = JSON.parse(readFileSync(file, 'utf8'));
    } catch (err) {
      throw new Error(`DT_DEVICE_REGISTRY=${file} cannot be read as JSON: ${(err as Error).message}`);
    }
    if (typeof doc !== 'object' || doc === null || Array.isArray(doc))
      throw new Error(`${file}: expected an object {"deviceId": "http://agent"}`);
    for (const [id, entry] of Object.entries(doc as Record<string, unknown>)) {
      if (!DEVICE_ID_PATTERN.test(id))
        throw new Error(`${file}: device id ${JSON.stringify(id).slice(0, 80)} must match ${DEVICE_ID_PATTERN.source}`);
      let url: unknown = entry;
      if (typeof entry === 'object' && entry !== null && !Array.isArray(entry)) {
        const { agent, host, ...rest } = entry as Record<string, unknown>;
        const extra = Object.keys(rest);
        if (extra.length)
          throw new Error(`${file}: device ${id} has unknown fields ${extra.join(', ')} (expected agent, host)`);
        if (host !== undefined) {
          if (typeof host !== 'string' || !HOST_ID_PATTERN.test(host))
            throw new Error(`${file}: host of ${id} must match ${HOST_ID_PATTERN.source}`);
          hosts.set(id, host);
        }
        url = agent;
      }
      const problem = checkHttpUrl(`agent of ${id}`, url);
      if (problem) throw new Error(`${file}: ${problem}`);
      map.set(id, normalise(url as string));
    }
  }
  if (defaultAgentUrl) {
    const problem = checkHttpUrl('DT_DEFAULT_AGENT_URL', defaultAgentUrl);
    if (problem) throw new Error(problem);
  }
  const agentUrls = [...new Set([...map.values(), ...(defaultAgentUrl ? [normalise(defaultAgentUrl)] : [])])];
  return {
    devices: [...map.keys()],
    agentUrls,
    agentFor: (deviceId) => map.get(deviceId) ?? (defaultAgentUrl ? normalise(defaultAgentUrl) : undefined),
    knows: (agentUrl) => agentUrls.includes(normalise(agentUrl)),
    hostFor: (deviceId) => hosts.get(deviceId),
  };
}

/**
 * The URL policy of a worker or starter: DT_ALLOWED_HOSTS plus the hosts of the agents the operator
 * configured (registry and default agent), which are trusted because they are configuration, not
 * task input. Throws naming DT_ALLOWED_HOSTS when an entry is malformed. `registry`: the one the
 * caller loaded already (read from the file when absent).
 */
export function urlPolicyFor(
  config: { allowedHosts: string; deviceRegistry: string; defaultAgentUrl: string },
  opts: UrlPolicyOptions = {},
  registry: DeviceRegistry = loadDeviceRegistry(config.deviceRegistry, config.defaultAgentUrl),
): UrlPolicy {
  const agentHosts = registry.agentUrls.map((u) => new URL(u).hostname);
  try {
    return new UrlPolicy([config.allowedHosts, ...agentHosts].filter(Boolean), opts);
  } catch (err) {
    throw new Error(`DT_ALLOWED_HOSTS=${config.allowedHosts} is invalid: ${(err as Error).message}`);
  }
}
