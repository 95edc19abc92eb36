// ESLint flat config: type-aware rules for the whole project, and a guard that keeps Node
// built-ins and activity implementations out of workflow code (it must stay deterministic).
import tseslint from 'typescript-eslint';

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
    files: ['src/workflows/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            { group: ['node:*'], message: 'Workflow code must not use Node built-ins.' },
            { group: ['../activities', '../activities/*'], allowTypeImports: true, message: 'Import activity types only (import type).' },
          ],
          paths: ['fs', 'path', 'os', 'crypto', 'child_process', 'http', 'ioredis', 'undici'],
        },
      ],
    },
  },
);
