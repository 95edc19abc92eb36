/**
 * The Markdown of the Web UI's details (src/contract/details.ts): pure functions, so their table
 * rules are pinned down here; the rendering itself is checked in headless Chromium (web-ui.e2e).
 */
import assert from 'node:assert/strict';
import {
  cell,
  code,
  deviceDetails,
  DETAILS_MAX_ROWS,
  finishedDetails,
  recentOf,
  runningDetails,
  shortClass,
} from '../src/contract/details';
import type { Finding, TraversalResult } from '../src/contract/messages';

function finding(i: number, over: Partial<Finding> = {}): Finding {
  return {
    kind: i % 2 ? 'anr' : 'crash',
    signature: i.toString(16).padStart(12, '0'),
    exception: 'java.lang.IllegalStateException',
    message: `bad state ${i}`,
    frames: [`at com.example.A${i}.run(A.java:1)`],
    attempt: 1,
    foundAt: '2026-12-01T10:00:00.000Z',
    ...over,
  };
}

function result(findings: Finding[]): TraversalResult {
  return {
    taskId: 't',
    deviceId: 'd',
    packageName: 'com.example.app',
    apkUrl: 'http://x/app.apk',
    status: 'completed',
    timings: {},
    screens: 12,
    crashes: findings.filter((f) => f.kind === 'crash').length,
    anrs: findings.filter((f) => f.kind === 'anr').length,
    findings,
    reportUrl: 'file:///sink/t/d.tar.gz',
    startedAt: '',
    finishedAt: '2026-12-01T10:05:00.000Z',
    workflowId: 'traversal/t/d',
    runId: 'r',
  };
}

/** The data rows (no header, no rule) of the Markdown tables in `md`. */
function rows(md: string): string[][] {
  const lines = md.split('\n').filter((l) => l.startsWith('| '));
  return lines.slice(1).map((l) =>
    l
      .slice(2, -2)
      .split(/(?<!\\) \| /)
      .map((c) => c.trim()),
  );
}

describe('Web UI details (Markdown)', function () {
  it('keeps a table cell on one line and its column breaks escaped', function () {
    assert.equal(cell('a | b\nc `d` <e>'), 'a \\| b c \\`d\\` \\<e\\>');
    // What an app prints never becomes a link, an image or emphasis.
    assert.equal(
      cell('![x](http://h/i.png) [y](http://h) *z* _w_'),
      '\\!\\[x\\]\\(http:\u200b//h/i.png\\) \\[y\\]\\(http:\u200b//h\\) \\*z\\* \\_w\\_',
    );
    // Nor does a bare address: a zero-width space breaks what a renderer would link.
    assert.equal(
      cell('see https://evil.example or www.evil.example, mail a@b.c'),
      'see https:\u200b//evil.example or www.\u200bevil.example, mail a@\u200bb.c',
    );
    assert.equal(code('a`b|c'), "`a'b\\|c`");
    assert.equal(cell('x'.repeat(100), 10), `${'x'.repeat(9)}…`);
    assert.equal(shortClass('android.view.WindowManager$BadTokenException'), 'WindowManager$BadTokenException');
    assert.equal(shortClass('ANR'), 'ANR');
  });

  it('groups a finished run by signature, with how often and new or seen before', function () {
    const a = finding(0, { newForApp: true });
    const repeat = { ...a, message: '', frames: [], foundAt: '2026-12-01T10:01:00.000Z' };
    const b = finding(1, { newForApp: false, message: 'pipe | in it' });
    const md = finishedDetails(result([a, repeat, b]));
    assert.match(md, /^\*\*com\.example\.app on d — completed\*\*/);
    assert.match(md, /Findings \(2 distinct\):/);
    const table = rows(md.slice(md.indexOf('Findings')));
    assert.deepEqual(table[0]!.slice(0, 5), ['crash', '`000000000000`', '**new**', '2', 'IllegalStateException']);
    assert.deepEqual(table[1]!.slice(0, 4), ['ANR', '`000000000001`', 'seen before', '1']);
    assert.equal(table[1]![5], 'pipe \\| in it');
    assert.match(md, /Report: `file:\/\/\/sink\/t\/d\.tar\.gz`/);
  });

  it('says when new or seen is not known yet, and caps the rows', function () {
    const many = Array.from({ length: DETAILS_MAX_ROWS + 7 }, (_, i) => finding(i));
    const md = finishedDetails(result(many), 'Redis has not taken the result');
    assert.equal(rows(md.slice(md.indexOf('Findings'))).length, DETAILS_MAX_ROWS, '20 rows');
    assert.match(md, /…and 7 more/);
    assert.match(md, /not known yet/);
    assert.match(md, /Redis has not taken the result/);
    assert.match(finishedDetails(result([])), /No crash or ANR found\./);
  });

  it('shows a running run as one line until something is found, then a table', function () {
    const h = { packageName: 'com.example.app', deviceId: 'd', phase: 'traversing', progress: ', 40%, 9 screens' };
    assert.equal(runningDetails(h, [], 0), 'com.example.app on d — traversing, 40%, 9 screens');
    const md = runningDetails(h, [finding(0), finding(1)], 3);
    assert.match(md, /Found so far \(5 distinct\):/);
    assert.match(md, /…and 3 more/);
    assert.equal(rows(md).length, 2);
  });

  it('lists a device\u2019s last results newest first, with the new findings of each', function () {
    const r1 = recentOf({ ...result([finding(0, { newForApp: true })]), taskId: 'first' });
    const r2 = recentOf({ ...result([finding(0, { newForApp: false })]), taskId: 'second' });
    assert.equal(r1.newFindings, 1);
    assert.equal(r2.newFindings, 0);
    assert.equal(recentOf({ ...result([finding(0)]) }).newFindings, undefined, 'not known before publishing');
    const md = deviceDetails('d: idle, 0 queued, 2 done', [r1, r2]);
    assert.deepEqual(
      rows(md).map((r) => r[0]),
      ['`second`', '`first`'],
    );
  });
});
