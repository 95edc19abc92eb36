/**
 * The Temporal Web UI, driven by headless Chromium (Debian's chromium with playwright-core):
 * after a small run, the workflow list filtered by DeviceId shows it and its page shows the
 * static summary and current details. Screenshots go to test-output/.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium, type Browser, type Page } from 'playwright-core';
import { PROJECT_ROOT } from '../src/config';
import { freePort } from '../src/net/ports';
import { onFreePorts, startDevServer, type DevServer } from '../dev/temporal-dev';
import { traversalWorkflowId } from '../src/contract/messages';
import { startStack, task, type Stack } from '../dev/stack';

const CHROMIUM = '/usr/bin/chromium';
const OUT = path.join(PROJECT_ROOT, 'test-output');

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
});
