#!/usr/bin/env bash
# The personalized reward put to use (issue 13, "Speed"), two parts:
#  (a) `palpipe score --input` of SCORE_ROWS (10,000) rows of (user, prompt, SCORE_CANDIDATES
#      (8) candidates), every vector already in the store, beside PyTorch scoring the same
#      checkpoint (bench/score_reference.py loads it into bench/pal_reference.py's PalB):
#      rewards/s of the whole process each, ROUNDS interleaved rounds (bench/interleave.py);
#  (b) `palpipe serve` under bench/serve_load.py on 127.0.0.1: SERVE_SECONDS (30) s,
#      SERVE_CONNECTIONS (16) keep-alive connections, one row (8 candidates by content id)
#      per request, vectors cached: requests/s, p50/p99 latency, the server's peak RSS,
#      errors (the bench fails unless 0); ROUNDS rounds.
# The model: PAL-B, K = 2, d = 384, f and g_k mlp2-relu-dropout5-residual, trained for two
# epochs on a small persona store embedded with all-MiniLM-L6-v2 (384-dim), which this
# script builds in a temporary folder (about a minute). Writes bench/results/<date>-score.json.
#
#   bash bench/score.sh                                   # the full run (about 10-12 minutes)
#   SCORE_ROWS=500 SERVE_SECONDS=3 ROUNDS=1 bash bench/score.sh   # a smoke test
#   PALPIPE_BIN=target/debug/palpipe BENCH_VENV=/tmp/benchvenv bash bench/score.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS_N=${SCORE_ROWS:-10000}
CANDS=${SCORE_CANDIDATES:-8}
SERVE_S=${SERVE_SECONDS:-30}
CONNS=${SERVE_CONNECTIONS:-16}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
VENV=${BENCH_VENV:-/tmp/benchvenv}
PERSONA=${PERSONA:-/work/shared/data/persona}
DATE=${BENCH_DATE:-$(date -u +%Y-%m-%d-%H%M)}
OUT=${SCORE_OUT:-bench/results/${DATE}-score.json}
if [ -z "${PALPIPE_BIN:-}" ]; then
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/palpipe/target}
    cargo build --quiet --bin palpipe
    PALPIPE_BIN="$CARGO_TARGET_DIR/debug/palpipe"
fi
BIN=$PALPIPE_BIN
"$VENV/bin/python" -c "import torch, numpy" \
    || { echo "error: $VENV has no torch/numpy (bench/run.sh makes it)" >&2; exit 1; }

STMP=$(mktemp -d)
trap 'rm -rf "$STMP"' EXIT
S="$STMP/store"
cat > "$STMP/p.yaml" <<YAML
name: bench-score
stages:
  - name: data
    kind: persona
    dir: $PERSONA
    personas: [art, math, music, sports]
    users_per_persona: 8
    queries_per_user: 40
    unseen_users_per_persona: 0
  - name: embed
    kind: embed
  - name: pb
    kind: train
    model: pal-b
    k: 2
    train: tr
    encoder: all-MiniLM-L6-v2
    config: {d: 384, item_arch: mlp2-relu-dropout5-residual, prototype_arch: mlp2-relu-dropout5-residual}
    training: {epochs: 2}
splits:
  tr: "SELECT * FROM pairs WHERE split = 'train'"
YAML
echo "== score: building the store (persona, MiniLM, PAL-B K=2 d=384)" >&2
"$BIN" run "$STMP/p.yaml" --store "$S" --quiet > /dev/null
q() { "$BIN" sql "$1" --format json --store "$S" --quiet; }
q "SELECT content_id, vector FROM embeddings" > "$STMP/vectors.jsonl"
q "SELECT DISTINCT user_id FROM pairs WHERE split = 'train'" > "$STMP/users.jsonl"
q "SELECT prompt_id FROM prompts" > "$STMP/prompts.jsonl"
CKPT="$S/$(q "SELECT checkpoint FROM models WHERE name = 'pb'" \
    | python3 -c 'import json, sys; print(json.loads(sys.stdin.readline())["checkpoint"])')"

# The rows: seeded, users and prompts of the store, candidates drawn from every stored vector.
python3 - "$STMP" "$ROWS_N" "$CANDS" <<'PY'
import json, random, sys
d, n, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rd = lambda f, key: [json.loads(l)[key] for l in open(f"{d}/{f}") if l.strip()]
users, prompts = rd("users.jsonl", "user_id"), rd("prompts.jsonl", "prompt_id")
pool = rd("vectors.jsonl", "content_id")
rng = random.Random(13)
with open(f"{d}/rows.jsonl", "w") as fh:
    for _ in range(n):
        fh.write(json.dumps({"user": rng.choice(users), "prompt": {"id": rng.choice(prompts)},
                             "candidates": [{"id": c} for c in rng.sample(pool, k)]}) + "\n")
print(f"{n} rows, {len(users)} users, {len(prompts)} prompts, {len(pool)} vectors", file=sys.stderr)
PY
REWARDS=$((ROWS_N * CANDS))

# The two must compute the same rewards (200 rows) before either is timed.
head -n 200 "$STMP/rows.jsonl" > "$STMP/check.jsonl"
bash bench/score_palpipe.sh "$BIN" "$S" pb "$STMP/check.jsonl" $((200 * CANDS)) "$STMP/check-palpipe.jsonl" > /dev/null
"$VENV/bin/python" bench/score_reference.py "$CKPT" "$STMP/vectors.jsonl" "$STMP/check.jsonl" \
    --out "$STMP/check-torch.jsonl" --threads "$THREADS" > /dev/null
python3 - "$STMP/check-palpipe.jsonl" "$STMP/check-torch.jsonl" <<'PY'
import json, sys
key = lambda f: {(r["row"], r["candidate"]): r["reward"] for r in map(json.loads, open(f))}
a, b = key(sys.argv[1]), key(sys.argv[2])
assert a.keys() == b.keys(), "different rows/candidates"
worst = max(abs(a[k] - b[k]) / (1 + abs(b[k])) for k in a)
print(f"score: palpipe and PyTorch agree on {len(a)} rewards (worst relative difference {worst:.2e})",
      file=sys.stderr)
if worst > 1e-4:
    sys.exit("score: palpipe and PyTorch disagree; not timing")
PY

pyver() { "$VENV/bin/python" -c "import $1; print($1.__version__)" 2>/dev/null || echo missing; }
CANDLE_VERSION=$(awk '/^name = "candle-core"/{getline; gsub(/[^0-9.]/, ""); print; exit}' Cargo.lock)
RAYON_NUM_THREADS=$THREADS python3 bench/interleave.py --name score \
    --rounds "$ROUNDS" --threads "$THREADS" \
    --tool "palpipe=bash bench/score_palpipe.sh $BIN $S pb $STMP/rows.jsonl $REWARDS" \
    --tool "pytorch=$VENV/bin/python bench/score_reference.py $CKPT $STMP/vectors.jsonl $STMP/rows.jsonl --threads $THREADS" \
    --metric rewards_per_s \
    --version "torch=$(pyver torch)" --version "candle=$CANDLE_VERSION" \
    --version "palpipe_profile=dev (opt-level 3 throughout)" \
    --out "$STMP/score.json"

RAYON_NUM_THREADS=$THREADS python3 bench/interleave.py --name serve \
    --rounds "$ROUNDS" --threads "$THREADS" \
    --tool "palpipe-serve=python3 bench/serve_load.py $BIN $S pb $STMP/rows.jsonl --seconds $SERVE_S --connections $CONNS" \
    --metric requests_per_s --metric rewards_per_s --metric latency_ms.p50 --metric latency_ms.p99 \
    --metric server_peak_rss_mib --metric errors \
    --version "candle=$CANDLE_VERSION" \
    --version "palpipe_profile=dev (opt-level 3 throughout)" \
    --out "$STMP/serve.json"

python3 - "$STMP/score.json" "$STMP/serve.json" "$OUT" "$ROWS_N" "$CANDS" "$SERVE_S" "$CONNS" <<'PY'
import json, os, sys
score, serve = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
out, rows, cands, secs, conns = sys.argv[3], *map(float, sys.argv[4:8])
errors = sum(r["printed"]["errors"] for r in serve["runs"]["palpipe-serve"])
result = {
    "what": {"score": f"palpipe score --input of {int(rows)} rows x {int(cands)} candidates, "
                      "vectors cached, whole process, beside PyTorch (bench/score_reference.py)",
             "serve": f"palpipe serve under bench/serve_load.py: {secs:g} s, {int(conns)} "
                      f"keep-alive connections, {int(cands)} candidates by id per request"},
    "model": "PAL-B K=2 d=384 mlp2-relu-dropout5-residual on all-MiniLM-L6-v2 vectors",
    "score": score, "serve": serve, "serve_errors": errors,
}
os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
with open(out, "w") as fh:
    json.dump(result, fh, indent=2, sort_keys=True)
    fh.write("\n")
print(f"written {out}")
if errors:
    sys.exit(f"serve: {errors} request(s) failed")
PY
