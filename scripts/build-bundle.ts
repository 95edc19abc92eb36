/** Prebuilds the workflow bundle into lib/workflow-bundle.js, so workers skip webpack at start (memory and time). */
import { bundleWorkflowCode } from '@temporalio/worker';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { PROJECT_ROOT } from '../src/config';

async function main(): Promise<void> {
  const out = process.argv[2] ?? path.join(PROJECT_ROOT, 'lib', 'workflow-bundle.js');
  const { code } = await bundleWorkflowCode({ workflowsPath: require.resolve('../src/workflows') });
  mkdirSync(path.dirname(out), { recursive: true });
  writeFileSync(out, code);
  console.log(
    `[setup] workflow bundle written to ${path.relative(PROJECT_ROOT, out)} (${(code.length / 1024).toFixed(0)} KiB)`,
  );
}

main().catch((err) => {
  console.error(`bundle build failed: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
