#!/usr/bin/env bash
# Speed benchmarks (`make bench`). First PAL-B training/scoring speed: palpipe (candle, dev
# profile) vs the PyTorch yardstick, both data modes, interleaved rounds (A, B, A, B, …) with
# the load average checked before each run; then the sections below. See bench/README.md.
#
#   bash bench/run.sh                 # defaults: 50 timed steps after 5 warm-up steps
#   STEPS=20 WARMUP=3 bash bench/run.sh
#   ROUNDS=5 THREADS=2 bash bench/run.sh   # interleaved rounds per tool; threads each tool uses
#   BENCH_VENV=/path/to/venv bash bench/run.sh
#   PAL=0 MINILM=0 bash bench/run.sh  # only the embedding-cache and CLIP sections
#   MKL=both bash bench/run.sh        # the PAL and MiniLM sections with both palpipe builds
#
# Which palpipe build (MKL): `auto` (default) takes the Intel MKL build (`--features mkl`,
# built here) when `make mkl` has installed MKL under MKL_PREFIX, else the plain build; `1`
# requires the MKL build, `0` takes the plain one, `both` interleaves the MKL build, the
# yardstick and the plain build in the PAL and MiniLM sections (the other sections use the
# MKL build). Every result file names the build in `versions`.
#
# Sections, each skipped with its variable set to 0: PAL (PAL head vs PyTorch), MINILM
# (MiniLM vs sentence-transformers), CACHE (the embedding cache, `palpipe embed` three
# times), CLIP (`palpipe bench-clip`, tiny fixture model), IMAGE (bench/image.sh: Pick-a-Pic
# hashing vs b3sum, the image stages), INGEST (bench/ingest.sh: JSON lines ingest vs wc -l and
# json.loads), SCORE (bench/score.sh: `palpipe score` vs PyTorch, `palpipe serve` under load),
# MATMUL (bench/matmul.sh: a Linear layer's matrix product alone, gemm vs PyTorch). At the
# end, bench/summary.py prints issues 16 and 12's goals against this run's result files.
# See bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=${STEPS:-50}
WARMUP=${WARMUP:-5}
N=${N:-200000}
EVAL_N=${EVAL_N:-20000}
VENV=${BENCH_VENV:-/tmp/benchvenv}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/palpipe/target}

# The dev profile: palpipe, crates/kernels and the dependencies at opt-level 3 (see
# Cargo.toml).
# PLAIN is the build without features; MKLBIN, when MKL is used, the `--features mkl` build
# (both in CARGO_TARGET_DIR, copied to debug/palpipe-plain and debug/palpipe-mkl so that
# neither build replaces the other); BIN is the one the single-tool sections run.
MKL_PREFIX=${MKL_PREFIX:-$HOME/.cache/palpipe/mkl}
MKL_MODE=${MKL:-auto}
case "$MKL_MODE" in
    auto) if [ -f "$MKL_PREFIX/root/lib/libmkl_core.a" ]; then BUILDS="mkl"; else BUILDS="plain"; fi ;;
    1) BUILDS="mkl" ;;
    0) BUILDS="plain" ;;
    both) BUILDS="mkl plain" ;;
    *) echo "error: MKL must be auto, 1, 0 or both, got '$MKL_MODE'" >&2; exit 2 ;;
esac
PROFILE="dev (opt-level 3 throughout; palpipe at 1 before session 33)"
MKL_DESC="Intel MKL $(cat "$MKL_PREFIX/venv/lib/python3"*/site-packages/mkl_static-*.dist-info/METADATA 2>/dev/null \
    | sed -n 's/^Version: //p' | head -1 || true) from PyPI, static (mkl-static-lp64-iomp)"
# The plain build first, so that debug/palpipe is left as the MKL build (what `make build`
# gives when MKL is installed).
if [[ " $BUILDS " == *" plain "* ]]; then
    cargo build --quiet --bin palpipe
    PLAIN="$CARGO_TARGET_DIR/debug/palpipe-plain"
    cp "$CARGO_TARGET_DIR/debug/palpipe" "$PLAIN"
    BIN=$PLAIN
fi
if [[ " $BUILDS " == *" mkl "* ]]; then
    make --no-print-directory mkl MKL_PREFIX="$MKL_PREFIX" >&2
    MKLROOT="$MKL_PREFIX/root" cargo build --quiet --features mkl --bin palpipe
    MKLBIN="$CARGO_TARGET_DIR/debug/palpipe-mkl"
    cp "$CARGO_TARGET_DIR/debug/palpipe" "$MKLBIN"
    BIN=$MKLBIN
fi
# MKL's threads (Intel OpenMP) get the same count as candle's rayon pool and PyTorch.
export MKL_NUM_THREADS=${MKL_NUM_THREADS:-${THREADS:-2}} OMP_NUM_THREADS=${OMP_NUM_THREADS:-${THREADS:-2}}
# The build each palpipe tool name stands for, for the result files.
BUILD_VERSIONS=()
for b in $BUILDS; do
    case $b in
        mkl) BUILD_VERSIONS+=(--version "palpipe-mkl_build=--features mkl, $MKL_DESC, MKL_NUM_THREADS=$MKL_NUM_THREADS") ;;
        plain) BUILD_VERSIONS+=(--version "palpipe_build=no features (candle's own gemm)") ;;
    esac
done

# The MINILM and CACHE sections measure peak RSS and CPU time with GNU time (Debian: `time`).
if { [ "${MINILM:-1}" != "0" ] || [ "${CACHE:-1}" != "0" ]; } && [ ! -x /usr/bin/time ]; then
    echo "installing GNU time (/usr/bin/time) with apt-get" >&2
    apt-get install -y -qq time >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null && apt-get install -y -qq time >/dev/null; } \
        || { echo "error: /usr/bin/time is missing and apt-get could not install it" >&2; exit 1; }
fi

# UTC date and start time: a second run on one day does not overwrite the first; the
# sections run from here (ingest.sh, image.sh, score.sh, matmul.sh) take the same stamp.
export BENCH_DATE=${BENCH_DATE:-$(date -u +%Y-%m-%d-%H%M)}
DATE=$BENCH_DATE
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
PERSONA=${PERSONA:-/work/shared/data/persona}

if [ "${PAL:-1}" != "0" ] || [ "${MINILM:-1}" != "0" ] || [ "${SCORE:-1}" != "0" ] || [ "${CLIP:-1}" != "0" ]; then
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "creating $VENV with PyTorch (CPU wheel index first, then PyPI)" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet numpy
    "$VENV/bin/pip" install --quiet torch --index-url https://download.pytorch.org/whl/cpu \
        || "$VENV/bin/pip" install --quiet torch
fi
fi

# BEFORE_BIN: an earlier palpipe binary (say, main's before a change) interleaved as a third
# tool, `palpipe-before`, in the PAL, MiniLM and CLIP sections, to measure what a change gains
# in the same rounds as the yardstick; its `palpipe_before_build` is BEFORE_DESC.
BEFORE=${BEFORE_BIN:-}
if [ -n "$BEFORE" ]; then
    [ -x "$BEFORE" ] || { echo "error: BEFORE_BIN=$BEFORE is not an executable file" >&2; exit 2; }
    BUILD_VERSIONS+=(--version "palpipe-before_build=${BEFORE_DESC:-$BEFORE}")
fi

# Versions for the result files (bench/README.md, "How we measure").
CANDLE_VERSION=$(awk '/^name = "candle-core"/{getline; gsub(/[^0-9.]/, ""); print; exit}' Cargo.lock)
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
pyver() { "$VENV/bin/python" -c "import $1; print($1.__version__)" 2>/dev/null || echo missing; }

if [ "${PAL:-1}" != "0" ]; then
COMMON="--n $N --steps $STEPS --warmup $WARMUP --eval-n $EVAL_N"
for mode in distinct repeating; do
    # A, B, A, B, …: the tools alternate, ROUNDS rounds each; see bench/interleave.py. The
    # first palpipe build comes first, so the printed ratio is it / PyTorch.
    TOOLS=()
    [ -n "${MKLBIN:-}" ] && TOOLS+=(--tool "palpipe-mkl=$MKLBIN bench-pal --$mode $COMMON")
    [ -z "${MKLBIN:-}" ] && TOOLS+=(--tool "palpipe=$PLAIN bench-pal --$mode $COMMON")
    TOOLS+=(--tool "pytorch=$VENV/bin/python bench/pal_reference.py --$mode $COMMON --threads $THREADS")
    [ -n "${MKLBIN:-}" ] && [ -n "${PLAIN:-}" ] && TOOLS+=(--tool "palpipe=$PLAIN bench-pal --$mode $COMMON")
    [ -n "$BEFORE" ] && TOOLS+=(--tool "palpipe-before=$BEFORE bench-pal --$mode $COMMON")
    RAYON_NUM_THREADS=$THREADS python3 bench/interleave.py --name "pal-$mode" \
        --rounds "$ROUNDS" --threads "$THREADS" "${TOOLS[@]}" \
        --metric train_comparisons_per_s --metric eval_comparisons_per_s \
        --metric phases_ms_per_step.forward --metric phases_ms_per_step.backward \
        --metric phases_ms_per_step.optimizer \
        --version "torch=$(pyver torch)" --version "candle=$CANDLE_VERSION" \
        --version "palpipe_profile=$PROFILE" "${BUILD_VERSIONS[@]}" \
        --out "bench/results/${DATE}-pal-$mode.json"
done
fi

# ---------------------------------------------------------------------------------------
# MiniLM embedding speed: palpipe (candle, dev profile) vs sentence-transformers (PyTorch),
# all-MiniLM-L6-v2 on the 6,000 persona statements, batch 32, THREADS threads, interleaved
# rounds (bench/interleave.py). palpipe's side is `palpipe bench-minilm` (the peak RSS is
# that process's). Skip with MINILM=0.
# ---------------------------------------------------------------------------------------
if [ "${MINILM:-1}" != "0" ]; then
    if ! "$VENV/bin/python" -c "import sentence_transformers" 2>/dev/null; then
        echo "installing sentence-transformers into $VENV" >&2
        "$VENV/bin/pip" install --quiet transformers scipy scikit-learn
        "$VENV/bin/pip" install --quiet --no-deps sentence-transformers
    fi
    # palpipe's side: `palpipe bench-minilm` (the encoder `palpipe embed` uses), one round per
    # run like the yardstick's.
    minilm() { echo "$1 bench-minilm --batch 32 --rounds 1 $PERSONA/*.jsonl"; }
    TOOLS=()
    [ -n "${MKLBIN:-}" ] && TOOLS+=(--tool "palpipe-mkl=$(minilm "$MKLBIN")")
    if [ -n "${PLAIN:-}" ]; then
        PLAINTOOL=(--tool "palpipe=$(minilm "$PLAIN")")
        [ -z "${MKLBIN:-}" ] && TOOLS+=("${PLAINTOOL[@]}")
    fi
    TOOLS+=(--tool "sentence-transformers=$VENV/bin/python bench/minilm_reference.py --batch 32 --threads $THREADS --rounds 1 $PERSONA/*.jsonl")
    [ -n "${MKLBIN:-}" ] && [ -n "${PLAIN:-}" ] && TOOLS+=("${PLAINTOOL[@]}")
    [ -n "$BEFORE" ] && TOOLS+=(--tool "palpipe-before=$(minilm "$BEFORE")")
    RAYON_NUM_THREADS=$THREADS python3 bench/interleave.py --name minilm \
        --rounds "$ROUNDS" --threads "$THREADS" "${TOOLS[@]}" \
        --metric median_sentences_per_s \
        --version "torch=$(pyver torch)" --version "sentence_transformers=$(pyver sentence_transformers)" \
        --version "candle=$CANDLE_VERSION" \
        --version "palpipe_profile=$PROFILE" "${BUILD_VERSIONS[@]}" \
        --out "bench/results/${DATE}-minilm.json"
fi

# ---------------------------------------------------------------------------------------
# The embedding cache (src/pipeline/embed_stage.rs): `palpipe embed --targets prompts` over
# the 6,000 persona statements in a temporary store, three times: (a) cold, everything
# embedded; (b) again, nothing to embed (every content id is cached); (c) after a 7th persona
# file with 100 new statements is ingested, only those embedded. Wall/CPU seconds and peak
# RSS of each whole process (model loading included). Fails unless the counts are exactly
# those. Skip with CACHE=0.
# ---------------------------------------------------------------------------------------
if [ "${CACHE:-1}" != "0" ]; then
    COUT="bench/results/${DATE}-cache.json"
    CT="$TMP/cache"
    mkdir -p "$CT/persona"
    cp "$PERSONA"/interest-in-*.jsonl "$CT/persona/"
    NAMES=$(cd "$CT/persona" && ls interest-in-*.jsonl | sed 's/^interest-in-//; s/\.jsonl$//' | paste -sd, -)
    NSTAT=$(cat "$CT/persona"/*.jsonl | python3 -c \
        'import json, sys; print(len({json.loads(l)["question"] for l in sys.stdin if l.strip()}))')
    # One seen user per persona answering every statement: every statement becomes a prompt.
    cat > "$CT/pipeline.yaml" <<YAML
name: bench-cache
stages:
  - name: data
    kind: persona
    dir: $CT/persona
    personas: [$NAMES]
    users_per_persona: 1
    queries_per_user: $NSTAT
    unseen_users_per_persona: 0
YAML
    ingest() { # extra `--set` arguments
        "$BIN" run "$CT/pipeline.yaml" --store "$CT/store" --quiet --json "$@" > "$CT/ingest.json"
        python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); sys.exit(1 if r.get("error") else 0)' \
            "$CT/ingest.json" || { cat "$CT/ingest.json" >&2; exit 1; }
    }
    embed() { # name
        echo "== cache: palpipe embed ($1)" >&2
        RAYON_NUM_THREADS=2 /usr/bin/time -o "$CT/$1.time" -f '%e %U %S %M' \
            "$BIN" embed --targets prompts --store "$CT/store" --quiet > "$CT/$1.out"
        cat "$CT/$1.out" >&2
    }
    python3 -c 'import os; print(*os.getloadavg())' > "$CT/load-start"
    ingest
    embed first
    embed second
    # 100 statements no persona file has, in the files' format, as a 7th persona.
    python3 - "$CT/persona/interest-in-benchextra.jsonl" <<'PY'
import json, sys
things = ["baking sourdough bread", "restoring old bicycles", "birdwatching at dawn",
          "building model railways", "growing chili peppers", "solving cryptic crosswords",
          "learning to juggle", "keeping bees", "making pottery by hand", "sailing small boats"]
frames = ["I would happily spend a whole weekend {}",
          "Few things relax me more than {}",
          "I have always wanted to take a class in {}",
          "My friends know me for {}",
          "I think {} is a waste of time",
          "I lose track of time when I am {}",
          "I would rather watch television than spend an afternoon {}",
          "I read blogs about {} every week",
          "I save money so that I can spend more on {}",
          "I cannot understand why anyone enjoys {}"]
with open(sys.argv[1], "w") as fh:
    for i, f in enumerate(frames):
        for t in things:
            s = f.format(t)
            yes = i not in (4, 6, 9)
            fh.write(json.dumps({
                "question": f'Is the following statement something you would say?\n"{s}"',
                "statement": s, "label_confidence": 0.9,
                "answer_matching_behavior": " Yes" if yes else " No",
                "answer_not_matching_behavior": " No" if yes else " Yes"}) + "\n")
PY
    ingest --set "data.personas=[$NAMES,benchextra]" --set "data.queries_per_user=$((NSTAT + 100))"
    embed third
    python3 -c 'import os; print(*os.getloadavg())' > "$CT/load-end"
    python3 - "$CT" "$COUT" "$NSTAT" <<'PY'
import json, os, re, sys, platform
ct, out, nstat = sys.argv[1], sys.argv[2], int(sys.argv[3])
runs, bad = {}, []
want = {"first": (nstat, 0), "second": (0, nstat), "third": (100, nstat)}
for name, (emb, cached) in want.items():
    text = open(os.path.join(ct, f"{name}.out")).read()
    m = re.search(r"embedded (\d+), already cached (\d+)", text)
    wall, user, sys_s, rss = open(os.path.join(ct, f"{name}.time")).read().split()[-4:]
    runs[name] = {"output": text.strip(), "wall_s": float(wall),
                  "cpu_s": float(user) + float(sys_s), "peak_rss_mib": int(rss) / 1024,
                  "embedded": int(m.group(1)) if m else None,
                  "cached": int(m.group(2)) if m else None,
                  "expected_embedded": emb, "expected_cached": cached}
    if not m or (int(m.group(1)), int(m.group(2))) != (emb, cached):
        bad.append(f"{name}: expected 'embedded {emb}, already cached {cached}', got {text.strip()!r}")
f, s, t = (runs[k]["wall_s"] for k in ("first", "second", "third"))
result = {
    "what": "palpipe embed --targets prompts (all-MiniLM-L6-v2, batch 32, 2 threads) over the "
            f"{nstat} persona statements in a fresh store: first (cold), second (all cached), "
            "third (after 100 new statements); whole-process times, model loading included",
    "machine": {"nproc": os.cpu_count(), "platform": platform.platform(),
                "loadavg_at_start": [float(x) for x in open(os.path.join(ct, "load-start")).read().split()],
                "loadavg_at_end": [float(x) for x in open(os.path.join(ct, "load-end")).read().split()]},
    "runs": runs,
    "ratio_second_over_first": s / f,
    "ratio_third_over_first": t / f,
    "statements": nstat,
    "ok": not bad,
}
with open(out, "w") as fh:
    json.dump(result, fh, indent=2, sort_keys=True)
    fh.write("\n")
print(f"{'cache':<10} {'run':<28} {'wall s':>8} {'cpu s':>8} {'embedded':>9} {'cached':>7}")
for name, label in (("first", f"first ({nstat} new)"), ("second", "second (nothing new)"),
                    ("third", "third (100 new)")):
    r = runs[name]
    print(f"{'cache':<10} {label:<28} {r['wall_s']:>8.1f} {r['cpu_s']:>8.1f} "
          f"{r['embedded'] if r['embedded'] is not None else '?':>9} "
          f"{r['cached'] if r['cached'] is not None else '?':>7}")
print(f"{'cache':<10} {'second / first':<28} {s / f:>8.3f}")
print(f"{'cache':<10} {'third / first':<28} {t / f:>8.3f}")
print(f"written {out}")
if bad:
    sys.exit("embedding cache check failed:\n" + "\n".join(bad))
PY
fi

# ---------------------------------------------------------------------------------------
# CLIP image embedding (`palpipe bench-clip`, src/cli/bench.rs) with the tiny fixture model
# tests/fixtures/tiny_clip (32×32 input, 16-dim): CLIP_IMAGES (2,000) seeded JPEGs of about
# CLIP_SIZE (256) pixels a side, batch CLIP_BATCH (64); images/s for decoding,
# resize/crop/normalise, and the model, each timed apart, beside transformers' CLIPModel +
# CLIPImageProcessor (bench/clip_reference.py). Skip with CLIP=0.
# ---------------------------------------------------------------------------------------
if [ "${CLIP:-1}" != "0" ]; then
    # The yardstick: transformers' CLIPModel + CLIPImageProcessor on the same fixture model,
    # timed the same way (bench/clip_reference.py), interleaved with palpipe.
    if ! "$VENV/bin/python" -c "import transformers, PIL" 2>/dev/null; then
        echo "installing transformers and pillow into $VENV" >&2
        "$VENV/bin/pip" install --quiet transformers pillow
    fi
    CLIP_ARGS="--images ${CLIP_IMAGES:-2000} --size ${CLIP_SIZE:-256} --batch ${CLIP_BATCH:-64}"
    RAYON_NUM_THREADS=$THREADS python3 bench/interleave.py --name clip \
        --rounds "$ROUNDS" --threads "$THREADS" \
        --tool "palpipe=$BIN bench-clip $CLIP_ARGS --model-dir tests/fixtures/tiny_clip" \
        --tool "transformers=$VENV/bin/python bench/clip_reference.py $CLIP_ARGS --threads $THREADS" \
        ${BEFORE:+--tool "palpipe-before=$BEFORE bench-clip $CLIP_ARGS --model-dir tests/fixtures/tiny_clip"} \
        --metric total_images_per_s --metric preprocess_images_per_s \
        --metric decode_images_per_s --metric resize_crop_normalise_images_per_s \
        --metric model_images_per_s \
        --version "torch=$(pyver torch)" --version "transformers=$(pyver transformers)" \
        --version "candle=$CANDLE_VERSION" --version "palpipe_profile=$PROFILE" "${BUILD_VERSIONS[@]}" \
        --out "bench/results/${DATE}-clip.json"
fi

# The image path (issue 4): Pick-a-Pic reading and hashing beside b3sum over > 1 GB of
# generated shards, the ingest / dedup / Pick-a-Filter stages, peak memory. Skip with IMAGE=0.
if [ "${IMAGE:-1}" != "0" ]; then
    PALPIPE_BIN="$BIN" bash bench/image.sh
fi

# The matrix product alone (issue 16): a PAL Linear layer's product with the `gemm` crate
# candle uses, beside PyTorch's, to tell the product itself from what candle does around it.
# Skip with MATMUL=0.
if [ "${MATMUL:-1}" != "0" ]; then
    BENCH_VENV="$VENV" ROUNDS="$ROUNDS" THREADS="$THREADS" bash bench/matmul.sh
fi

# Ingest of JSON lines text pairs (issue 12): peak memory at 100 MB and 1 GB, throughput
# beside wc -l and a Python json.loads pass. Skip with INGEST=0.
if [ "${INGEST:-1}" != "0" ]; then
    PALPIPE_BIN="$BIN" bash bench/ingest.sh
fi

# Scoring with a trained head (issue 13): `palpipe score --input` of 10,000 rows x 8
# candidates beside PyTorch on the same checkpoint, and `palpipe serve` under a 30 s,
# 16-connection load. Skip with SCORE=0.
if [ "${SCORE:-1}" != "0" ]; then
    PALPIPE_BIN="$BIN" BENCH_VENV="$VENV" ROUNDS="$ROUNDS" THREADS="$THREADS" bash bench/score.sh
fi

# The goals of issues 16 and 12 in one table, read back from this invocation's result files
# (rows of skipped sections say `not run`).
echo
python3 bench/summary.py "$DATE"
