/** The device registry: a JSON file mapping device ids to agent URLs, plus a default agent. */
import { readFileSync } from 'node:fs';
import { checkHttpUrl, DEVICE_ID_PATTERN, type AgentDirectory } from './task';

/** Loads the registry file (if any); throws naming the file and the bad entry. */
export function loadDeviceRegistry(file: string, defaultAgentUrl = ''): AgentDirectory & { devices: string[] } {
  const map = new Map<string, string>();
  if (file) {
    let doc: unknown;
    try {
      doc = JSON.parse(readFileSync(file, 'utf8'));
    } catch (err) {
      throw new Error(`DT_DEVICE_REGISTRY=${file} cannot be read as JSON: ${(err as Error).message}`);
    }
    if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new Error(`${file}: expected an object {"deviceId": "http://agent"}`);
    for (const [id, url] of Object.entries(doc as Record<string, unknown>)) {
      if (!DEVICE_ID_PATTERN.test(id)) throw new Error(`${file}: device id ${JSON.stringify(id)} must match ${DEVICE_ID_PATTERN.source}`);
      const problem = checkHttpUrl(`agent of ${id}`, url);
      if (problem) throw new Error(`${file}: ${problem}`);
      map.set(id, (url as string).replace(/\/+$/, ''));
    }
  }
  if (defaultAgentUrl) {
    const problem = checkHttpUrl('DT_DEFAULT_AGENT_URL', defaultAgentUrl);
    if (problem) throw new Error(problem);
  }
  return {
    devices: [...map.keys()],
    agentFor: (deviceId) => map.get(deviceId) ?? (defaultAgentUrl ? defaultAgentUrl.replace(/\/+$/, '') : undefined),
  };
}
