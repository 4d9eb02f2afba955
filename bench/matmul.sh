#!/usr/bin/env bash
# The matrix product alone (issue 16, "what bounds it"): a Linear layer's product C = A·Wᵀ
# in f32, with the `gemm` crate as candle runs it (bench/matmul/, built here in release) and
# with PyTorch (`a @ w.t()`, bench/matmul_reference.py), interleaved through
# bench/interleave.py for each row count M of a PAL-B step (K = N = 1024: 256 prompts, 512
# items, 1,024 both), with the weight read transposed as a Linear layer does (layout t) and
# stored plain (layout n). Writes bench/results/<date>-matmul-<M>-<layout>.json. Run by `make bench`
# (skip with MATMUL=0), or alone:
#
#   BENCH_VENV=/tmp/benchvenv ROUNDS=3 THREADS=2 bash bench/matmul.sh
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${BENCH_VENV:-/tmp/benchvenv}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
REPS=${REPS:-50}
TARGET=${CARGO_TARGET_DIR:-$HOME/.cache/palpipe/target}/matmul-alone
DATE=${BENCH_DATE:-$(date -u +%Y-%m-%d-%H%M)}
mkdir -p bench/results

CARGO_TARGET_DIR="$TARGET" cargo build --quiet --release --locked --manifest-path bench/matmul/Cargo.toml
BIN="$TARGET/release/matmul-alone"
export RAYON_NUM_THREADS=$THREADS
for layout in ${LAYOUTS:-t n}; do
for m in ${ROWS:-256 512 1024}; do
    python3 bench/interleave.py --name "matmul-$m-$layout" --rounds "$ROUNDS" --threads "$THREADS" \
        --tool "gemm=$BIN $m 1024 1024 $THREADS $REPS $layout" \
        --tool "pytorch=$VENV/bin/python bench/matmul_reference.py $m 1024 1024 $THREADS $REPS $layout" \
        --metric gflops --metric ms \
        --version "torch=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')" \
        --version "gemm=0.19.0 (candle 0.11's CPU matmul), release, features std + rayon (the f32 kernels candle gets: AVX2/FMA)" \
        --out "bench/results/$DATE-matmul-$m-$layout.json"
done
done
