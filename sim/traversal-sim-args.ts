/**
 * DT_TRAVERSAL_EXTRA_ARGS for the traversal simulator jar (sim/traversal-sim) in tests, benchmarks
 * and record-histories: its speed and fault knobs, each value bounded. `--faults-once` takes a word,
 * never a path, so the marker file it creates stays in the run's own folder (the tool's working
 * directory). Not for production: these knobs make a run fail or hang on purpose.
 */
/** The simulator's knobs as a DT_TRAVERSAL_EXTRA_ARGS list. */
export const SIM_EXTRA_ARGS = [
  '--tick-ms <int:1-60000>',
  '--crashes <int:0-1000>',
  '--anrs <int:0-1000>',
  '--fail-at <int:0-100>',
  '--crash-at <int:0-100>',
  '--hang-at <int:0-100>',
  '--exit-code <int:0-255>',
  '--stderr-noise <int:0-1000000>',
  '--faults-once <word>',
].join(', ');
