/**
 * The workflow bundle of the current source, built once per process. Workers spawned from the
 * source load it from a file through DT_WORKFLOW_BUNDLE instead of each bundling again (seconds of
 * CPU per start on a small machine); lib/workflow-bundle.js is not used here, as it may be stale.
 */
import { bundleWorkflowCode, DefaultLogger, type WorkflowBundleWithSourceMap } from '@temporalio/worker';
import { rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

let bundle: Promise<WorkflowBundleWithSourceMap> | undefined;
let file: Promise<string> | undefined;

/** The bundle of src/workflows as it is now. */
export function currentWorkflowBundle(): Promise<WorkflowBundleWithSourceMap> {
  bundle ??= bundleWorkflowCode({
    workflowsPath: require.resolve('../src/workflows'),
    logger: new DefaultLogger('WARN'),
  });
  return bundle;
}

/** {@link currentWorkflowBundle} written to a temporary file, removed when this process exits. */
export function currentBundleFile(): Promise<string> {
  file ??= (async () => {
    const { code } = await currentWorkflowBundle();
    const out = path.join(os.tmpdir(), `dt-bundle-${process.pid}.js`);
    writeFileSync(out, code);
    process.once('exit', () => rmSync(out, { force: true }));
    return out;
  })();
  return file;
}
