/**
 * `npm run bench [-- scenario… [options]]`: runs benchmark scenarios and writes, per scenario,
 * bench/results/<scenario>.md and .json (plus charts the scenario draws). With no scenario it runs
 * memory, dedupe, download, throughput, phones and findings; `chaos` and `history` run only when named. `--quick` shrinks every
 * scenario. Ctrl-C stops every server and process the run started.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { PROJECT_ROOT } from '../src/config';
import { findTemporalCli } from '../dev/temporal-dev';
import { machineInfo, say, type Machine, type ScenarioRun } from './lib/report';
import { closeAllScopes } from '../dev/scope';

const SCENARIOS = ['memory', 'dedupe', 'download', 'throughput', 'phones', 'findings', 'chaos', 'history'] as const;
type ScenarioName = (typeof SCENARIOS)[number];
const DEFAULT_RUN: ScenarioName[] = ['memory', 'dedupe', 'download', 'throughput', 'phones', 'findings'];

const USAGE = `usage: npm run bench -- [${SCENARIOS.join('|')}]… [--quick] [scenario options]
  no scenario: ${DEFAULT_RUN.join(', ')} (chaos and history only when named)
  --quick      smaller matrices (a few minutes in all)
  options of each scenario are described at the top of bench/scenarios/<name>.ts; see docs/BENCHMARKS.md`;

function load(name: ScenarioName): ScenarioRun {
  // Loaded lazily, so a scenario that is not run cannot break the others (chaos lives in its own file).
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const mod = require(`./scenarios/${name}`) as { run?: ScenarioRun };
  if (typeof mod.run !== 'function') throw new Error(`bench/scenarios/${name}.ts does not export run()`);
  return mod.run;
}

function machineLine(m: Machine): string {
  return `${m.cpu}, ${m.cores} cores, ${m.ramGiB} GiB RAM, ${m.os} (kernel ${m.kernel}); node ${m.node}, ${m.java}, ${m.python}, ${m.temporalCli}; commit ${m.commit}; ${m.at}`;
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const named = argv.filter((a) => (SCENARIOS as readonly string[]).includes(a)) as ScenarioName[];
  const unknown = argv.filter(
    (a, i) => !a.startsWith('-') && !(SCENARIOS as readonly string[]).includes(a) && !argv[i - 1]?.startsWith('--'),
  );
  if (unknown.length) throw new Error(`unknown scenario ${unknown.join(', ')}\n${USAGE}`);
  const options = argv.filter((a) => !(SCENARIOS as readonly string[]).includes(a));
  // --tag X writes <scenario>-X.md/.json, so experiments do not overwrite the reference results.
  const tagAt = options.indexOf('--tag');
  const tag = tagAt >= 0 ? options[tagAt + 1] : undefined;
  if (tagAt >= 0 && (!tag || !/^[A-Za-z0-9._-]+$/.test(tag)))
    throw new Error('--tag needs a name of letters, digits, dot, dash or underscore');
  const scenarios = named.length ? named : DEFAULT_RUN;
  const resultsDir = path.join(PROJECT_ROOT, 'bench', 'results');
  mkdirSync(resultsDir, { recursive: true });

  let interrupted = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (interrupted) process.exit(130);
    interrupted = true;
    process.stderr.write(`\n[bench] ${sig}: stopping everything the benchmark started…\n`);
    void closeAllScopes().then(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  let cli: string | undefined;
  try {
    cli = findTemporalCli();
  } catch {
    cli = undefined;
  }
  const machine = machineInfo(cli);
  say(`machine: ${machineLine(machine)}`);
  const failures: string[] = [];
  for (const name of scenarios) {
    const t0 = Date.now();
    say(`scenario ${name} ${options.join(' ')}`.trim());
    try {
      const { markdown, json, file: fileName } = await load(name)({ args: options, resultsDir });
      const seconds = Math.round((Date.now() - t0) / 1000);
      const command = `npm run bench -- ${name}${options.length ? ` ${options.join(' ')}` : ''}`;
      const md = `# Benchmark: ${name}\n\nCommand: \`${command}\` (${seconds} s)\n\nMachine: ${machineLine(machine)}\n\n${markdown.trim()}\n`;
      const file = tag ? `${fileName ?? name}-${tag}` : (fileName ?? name);
      writeFileSync(path.join(resultsDir, `${file}.md`), md);
      writeFileSync(
        path.join(resultsDir, `${file}.json`),
        `${JSON.stringify({ scenario: name, command, seconds, machine, results: json }, null, 2)}\n`,
      );
      process.stdout.write(`\n${md}\n`);
      say(`scenario ${name} done in ${seconds} s → bench/results/${file}.md`);
    } catch (err) {
      failures.push(name);
      process.stderr.write(
        `[bench] scenario ${name} failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
      );
    }
    if (interrupted) break;
  }
  await closeAllScopes();
  if (failures.length) throw new Error(`scenarios failed: ${failures.join(', ')}`);
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`bench failed: ${err instanceof Error ? err.message : String(err)}\n`);
    void closeAllScopes().finally(() => process.exit(1));
  },
);
