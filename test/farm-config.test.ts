/**
 * The settings of a farm, read the way a worker and a starter read them: the host's name, the
 * registry's host entries, Worker Deployment versioning. Pure parsing: no component to stand up.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { defaultHostId, loadConfig } from '../src/config';
import { hostTaskQueue } from '../src/contract/messages';
import { loadDeviceRegistry } from '../src/device-registry';

describe('farm settings', function () {
  let dir: string;
  before(() => (dir = mkdtempSync(path.join(os.tmpdir(), 'dt-farm-config-'))));
  after(() => rmSync(dir, { recursive: true, force: true }));

  const registry = (doc: unknown) => {
    const file = path.join(dir, `r-${Math.random().toString(36).slice(2)}.json`);
    writeFileSync(file, JSON.stringify(doc));
    return file;
  };

  it('names the host after the machine by default, made fit for a task queue name', function () {
    assert.equal(loadConfig({}).hostId, defaultHostId());
    assert.equal(defaultHostId('rack-a.lab.example'), 'rack-a.lab.example');
    assert.equal(defaultHostId('Lab Host #3'), 'Lab-Host--3');
    assert.equal(defaultHostId('__x'), 'x');
    assert.equal(defaultHostId('é'), 'host');
    assert.equal(defaultHostId('h'.repeat(100)).length, 64);
    assert.equal(hostTaskQueue('device-traversal', 'rack-a'), 'device-traversal/host/rack-a');
  });

  it('refuses a DT_HOST_ID that cannot end a task queue name, naming the variable', function () {
    assert.equal(loadConfig({ DT_HOST_ID: 'rack-b' }).hostId, 'rack-b');
    assert.throws(() => loadConfig({ DT_HOST_ID: 'rack/b' }), /DT_HOST_ID=rack\/b is invalid/);
    assert.throws(() => loadConfig({ DT_HOST_ID: '-rack' }), /DT_HOST_ID/);
    assert.throws(() => loadConfig({ DT_ROUTING: 'nearest' }), /DT_ROUTING/);
    assert.equal(loadConfig({ DT_ROUTING: 'any' }).routing, 'any');
    assert.equal(loadConfig({}).hostWaitMs, 60_000);
  });

  it('reads registry entries with a host beside the plain ones, and refuses bad ones with the file and device', function () {
    const r = loadDeviceRegistry(
      registry({ 'pixel-7': { agent: 'http://10.0.0.6:7301', host: 'rack-b' }, 'sim-1': 'http://10.0.0.5:7301' }),
    );
    assert.equal(r.agentFor('pixel-7'), 'http://10.0.0.6:7301');
    assert.equal(r.hostFor?.('pixel-7'), 'rack-b');
    assert.equal(r.agentFor('sim-1'), 'http://10.0.0.5:7301');
    assert.equal(r.hostFor?.('sim-1'), undefined, 'a plain entry names no host: the agent is asked');
    assert.deepEqual(r.agentUrls.sort(), ['http://10.0.0.5:7301', 'http://10.0.0.6:7301']);
    assert.throws(
      () => loadDeviceRegistry(registry({ p: { agent: 'http://10.0.0.6:7301', host: 'a/b' } })),
      /host of p must match/,
    );
    assert.throws(
      () => loadDeviceRegistry(registry({ p: { agent: 'http://10.0.0.6:7301', rack: 'x' } })),
      /device p has unknown fields rack/,
    );
    assert.throws(() => loadDeviceRegistry(registry({ p: { host: 'rack-a' } })), /agent of p/);
  });

  it('takes Worker Deployment versioning only with both its name and a build id', function () {
    const c = loadConfig({ DT_WORKER_DEPLOYMENT: 'lab', DT_BUILD_ID: '2026.12.1' });
    assert.equal(c.workerDeployment, 'lab');
    assert.equal(c.buildId, '2026.12.1');
    assert.throws(() => loadConfig({ DT_WORKER_DEPLOYMENT: 'lab' }), /go together/);
    assert.throws(() => loadConfig({ DT_BUILD_ID: 'v2' }), /go together/);
    assert.throws(() => loadConfig({ DT_WORKER_DEPLOYMENT: 'lab', DT_BUILD_ID: 'v 2' }), /DT_BUILD_ID=v 2 is invalid/);
  });
});
