#!/usr/bin/env bash
# Builds the traversal simulator jar.
#   usage: build.sh [output-jar]   (default: <repo>/.tools/traversal-sim.jar)
# Does nothing when the jar is newer than every Java source file.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/../.." && pwd)"
src_dir="$here/src"
jar_path="${1:-$repo_root/.tools/traversal-sim.jar}"
main_class="devicetraversal.sim.TraversalSim"

mapfile -t sources < <(find "$src_dir" -type f -name '*.java' | sort)
if [ "${#sources[@]}" -eq 0 ]; then
  echo "traversal-sim: no Java sources under $src_dir" >&2
  exit 1
fi

if [ -f "$jar_path" ] && [ -z "$(find "$src_dir" -type f -name '*.java' -newer "$jar_path" -print -quit)" ]; then
  echo "traversal-sim: up to date ($jar_path)"
  exit 0
fi

mkdir -p "$(dirname "$jar_path")"
work="$(mktemp -d "${TMPDIR:-/tmp}/traversal-sim-build.XXXXXX")"
tmp_jar="$jar_path.tmp.$$"
cleanup() { rm -rf "$work"; rm -f "$tmp_jar"; }
trap cleanup EXIT

javac --release 17 -encoding UTF-8 -nowarn -d "$work/classes" "${sources[@]}"
jar --create --file "$tmp_jar" --main-class "$main_class" -C "$work/classes" .
# Rename into place so a concurrent reader never sees a half-written jar.
mv -f "$tmp_jar" "$jar_path"
echo "traversal-sim: built $jar_path from ${#sources[@]} source files"
