#!/usr/bin/env bash
# Two fresh runs of each shipped pipeline into new stores must give byte-identical
# checkpoints and identical `palpipe eval --json` output (issue 11: the store is a function of
# the pipeline). The Pick-a-Pic pipelines run once with the reader at 1 thread and once at 2,
# so their rows are stored in different orders.
#
#   bash scripts/determinism.sh [BIN] [OUT] [PIPELINE …]
#
# BIN defaults to $CARGO_TARGET_DIR/debug/palpipe, OUT to /tmp/palpipe-determinism, the
# pipelines to all seven shipped ones (persona takes about 10 minutes a run on 2 cores).
# Prints one line per run and two verdicts per pipeline; exits 1 when anything differs.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-${CARGO_TARGET_DIR:-$HOME/.cache/palpipe/target}/debug/palpipe}
OUT=${2:-/tmp/palpipe-determinism}
shift $(( $# > 2 ? 2 : $# ))
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(demo synthetic leakage-split pick-a-filter polis persona tldr)
rm -rf "$OUT" && mkdir -p "$OUT"
status=0

# Runs pipeline $1 into store $2 (further arguments go to `palpipe run`).
run() {
  local name=$1 store=$2; shift 2
  local t0=$SECONDS
  "$BIN" run "$root/pipelines/$name.yaml" --store "$store" --quiet "$@" > "$store.log" 2>&1
  echo "rc=$? $((SECONDS - t0)) s"
}
# sha256 of every checkpoint file under a store, by relative path.
digest() { (cd "$1" && find . -name '*.safetensors' | sort | xargs -r sha256sum); }
evals() { local store=$1; shift; for s in "$@"; do "$BIN" eval --split "$s" --store "$store" --json --quiet 2>&1; done; }

for name in "${names[@]}"; do
  case $name in
    leakage-split|pick-a-filter) a=(--set ingest.threads=1); b=(--set ingest.threads=2);;
    *) a=(); b=();;
  esac
  case $name in
    demo) splits=(demo-test);; synthetic) splits=(synthetic-test);; polis) splits=(polis-test);;
    persona) splits=(persona-test);; tldr) splits=(tldr-test);; leakage-split) splits=(v2-leakage v2-no-leakage);;
    pick-a-filter) splits=(paf-test);; *) splits=();;
  esac
  echo "$name A ${a[*]}: $(run "$name" "$OUT/$name-a" "${a[@]}")"
  echo "$name B ${b[*]}: $(run "$name" "$OUT/$name-b" "${b[@]}")"
  da=$(digest "$OUT/$name-a"); db=$(digest "$OUT/$name-b")
  if [ -n "$da" ] && [ "$da" == "$db" ]; then
    echo "$name: $(grep -c . <<< "$da") checkpoints byte-identical"
  else
    echo "$name: CHECKPOINTS DIFFER (or none)"; status=1
  fi
  ea=$(evals "$OUT/$name-a" "${splits[@]}"); eb=$(evals "$OUT/$name-b" "${splits[@]}")
  if [ -n "$ea" ] && [ "$ea" == "$eb" ]; then
    echo "$name: eval --json identical ($(grep -c . <<< "$ea") models over ${splits[*]})"
  else
    echo "$name: EVAL OUTPUT DIFFERS (or none)"; status=1
  fi
done
exit $status
