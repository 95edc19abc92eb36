/**
 * Determinism guard: every history recorded in test/histories/ is replayed against the current
 * workflow code. A change that alters the commands of a running workflow fails here; put such
 * changes behind `patched()`. Recordings come from scripts/record-histories.ts; a file written by
 * `temporal workflow show -o json` (say, from production) can be dropped in as is.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { historyFromJSON, type History } from '@temporalio/common/lib/proto-utils';
import * as proto from '@temporalio/proto';
import { patchProtobufRoot } from '@temporalio/proto/lib/patch-protobuf-root';
import {
  bundleWorkflowCode,
  DefaultLogger,
  ReplayError,
  Worker,
  type WorkflowBundleWithSourceMap,
} from '@temporalio/worker';
import { DeterminismViolationError } from '@temporalio/workflow';
import { workflowBundle } from '../dev/stack';

const HISTORIES_DIR = path.join(__dirname, 'histories');

/** A recording: the wrapper the record script writes, or a bare `{ events: [...] }` history. */
interface Recording {
  file: string;
  workflowId: string;
  workflowType: string;
  history: History;
}

/**
 * The SDK's historyFromJSON checks `instanceof Type` against its own copy of protobufjs, while the
 * History type comes from @temporalio/proto's copy; when npm installs two copies (it does here, as
 * grpc's proto-loader pulls protobufjs 7 to the top) it throws "type must be a Type". The fallback
 * parses with the ProtoJSON code of the copy @temporalio/proto itself uses.
 */
function parseHistory(json: unknown): History {
  try {
    return historyFromJSON(json);
  } catch (err) {
    if (!(err instanceof TypeError && /must be a Type/.test(err.message))) throw err;
  }
  const requireFromProto = createRequire(require.resolve('@temporalio/proto'));
  const { fromJson } = requireFromProto('protobufjs/ext/protojson') as {
    fromJson(type: unknown, json: unknown, opts: { ignoreUnknownFields: boolean }): History;
  };
  const root = patchProtobufRoot(proto) as unknown as { lookupType(name: string): unknown };
  return fromJson(root.lookupType('temporal.api.history.v1.History'), json, { ignoreUnknownFields: true });
}

function readRecording(file: string): Recording {
  const doc = JSON.parse(readFileSync(path.join(HISTORIES_DIR, file), 'utf8')) as Record<string, unknown>;
  const wrapped = 'history' in doc;
  const json = (wrapped ? doc.history : doc) as {
    events?: { workflowExecutionStartedEventAttributes?: { workflowType?: { name?: string } } }[];
  };
  return {
    file,
    // Histories do not name their workflow id; a bare file replays under a placeholder.
    workflowId: wrapped ? String(doc.workflowId) : `replay/${file}`,
    workflowType: json.events?.[0]?.workflowExecutionStartedEventAttributes?.workflowType?.name ?? '?',
    history: parseHistory(json),
  };
}

describe('determinism guard: recorded histories replay on the current workflow code', function () {
  this.timeout(120_000);
  const files = readdirSync(HISTORIES_DIR)
    .filter((f) => f.endsWith('.json'))
    .sort();
  let bundle: WorkflowBundleWithSourceMap;

  before(async function () {
    // Builds the shared bundle and installs the test Runtime before any replay worker exists.
    bundle = await workflowBundle();
  });

  it('has recordings of both workflow types, at least three in all', function () {
    assert.ok(files.length >= 3, `expected at least 3 histories in ${HISTORIES_DIR}, found ${files.length}`);
    const types = new Set(files.map((f) => readRecording(f).workflowType));
    assert.ok(
      types.has('traversalWorkflow') && types.has('deviceWorkflow'),
      `workflow types recorded: ${[...types].join(', ')}`,
    );
  });

  for (const file of files) {
    it(`replays ${file}`, async function () {
      const rec = readRecording(file);
      assert.ok((rec.history.events?.length ?? 0) > 0, `${file} has events`);
      await Worker.runReplayHistory({ workflowBundle: bundle }, rec.history, rec.workflowId);
    });
  }

  it('can fail: a traversal history does not replay on code that swapped two steps', async function () {
    const changed = await bundleWorkflowCode({
      workflowsPath: require.resolve('./support/changed-workflows'),
      logger: new DefaultLogger('WARN'),
    });
    const rec = readRecording('traversal-completed.json');
    await assert.rejects(
      Worker.runReplayHistory({ workflowBundle: changed }, rec.history, rec.workflowId),
      (err: unknown) => {
        assert.ok(
          err instanceof DeterminismViolationError || err instanceof ReplayError,
          `unexpected error: ${String(err)}`,
        );
        assert.ok(
          err instanceof DeterminismViolationError,
          `a determinism violation, got ${(err as Error).name}: ${(err as Error).message}`,
        );
        assert.match(err.message, /prepareDevice|resolveApk|nondetermin/i);
        return true;
      },
    );
  });
});
