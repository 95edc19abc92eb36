/**
 * The Temporal Web UI, driven by headless Chromium (Debian's chromium with playwright-core):
 * after a small run, the workflow list filtered by DeviceId shows it and its page shows the
 * static summary and current details; a run with findings shows them as a table while it runs and
 * when it is done (new or seen before), and the device's page lists its last results.
 * Screenshots go to test-output/; with UPDATE_DOCS_SCREENSHOTS=1 the findings pages also go to docs/.
 */
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { PROJECT_ROOT } from '../src/config';
import { freePort } from '../src/net/ports';
import { onFreePorts, startDevServer, type DevServer } from '../dev/temporal-dev';
import { deviceWorkflowId, traversalWorkflowId } from '../src/contract/messages';
import { startStack, task, type Stack } from '../dev/stack';

const CHROMIUM = '/usr/bin/chromium';
const OUT = path.join(PROJECT_ROOT, 'test-output');
const DOCS = path.join(PROJECT_ROOT, 'docs');

/** Saves a screenshot of the page into test-output/, and into docs/ when asked to refresh the docs' pictures. */
async function keep(page: Page, name: string): Promise<string> {
  const file = path.join(OUT, name);
  await page.screenshot({ path: file, fullPage: true });
  if (process.env.UPDATE_DOCS_SCREENSHOTS === '1') copyFileSync(file, path.join(DOCS, name));
  return file;
}

/** Opens a workflow run's User Metadata tab (summary and details); the UI's pages need the run id. */
async function openMetadata(page: Page, uiUrl: string, workflowId: string, runId: string): Promise<void> {
  await page.goto(`${uiUrl}/namespaces/default/workflows/${encodeURIComponent(workflowId)}/${runId}/history`);
  await page.getByText('User Metadata', { exact: true }).filter({ visible: true }).first().click({ timeout: 60_000 });
}

/** Polls every frame of the page until one shows `text`; false after `timeoutMs`. */
async function textInSomeFrame(page: Page, text: string, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    for (const frame of page.frames()) {
      const body = await frame
        .locator('body')
        .innerText({ timeout: 2000 })
        .catch(() => '');
      if (body.includes(text)) return true;
    }
    await page.waitForTimeout(500);
  }
  return false;
}

describe('the Temporal Web UI', function () {
  let server: DevServer;
  let stack: Stack;
  let browser: Browser;
  let dir: string;

  before(async function () {
    if (!existsSync(CHROMIUM))
      throw new Error(`${CHROMIUM} is missing: install Debian's chromium (scripts/setup.sh does)`);
    dir = mkdtempSync(path.join(os.tmpdir(), 'dt-ui-'));
    server = await startDevServer(
      await onFreePorts(path.join(dir, 'temporal.log'), {
        uiPort: await freePort(),
        dbFile: path.join(dir, 'temporal.db'),
      }),
    );
    stack = await startStack({
      devices: ['ui-1'],
      apks: [{ name: 'ui.apk', size: 1024 * 1024 }],
      starter: true,
      address: server.address,
    });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
      ],
    });
    mkdirSync(OUT, { recursive: true });
  });
  after(async function () {
    await browser?.close();
    await stack?.stop();
    await server?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('lists the run filtered by DeviceId and shows its summary and details on its page', async function () {
    await stack.push(
      task(stack, {
        taskId: 'ui-task',
        deviceId: 'ui-1',
        apkUrl: stack.apks['ui.apk']!.url,
        packageName: 'com.example.ui',
      }),
    );
    const result = await stack.waitResult('ui-task', 'ui-1');
    assert.equal(result.status, 'completed');
    const workflowId = traversalWorkflowId('ui-task', 'ui-1');

    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    const query = encodeURIComponent('DeviceId="ui-1" AND WorkflowType="traversalWorkflow"');
    await page.goto(`${server.uiUrl}/namespaces/default/workflows?query=${query}`);
    await page.getByText(workflowId).filter({ visible: true }).first().waitFor({ timeout: 60_000 });
    await page.screenshot({ path: path.join(OUT, 'web-ui-list.png'), fullPage: true });

    await page.goto(
      `${server.uiUrl}/namespaces/default/workflows/${encodeURIComponent(workflowId)}/${result.runId}/history`,
    );
    await page.getByText('User Metadata', { exact: true }).filter({ visible: true }).first().click({ timeout: 60_000 });
    // The UI renders summary and details as Markdown, sometimes inside an iframe: look in every frame.
    const summarySeen = await textInSomeFrame(page, 'com.example.ui on ui-1 (task ui-task)', 60_000);
    const detailsSeen = summarySeen && (await textInSomeFrame(page, 'com.example.ui on ui-1 — completed', 60_000));
    if (!summarySeen || !detailsSeen)
      await page.screenshot({ path: path.join(OUT, 'web-ui-failure.png'), fullPage: true });
    assert.ok(summarySeen, 'the static summary is shown (see test-output/web-ui-failure.png)');
    assert.ok(detailsSeen, 'the current details are shown (see test-output/web-ui-failure.png)');
    const shot = path.join(OUT, 'web-ui-workflow.png');
    await page.screenshot({ path: shot, fullPage: true });
    assert.ok(existsSync(shot));
    console.log(
      `      screenshots: ${path.relative(PROJECT_ROOT, OUT)}/web-ui-list.png, ${path.relative(PROJECT_ROOT, shot)}`,
    );
  });
  it('shows findings as they arrive, then by signature with new or seen, and the device\u2019s last results', async function () {
    const apkUrl = stack.apks['ui.apk']!.url;
    const run = (taskId: string, durationSec: number, crashes: number, anrs: number) =>
      task(stack, {
        taskId,
        deviceId: 'ui-1',
        apkUrl,
        packageName: 'com.example.ui',
        traversal: {
          durationSec,
          extraArgs: ['--tick-ms', '100', '--crashes', String(crashes), '--anrs', String(anrs)],
        },
      });
    // A first task meets three bugs; the second, watched while it runs, meets them again and two more.
    await stack.push(run('ui-first', 2, 2, 1));
    assert.equal((await stack.waitResult('ui-first', 'ui-1')).status, 'completed');
    await stack.push(run('ui-findings', 24, 3, 2));
    const workflowId = traversalWorkflowId('ui-findings', 'ui-1');
    const page = await browser.newPage({ viewport: { width: 1920, height: 1080 } });

    // While it runs: the page, reloaded, shows the findings found so far.
    let live = false;
    for (const deadline = Date.now() + 90_000; !live && Date.now() < deadline;) {
      const runId = await stack.client.workflow
        .getHandle(workflowId)
        .describe()
        .then((d) => d.runId)
        .catch(() => undefined);
      if (!runId) {
        await page.waitForTimeout(500);
        continue;
      }
      await openMetadata(page, server.uiUrl!, workflowId, runId).catch(() => undefined);
      live = await textInSomeFrame(page, 'Found so far (', 4000);
    }
    if (live) await keep(page, 'web-ui-running-findings.png');
    else await page.screenshot({ path: path.join(OUT, 'web-ui-failure.png'), fullPage: true });
    assert.ok(live, 'the running traversal shows its findings (see test-output/web-ui-failure.png)');

    const result = await stack.waitResult('ui-findings', 'ui-1', 120_000);
    assert.equal(result.status, 'completed');
    assert.equal(result.findings.length, 5);
    await openMetadata(page, server.uiUrl!, workflowId, result.runId);
    assert.deepEqual(
      result.findings.map((f) => f.newForApp).sort(),
      [false, false, false, true, true],
      'three bugs met before, two new',
    );
    const sig = result.findings.find((f) => f.newForApp)!.signature;
    const table = await textInSomeFrame(page, 'for the app', 60_000);
    const row = table && (await textInSomeFrame(page, sig, 10_000));
    const seen = row && (await textInSomeFrame(page, 'seen before', 10_000));
    const shot = await keep(page, 'web-ui-findings.png');
    assert.ok(table && row && seen, `the findings table with ${sig}, seen before (see ${shot})`);

    const device = await stack.client.workflow.getHandle(deviceWorkflowId('ui-1')).describe();
    await openMetadata(page, server.uiUrl!, deviceWorkflowId('ui-1'), device.runId);
    const recent =
      (await textInSomeFrame(page, 'Last results:', 60_000)) && (await textInSomeFrame(page, 'ui-findings', 10_000));
    const deviceShot = await keep(page, 'web-ui-device.png');
    assert.ok(recent, `the device lists its last results (see ${deviceShot})`);
    console.log(`      screenshots: test-output/web-ui-running-findings.png, web-ui-findings.png, web-ui-device.png`);
  });
});
