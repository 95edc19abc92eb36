// ESLint flat config: type-aware rules for the whole project, plus the import boundaries that keep
// the layout of docs/ARCHITECTURE.md true:
// - workflow code imports only workflow-safe modules: its own folder, contract/, and activity types;
// - nothing in contract/ imports upward (it is the floor every process stands on);
// - findings/ (grouping, reading back, JUnit) imports only contract/ and no Node built-in; it reads
//   Redis through a client it is handed;
// - production code (src/) never imports the simulators (sim/), the local stack (dev/) or the tests.
// Flat config does not merge one rule across blocks (the last block wins), so each block below
// repeats the src-wide patterns it builds on.
import tseslint from 'typescript-eslint';

const noHarness = {
  group: ['**/sim', '**/sim/*', '**/dev', '**/dev/*', '**/test', '**/test/*'],
  message: 'Production code never imports the simulators (sim/), the local stack (dev/) or the tests.',
};
const noNodeInWorkflows = { group: ['node:*'], message: 'Workflow code must not use Node built-ins.' };
const onlyContractInWorkflows = {
  group: ['../*', '!../contract', '!../contract/*', '!../activities', '!../activities/*'],
  message: 'Workflow code imports only its own folder and contract/ (plus activity types).',
};
const activityTypesOnly = {
  group: ['../activities', '../activities/*', '../activities/**'],
  allowTypeImports: true,
  message: 'Import activity types only (import type).',
};

export default tseslint.config(
  { ignores: ['lib/**', 'node_modules/**', '.tools/**', '.data/**', 'test/support/reporter.js', 'eslint.config.mjs'] },
  ...tseslint.configs.recommended,
  {
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
    },
  },
  {
    files: ['src/**/*.ts'],
    rules: { 'no-restricted-imports': ['error', { patterns: [noHarness] }] },
  },
  {
    files: ['src/workflows/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [noHarness, noNodeInWorkflows, onlyContractInWorkflows, activityTypesOnly],
          paths: ['fs', 'path', 'os', 'crypto', 'child_process', 'http', 'ioredis', 'undici'],
        },
      ],
    },
  },
  {
    files: ['src/findings/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            noHarness,
            { group: ['node:*'], message: 'findings/ is pure: no Node built-ins.' },
            { group: ['../*', '!../contract', '!../contract/*'], message: 'findings/ imports only contract/.' },
          ],
        },
      ],
    },
  },
  {
    files: ['src/contract/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            noHarness,
            { group: ['../*', '../**'], message: 'contract/ imports nothing of the project outside contract/.' },
          ],
        },
      ],
    },
  },
);
