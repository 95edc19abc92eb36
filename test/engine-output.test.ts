/**
 * The Monkey/Fastbot output parser on texts in the tools' own formats (AOSP Monkey's stdout and
 * stderr, Fastbot's prefixed lines and its crash-dump.log records), written here from the formats
 * described in /work/shared/research/engines-and-devices.md §1.2 and §1.4.
 */
import assert from 'node:assert/strict';
import { toFinding } from '../src/activities/findings';
import { MonkeyOutput, type OutputStream } from '../src/activities/traversal/engines/monkey-output';
import type { RawFinding } from '../src/activities/findings';

/** Feeds lines tagged `out:` / `err:` (or untagged stdout) in the order given; returns the findings. */
function feedAll(parser: MonkeyOutput, text: string): RawFinding[] {
  const found: RawFinding[] = [];
  for (const tagged of text.split('\n')) {
    const m = /^(out|err):(.*)$/.exec(tagged);
    const stream: OutputStream = m?.[1] === 'err' ? 'stderr' : 'stdout';
    found.push(...parser.feed(stream, m ? m[2]! : tagged));
  }
  found.push(...parser.end());
  return found;
}

const header = [
  'out::Monkey: seed=42 count=1000',
  'out::AllowPackage: com.example.app',
  'out::IncludeCategory: android.intent.category.LAUNCHER',
  'out:// Event percentages:',
  'out://   0: 15.0%',
  'out::Switch: #Intent;action=android.intent.action.MAIN;end',
  'out:    // Allowing start of Intent { cmp=com.example.app/.Main } in package com.example.app',
].join('\n');

function crashBlock(exception: string, frames: string[], prefix = 'err:'): string {
  return [
    `// CRASH: com.example.app (pid 4242)`,
    `// Short Msg: ${exception}`,
    `// Long Msg: ${exception}: it broke`,
    `// Build Label: google/sdk_gphone/generic:11/RSR1/123:userdebug/dev-keys`,
    `// Build Changelist: 123`,
    `// Build Time: 1600000000000`,
    `// ${exception}: it broke`,
    ...frames.map((f) => `// \tat ${f}`),
    `// `,
  ]
    .map((l) => prefix + l)
    .join('\n');
}

describe('the Monkey output parser', function () {
  it('reads a finished run: events, no findings, finished', function () {
    const p = new MonkeyOutput();
    const text = [
      header,
      'out:    //[calendar_time:2024-01-01 10:00:00.000  system_uptime:1000]',
      'out:    // Sending event #100',
      'out::Sending Touch (ACTION_DOWN): 0:(100.0,200.0)',
      'out:    // Sending event #200',
      'out:Events injected: 250',
      'out::Sending rotation degree=0, persist=false',
      'out::Dropped: keys=0 pointers=0 trackballs=0 flips=0 rotations=0',
      'out:## Network stats: elapsed time=1000ms (0ms mobile, 0ms wifi, 1000ms not connected)',
      'out:// Monkey finished',
    ].join('\n');
    assert.deepEqual(feedAll(p, text), []);
    assert.equal(p.events, 250);
    assert.equal(p.finished, true);
    assert.equal(p.aborted, false);
    assert.equal(p.neverRan, undefined);
  });

  it('turns a crash with 30+ frames into one finding: exception class from the Long Msg, frames without "// "', function () {
    const frames = Array.from({ length: 34 }, (_, i) =>
      i < 3
        ? `com.example.app.Screen${i}.onClick(Screen${i}.java:${10 + i})`
        : `android.view.View.performClick${i}(View.java:7000)`,
    );
    const p = new MonkeyOutput();
    const found = feedAll(
      p,
      [
        header,
        'out:    // Sending event #300',
        crashBlock('java.lang.IllegalStateException', frames),
        'err:** Monkey aborted due to error.',
        'out:Events injected: 312',
        'err:** System appears to have crashed at event 312 of 1000 using seed 42',
      ].join('\n'),
    );
    assert.equal(found.length, 1);
    const raw = found[0]!;
    assert.equal(raw.kind, 'crash');
    assert.equal(raw.exception, 'java.lang.IllegalStateException');
    assert.match(String(raw.message), /^it broke \(in com\.example\.app \(pid 4242\)\)$/);
    assert.equal((raw.frames as string[]).length, 34);
    assert.equal((raw.frames as string[])[0], 'at com.example.app.Screen0.onClick(Screen0.java:10)');
    assert.ok((raw.frames as string[]).every((f) => !f.startsWith('//')));
    assert.equal(p.aborted, true);
    assert.equal(p.crashes, 1);
    assert.equal(p.events, 312);
    const finding = toFinding(raw, 1);
    assert.ok(typeof finding !== 'string');
    assert.equal(finding.frames.length, 30, 'toFinding caps the frames');
    assert.match(finding.signature, /^[0-9a-f]{12}$/);
  });

  it('keeps a block on stderr whole while stdout lines arrive between its lines', function () {
    const p = new MonkeyOutput();
    const block = crashBlock('java.lang.NullPointerException', [
      'com.example.app.A.b(A.java:1)',
      'com.example.app.C.d(C.java:2)',
    ]).split('\n');
    // stdout's progress lines interleave with the stderr block, as two pipes read apart deliver them.
    const mixed = [
      block[0],
      'out:    // Sending event #400',
      block[1],
      block[2],
      'out::Sending Touch (ACTION_UP): 0:(1.0,2.0)',
      ...block.slice(3),
      'err:** Monkey aborted due to error.',
    ];
    const found = feedAll(p, mixed.join('\n'));
    assert.equal(found.length, 1);
    assert.equal(found[0]!.exception, 'java.lang.NullPointerException');
    assert.deepEqual(found[0]!.frames, ['at com.example.app.A.b(A.java:1)', 'at com.example.app.C.d(C.java:2)']);
    assert.equal(p.events, 400);
  });

  it('closes a block at a new block, and two crashes of one bug share a signature', function () {
    const p = new MonkeyOutput();
    const frames = ['com.example.app.A.b(A.java:1)'];
    const two =
      crashBlock('java.lang.RuntimeException', frames) +
      '\n' +
      crashBlock('java.lang.RuntimeException', ['com.example.app.A.b(A.java:99)']);
    const found = feedAll(p, two);
    assert.equal(found.length, 2);
    const [a, b] = found.map((r) => toFinding(r, 1));
    assert.ok(typeof a === 'object' && typeof b === 'object', `both are findings: ${String(a)}, ${String(b)}`);
    assert.match(a.signature, /^[0-9a-f]{12}$/);
    assert.equal(a.signature, b.signature, 'line numbers do not split a signature');
  });

  it("turns an ANR block (header, reason, unprefixed process stats and traces) into an ANR finding with main's frames", function () {
    const p = new MonkeyOutput();
    const found = feedAll(
      p,
      [
        'out:    // Sending event #500',
        'err:// NOT RESPONDING: com.example.app (pid 4243)',
        'err:ANR in com.example.app (com.example.app/.Main)',
        'err:PID: 4243',
        'err:Reason: Input dispatching timed out (Waiting to send non-key event)',
        'err:Load: 1.2 / 0.9 / 0.5',
        'err:CPU usage from 5000ms to 0ms ago:',
        'err:  12% 4243/com.example.app: 10% user + 2% kernel',
        'err:anr traces:',
        'err:----- pid 4243 at 2024-01-01 10:00:00 -----',
        'err:Cmd line: com.example.app',
        'err:"main" prio=5 tid=1 Blocked',
        'err:  at com.example.app.Main.onClick(Main.java:3)',
        'err:"Signal Catcher" daemon prio=5 tid=2 Runnable',
        'err:  at dalvik.system.NativeStart.run(Native Method)',
        'err:----- end 4243 -----',
        'err:// ',
        'out:    // Sending event #600',
      ].join('\n'),
    );
    assert.equal(found.length, 1);
    assert.equal(found[0]!.kind, 'anr');
    assert.equal(found[0]!.exception, 'ANR');
    assert.match(String(found[0]!.message), /^Input dispatching timed out.* \(in com\.example\.app \(pid 4243\)\)$/);
    assert.deepEqual(found[0]!.frames, ['at com.example.app.Main.onClick(Main.java:3)'], "main's frames only");
    assert.equal(p.anrs, 1);
    assert.equal(p.events, 600);
    assert.ok(typeof toFinding(found[0]!, 1) !== 'string');
  });

  it('tells a tool that never ran from one that aborted after a crash', function () {
    for (const line of [
      '** No activities found to run, monkey aborted.',
      'Error: Could not find or load main class com.android.commands.monkey.Monkey',
      '** Error: Unknown option: --bogus',
      '/system/bin/sh: monkey: not found',
    ]) {
      const p = new MonkeyOutput();
      feedAll(p, `out::Monkey: seed=1 count=10\nerr:${line}\nerr:** Monkey aborted due to error.`);
      assert.equal(p.neverRan, line, line);
    }
    const crashed = new MonkeyOutput();
    feedAll(
      crashed,
      `out:    // Sending event #100\n${crashBlock('java.lang.Error', [])}\nerr:** Monkey aborted due to error.`,
    );
    assert.equal(crashed.neverRan, undefined);
    assert.equal(crashed.aborted, true);
    assert.equal(crashed.crashes, 1);
  });

  it("notices adb's words for a phone that went away", function () {
    for (const line of ['error: device offline', 'error: closed', "error: device '127.0.0.1:5555' not found"]) {
      const p = new MonkeyOutput();
      feedAll(p, `out:    // Sending event #100\nerr:${line}`);
      assert.equal(p.deviceGone, line);
    }
  });

  it("reads Fastbot's prefixed lines: progress, a crash on stderr in timed mode, the end", function () {
    const p = new MonkeyOutput();
    const found = feedAll(
      p,
      [
        'out:[Fastbot][2024-01-01 10:00:00.000] Fastbot start',
        'out:[Fastbot][2024-01-01 10:00:01.000]  // Sending event #100',
        'err:[Fastbot]*** ERROR *** // CRASH: com.example.app (pid 777) (elapsed nanos: 123456)',
        'err:[Fastbot]*** ERROR *** // Version: 12',
        'err:[Fastbot]*** ERROR *** // Short Msg: java.lang.ArithmeticException',
        'err:[Fastbot]*** ERROR *** // Long Msg: java.lang.ArithmeticException: divide by zero',
        'err:[Fastbot]*** ERROR *** // java.lang.ArithmeticException: divide by zero',
        'err:[Fastbot]*** ERROR *** // \tat com.example.app.Calc.div(Calc.java:5)',
        'err:[Fastbot]*** ERROR *** // ',
        'out:[Fastbot][2024-01-01 10:00:02.000] Encounter abort but we are in continuous mode.',
        'out:[Fastbot][2024-01-01 10:00:03.000]  // Sending event #200',
        'out:[Fastbot][2024-01-01 10:01:00.000] Activity of Coverage: 50.0%',
        'out:[Fastbot][2024-01-01 10:01:00.000] // App appears 1 crash, 0 anr, monkey using seed: 7',
        'out:[Fastbot][2024-01-01 10:01:00.000] // Monkey finished',
      ].join('\n'),
    );
    assert.equal(found.length, 1);
    assert.equal(found[0]!.exception, 'java.lang.ArithmeticException');
    assert.deepEqual(found[0]!.frames, ['at com.example.app.Calc.div(Calc.java:5)']);
    assert.equal(p.events, 200);
    assert.equal(p.finished, true);
    assert.equal(p.aborted, false);
  });
});
