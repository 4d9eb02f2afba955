#!/usr/bin/env bash
# Switching the numeric backend on one store (issue 16): a store built by one build of palpipe
# and run again by the other must end up as a fresh run of the other build leaves it.
# The fingerprint of every stage whose numbers depend on the matrix products (train, eval,
# adapt) names the backend, so the second build reruns exactly those stages (README.md,
# "Numeric backend"). Per pipeline, with P = the plain build and M = the MKL build:
#
#   1. P runs the pipeline into store S;
#   2. M's --dry-run on S must plan every train, eval and adapt stage and skip the rest;
#   3. M runs on S; M runs the pipeline into a fresh store F;
#   4. S and F must hold byte-identical checkpoints and equal `metrics_json` per model, and
#      give the same `palpipe eval --json`;
#   5. then back: P runs on S again, P runs into a fresh store G, and S must equal G the same way.
#
# The check only means something where the two builds' numbers differ: the script also says
# whether P's and M's checkpoints differ (if they did not, a stale model would pass unseen).
#
#   bash scripts/backend-switch.sh PLAIN_BIN MKL_BIN [OUT] [PIPELINE …]
#
# OUT (default /tmp/palpipe-backend-switch) must be new, empty, or a folder this script made
# before (it is emptied). The pipelines default to demo and synthetic (neither needs model
# files; a pipeline with an `embed` stage keeps its vectors across builds by design, so its
# store is not expected to equal a fresh one). The comparison runs `palpipe eval` on every
# split of both stores, which records those evaluations in their `models` rows, alike on both
# sides. Prints one line per step and one verdict per comparison; exits 1 when a run fails or
# anything differs, 2 on bad usage or when a build is not the one named.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 2 ] || { sed -n '2,/^set -u/p' "$0" | sed 's/^# \{0,1\}//;/^set -u/d' >&2; exit 2; }
P=$1 M=$2
OUT=${3:-/tmp/palpipe-backend-switch}
shift $(( $# > 3 ? 3 : $# ))
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(demo synthetic)
status=0

for bin in "$P" "$M"; do
  [ -x "$bin" ] || { echo "error: $bin is not an executable file" >&2; exit 2; }
done
backend() { "$1" --version | sed -n 's/.*numeric backend: \([a-z]*\).*/\1/p'; }
[ "$(backend "$P")" = candle ] || { echo "error: $P is not the plain build: $("$P" --version)" >&2; exit 2; }
[ "$(backend "$M")" = mkl ] || { echo "error: $M is not the MKL build: $("$M" --version)" >&2; exit 2; }
MARK=.palpipe-backend-switch
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT")" ] && [ ! -e "$OUT/$MARK" ]; then
  echo "error: $OUT is not empty and was not made by this script; give a new folder" >&2; exit 2
fi
rm -rf "$OUT" && mkdir -p "$OUT" && touch "$OUT/$MARK"

# Runs pipeline $3 with build $2 into store $4 and prints "$1 rc=…"; a failed run fails the
# check (its log is $4.log).
run() {
  local what=$1 bin=$2 name=$3 store=$4
  "$bin" run "$root/pipelines/$name.yaml" --store "$store" --quiet >> "$store.log" 2>&1
  local rc=$?
  echo "$name: $what: rc=$rc"
  [ $rc -eq 0 ] || { echo "  RUN FAILED: see $store.log"; status=1; }
}
# sha256 of every checkpoint file under a store, by relative path.
digest() { (cd "$1" && find . -name '*.safetensors' | sort | xargs -r sha256sum); }
# What a store's models recorded, and what scoring its checkpoints gives now.
contents() {
  local bin=$1 store=$2
  "$bin" sql "SELECT name, metrics_json FROM models ORDER BY name" --format csv \
    --store "$store" --quiet 2>&1
  for s in $("$bin" sql "SELECT DISTINCT name FROM splits ORDER BY name" --format csv \
      --store "$store" --quiet 2>/dev/null | tail -n +2); do
    "$bin" eval --split "$s" --store "$store" --json --quiet 2>&1
  done
}
# Store $2 (last written by build $1) against fresh store $3 of the same build.
same() {
  local bin=$1 a=$2 b=$3 what=$4
  local da db
  da=$(digest "$a"); db=$(digest "$b")
  if [ -n "$da" ] && [ "$da" = "$db" ]; then
    echo "  $what: $(grep -c . <<< "$da") checkpoints byte-identical to a fresh run's"
  else
    echo "  $what: CHECKPOINTS DIFFER from a fresh run's (or none)"; status=1
  fi
  if [ "$(contents "$bin" "$a")" = "$(contents "$bin" "$b")" ]; then
    echo "  $what: models' metrics and eval --json equal a fresh run's"
  else
    echo "  $what: METRICS OR EVAL DIFFER from a fresh run's"; status=1
  fi
}

for name in "${names[@]}"; do
  S=$OUT/$name-switched F=$OUT/$name-fresh-mkl G=$OUT/$name-fresh-plain
  run "plain run into S" "$P" "$name" "$S"
  plan=$("$M" run "$root/pipelines/$name.yaml" --store "$S" --dry-run --json 2>> "$S.log")
  verdict=$(python3 -c '
import json, sys
try:
    stages = json.loads(sys.argv[1])["stages"]
except (ValueError, KeyError, TypeError):
    print("WRONG PLAN: no readable dry-run report"); sys.exit()
model = {"train", "eval", "adapt"}
wrong = [s["name"] for s in stages if (s["kind"] in model) != (s["status"] != "skipped")]
runs = sum(s["status"] != "skipped" for s in stages)
print(f"{runs} of {len(stages)} stages planned (every train, eval and adapt stage, nothing else)"
      if not wrong else "WRONG PLAN for " + ", ".join(wrong))' "$plan")
  echo "$name: MKL dry run on S: $verdict"
  case $verdict in WRONG*|"") status=1;; esac
  pd=$(digest "$S")
  run "MKL run on S" "$M" "$name" "$S"
  run "fresh MKL run into F" "$M" "$name" "$F"
  if [ "$pd" = "$(digest "$F")" ]; then
    echo "  NOTE: the plain and MKL checkpoints are identical here, so this pipeline cannot show a stale model"
  else
    echo "  the plain and MKL checkpoints differ (the check can fail)"
  fi
  same "$M" "$S" "$F" "plain → MKL"
  run "plain run on S again" "$P" "$name" "$S"
  run "fresh plain run into G" "$P" "$name" "$G"
  same "$P" "$S" "$G" "MKL → plain"
done
exit $status
