#!/usr/bin/env bash
# Sharded embedding throughput: N = 1, 2, 4 local `palpipe embed --shard k/N --uncommitted`
# processes on copies of one persona store (all-MiniLM-L6-v2, CPU), then the commit's
# duration. Prints one line per N with the load average before and after.
#   scripts/bench-shards.sh [PALPIPE_BIN] [WORK_DIR]
set -euo pipefail
BIN=${1:-${CARGO_TARGET_DIR:-$HOME/.cache/palpipe/target}/debug/palpipe}
WORK=${2:-$(mktemp -d)}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$WORK"
cat > "$WORK/p.yaml" <<YAML
name: bench-shards
stages:
  - name: data
    kind: persona
    dir: $ROOT/../shared/data/persona
    personas: [art, music, math, science]
    users_per_persona: 10
    queries_per_user: 40
    unseen_users_per_persona: 0
YAML
"$BIN" run "$WORK/p.yaml" --store "$WORK/base" --quiet >/dev/null
texts=$("$BIN" sql "SELECT (SELECT count(*) FROM prompts) + (SELECT count(*) FROM items WHERE kind = 'text') AS n" --store "$WORK/base" --format csv | tail -1)
echo "texts: $texts  cpus: $(nproc)  $(date -u +%FT%TZ)"
for n in ${NS:-1 2 4}; do
  rm -rf "$WORK/s$n"; cp -r "$WORK/base" "$WORK/s$n"
  load0=$(cut -d' ' -f1-3 /proc/loadavg)
  t0=$(date +%s.%N)
  for k in $(seq 0 $((n - 1))); do
    "$BIN" embed --store "$WORK/s$n" --shard "$k/$n" --uncommitted --run-id b --quiet >/dev/null &
  done
  wait
  t1=$(date +%s.%N)
  c0=$(date +%s.%N)
  "$BIN" commit --store "$WORK/s$n" --run-id b --shards "$n" --quiet >/dev/null
  c1=$(date +%s.%N)
  load1=$(cut -d' ' -f1-3 /proc/loadavg)
  rows=$("$BIN" sql "SELECT count(*) AS n FROM embeddings" --store "$WORK/s$n" --format csv | tail -1)
  awk -v n="$n" -v r="$rows" -v a="$t0" -v b="$t1" -v c="$c0" -v d="$c1" -v l0="$load0" -v l1="$load1" \
    'BEGIN { printf "N=%d  rows=%d  embed wall %.1f s  %.1f texts/s  commit %.3f s  load before [%s] after [%s]\n", n, r, b-a, r/(b-a), d-c, l0, l1 }'
done
