#!/usr/bin/env bash
# Runs every test of the given files on its own (mocha --fgrep on its full title), to find tests that pass
# only after an earlier test of the same file (a test whose name mentions "earlier test" is skipped: it
# says so). Prints one line per test; exits non-zero if any failed alone.
# Usage: bash scripts/tests-alone.sh test/sims.test.ts [more files]
set -u
cd "$(dirname "$0")/.."
failed=0
for file in "$@"; do
  out=$(mktemp)
  npx mocha --dry-run --reporter json --reporter-option "output=$out" "$file" >/dev/null 2>&1
  mapfile -t titles < <(python3 -c "import json,sys; [print(t['fullTitle']) for t in json.load(open(sys.argv[1]))['tests']]" "$out")
  rm -f "$out"
  for t in "${titles[@]}"; do
    # A test may rely on earlier ones when its name says so.
    if [[ "$t" == *"earlier test"* ]]; then
      echo "named       $file › $t"
      continue
    fi
    log=$(mktemp)
    if npx mocha --fgrep "$t" "$file" >"$log" 2>&1 && grep -q '1 passing' "$log"; then
      echo "alone ok    $file › $t"
    else
      echo "alone FAIL  $file › $t  (log $log)"
      failed=1
      continue
    fi
    rm -f "$log"
  done
done
exit $failed
