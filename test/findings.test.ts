/**
 * Finding signatures and merging: pure functions, tested on stacks shaped like the ones Android
 * prints (and the traversal simulator imitates), so the grouping rules are pinned down exactly.
 */
import assert from 'node:assert/strict';
import {
  findingsForResult,
  frameKey,
  mergeFindings,
  parseFindingLine,
  signatureFrames,
  signatureOf,
  toFinding,
} from '../src/activities/findings';
import type { Finding } from '../src/contract/messages';

const STACK = [
  'android.view.ViewRootImpl.setView(ViewRootImpl.java:1129)',
  'com.example.app.checkout.PaymentPresenter.confirmOrder(PaymentPresenter.java:206)',
  'com.example.app.checkout.CheckoutFragment.lambda$onViewCreated$1(CheckoutFragment.java:98)',
  'com.example.app.checkout.CheckoutFragment$$ExternalSyntheticLambda1.onClick(Unknown Source:2)',
  'com.example.app.checkout.CheckoutFragment.submit(CheckoutFragment.java:120)',
  'android.view.View.performClick(View.java:7451)',
  'android.os.Handler.dispatchMessage(Handler.java:102)',
  'android.os.Looper.loop(Looper.java:226)',
  'android.app.ActivityThread.main(ActivityThread.java:7659)',
  'java.lang.reflect.Method.invoke(Native Method)',
  'com.android.internal.os.ZygoteInit.main(ZygoteInit.java:950)',
];

describe('finding signatures', function () {
  it('reduce a frame to class.method and drop lambda and synthetic frames', function () {
    assert.equal(frameKey('at com.x.Foo.bar(Foo.java:12)'), 'com.x.Foo.bar');
    assert.equal(frameKey('com.x.Foo$Inner.run(Unknown Source:2)'), 'com.x.Foo$Inner.run');
    assert.equal(frameKey('com.x.Foo.lambda$onCreate$0(Foo.java:9)'), undefined);
    assert.equal(frameKey('com.x.Foo$$ExternalSyntheticLambda3.onClick(Unknown Source:2)'), undefined);
    assert.equal(frameKey('com.x.Foo$$Lambda$12/0x0000000801234.run(Unknown Source)'), undefined);
    assert.equal(
      frameKey('jdk.internal.reflect.GeneratedMethodAccessor123.invoke(Unknown Source)'),
      'jdk.internal.reflect.GeneratedMethodAccessor.invoke',
    );
  });

  it('hash the in-app frames only, in order, at most five', function () {
    assert.deepEqual(signatureFrames(STACK), [
      'com.example.app.checkout.PaymentPresenter.confirmOrder',
      'com.example.app.checkout.CheckoutFragment.submit',
    ]);
    const deep = Array.from({ length: 9 }, (_, i) => `com.example.app.Deep.level${i}(Deep.java:${i})`);
    assert.equal(signatureFrames(deep).length, 5);
  });

  it('fall back to the framework frames when a stack has no in-app frame', function () {
    const system = [
      'android.os.BinderProxy.transactNative(Native Method)',
      'android.os.BinderProxy.transact(BinderProxy.java:540)',
    ];
    assert.deepEqual(signatureFrames(system), [
      'android.os.BinderProxy.transactNative',
      'android.os.BinderProxy.transact',
    ]);
  });

  it('are equal for the same bug whatever the line numbers, message, addresses or lambda numbering', function () {
    const other = STACK.map((f) => f.replace(/:(\d+)\)/, (_m, n: string) => `:${Number(n) + 3})`)).map((f) =>
      f.replace('lambda$onViewCreated$1', 'lambda$onViewCreated$4'),
    );
    const a = signatureOf('crash', 'java.lang.IllegalStateException', STACK);
    assert.equal(
      signatureOf('crash', 'java.lang.IllegalStateException: token android.os.BinderProxy@b678a28 is not valid', other),
      a,
    );
    assert.match(a, /^[0-9a-f]{12}$/);
  });

  it('differ when the exception class, the kind or an in-app frame differs', function () {
    const a = signatureOf('crash', 'java.lang.IllegalStateException', STACK);
    assert.notEqual(signatureOf('crash', 'java.lang.NullPointerException', STACK), a);
    assert.notEqual(signatureOf('anr', 'java.lang.IllegalStateException', STACK), a);
    const moved = STACK.map((f) => f.replace('confirmOrder', 'cancelOrder'));
    assert.notEqual(signatureOf('crash', 'java.lang.IllegalStateException', moved), a);
    // Framework frames do not count when in-app frames exist.
    const otherFramework = STACK.map((f) => f.replace('performClick', 'performLongClick'));
    assert.equal(signatureOf('crash', 'java.lang.IllegalStateException', otherFramework), a);
  });
});

describe('finding records', function () {
  const pattern = /^FINDING (?<json>\{.*\})\s*$/;

  it('parse a tool line into a finding with a signature, capped strings and a safe screenshot path', function () {
    const raw = parseFindingLine(
      `FINDING ${JSON.stringify({ kind: 'crash', exception: 'java.lang.NullPointerException', message: 'x'.repeat(2000), frames: STACK, step: 12, screenshot: 'findings/crash-1.png' })}`,
      pattern,
    );
    assert.ok(raw);
    const f = toFinding(raw, 2, new Date('2026-01-01T00:00:00Z'));
    assert.ok(typeof f !== 'string', String(f));
    assert.equal(f.kind, 'crash');
    assert.equal(f.attempt, 2);
    assert.equal(f.step, 12);
    assert.equal(f.foundAt, '2026-01-01T00:00:00.000Z');
    assert.equal(f.screenshot, 'findings/crash-1.png');
    assert.ok(f.message.length <= 500);
    assert.equal(f.signature, signatureOf('crash', 'java.lang.NullPointerException', STACK));
  });

  it('reject malformed records and unsafe screenshot paths', function () {
    assert.equal(parseFindingLine('FINDING {not json}', pattern), undefined);
    assert.equal(parseFindingLine('PROGRESS percent=3', pattern), undefined);
    assert.equal(typeof toFinding({ kind: 'oops', exception: 'X' }, 1), 'string');
    assert.equal(typeof toFinding({ kind: 'crash' }, 1), 'string');
    for (const screenshot of ['../../etc/passwd', '/etc/passwd', 'a//b', 'a\\b']) {
      const f = toFinding({ kind: 'crash', exception: 'X', screenshot }, 1);
      assert.ok(typeof f !== 'string' && f.screenshot === undefined, screenshot);
    }
  });
});

describe('merging findings', function () {
  const f = (attempt: number, step: number, signature: string, kind: Finding['kind'] = 'crash'): Finding => ({
    kind,
    signature,
    exception: 'E',
    message: 'm',
    frames: ['a.B.c(B.java:1)'],
    step,
    attempt,
    foundAt: new Date(Date.UTC(2026, 0, 1, 0, 0, step)).toISOString(),
  });

  it('keeps a finding that a resumed attempt reported again once, from the earliest attempt', function () {
    const merged = mergeFindings([
      [f(1, 10, 'aaa'), f(1, 20, 'bbb')],
      [f(2, 20, 'bbb'), f(2, 30, 'ccc')],
    ]);
    assert.deepEqual(
      merged.map((x) => [x.step, x.signature, x.attempt]),
      [
        [10, 'aaa', 1],
        [20, 'bbb', 1],
        [30, 'ccc', 2],
      ],
    );
  });

  it('gives a result every occurrence, details once per signature, counts of the whole list', function () {
    const all = [f(1, 1, 'aaa'), f(1, 2, 'aaa'), f(1, 3, 'bbb', 'anr'), f(1, 4, 'ccc')];
    const r = findingsForResult(all, 3);
    assert.equal(r.findings.length, 3);
    assert.equal(r.omitted, 1);
    assert.deepEqual([r.crashes, r.anrs], [3, 1]);
    assert.deepEqual(r.findings[1]!.frames, [], 'a repeat carries no frames');
    assert.deepEqual(r.findings[0]!.frames, ['a.B.c(B.java:1)']);
  });
});
