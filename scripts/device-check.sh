#!/usr/bin/env bash
# The CUDA build's check on a lent GPU machine, in one run: parity of the tiny CLIP fixture
# and of all-MiniLM-L6-v2 on the GPU (and on that machine's CPU, for comparison); then, each
# interleaved A B A B over 3 rounds (bench/interleave.py): PAL-B training and scoring on the
# GPU beside the PyTorch yardstick on the same GPU (distinct and repeating data), MiniLM
# sentences/s beside sentence-transformers on the GPU, and CLIP images/s on GPU and CPU.
#
# MiniLM needs an earlier device call (the binary and the weights do not fit in one call's
# 64 MiB) that ran `python3 scripts/device-minilm-prep.py .device/minilm
# tests/fixtures/minilm/expected.json /tmp/minilm-dev` on the same, still warm, machine;
# without /tmp/minilm-dev the MiniLM steps are skipped and say so. The texts for MiniLM's
# speed are the JSON-lines files in .device/persona (copied there from ../shared/data/persona
# for the call; never committed).
#
# It needs only the palpipe binary built by `make build-cuda-release` (carried compressed,
# see the README's CUDA section) and this checkout's tests/fixtures. The GPU's driver provides
# libcuda; cuBLAS, cuRAND and NVRTC are taken from the nvidia-* wheels of that machine's
# python3, or from $CUDA_LIBS.
#
# usage: scripts/device-check.sh [BIN|BIN.xz] [OUT_DIR]
set -uo pipefail

bin=${1:-.device/palpipe.xz}
out=${2:-${OUT:-/tmp/palpipe-device-check}}
mkdir -p "$out"

case "$bin" in
*.xz)
  xz -dc "$bin" > /tmp/palpipe-device || { echo "cannot unpack $bin" >&2; exit 2; }
  chmod +x /tmp/palpipe-device
  bin=/tmp/palpipe-device
  ;;
esac
[ -x "$bin" ] || { echo "no palpipe binary at '$bin'" >&2; exit 2; }

if [ -z "${CUDA_LIBS:-}" ]; then
  CUDA_LIBS=$(python3 - <<'PY'
import glob, os, sysconfig
dirs = set()
for root in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
    for name in ("libcublas.so.*", "libcublasLt.so.*", "libcurand.so.*", "libcudart.so.*", "libnvrtc.so.*"):
        for f in glob.glob(os.path.join(root, "nvidia", "**", name), recursive=True):
            dirs.add(os.path.dirname(f))
print(":".join(sorted(dirs)))
PY
)
fi
export LD_LIBRARY_PATH="${CUDA_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

status=0
{
  if command -v nvidia-smi > /dev/null; then nvidia-smi -L; else echo "no nvidia-smi here"; fi
  ldd "$bin"
} > "$out/env.txt" 2>&1
cat "$out/env.txt"
if grep -q '=> not found' "$out/env.txt"; then
  echo "the binary cannot load all its libraries (see above)" >&2
  exit 1
fi
# Every parity report goes to parity.txt, every speed table to the log.
pstep() {
  echo "== $*" | tee -a "$out/log.txt"
  if "$@" >> "$out/parity.txt" 2>> "$out/log.txt"; then echo "   ok"; else echo "   FAILED"; status=1; fi
  echo >> "$out/parity.txt"
}
pstep "$bin" parity --encoder clip --device cuda --json
pstep "$bin" parity --encoder clip --device cpu --json
minilm=/tmp/minilm-dev
if [ -d "$minilm" ]; then
  pstep "$bin" parity --encoder minilm --model-dir "$minilm" --expected "$minilm-expected.json" --device cuda --json
  pstep "$bin" parity --encoder minilm --model-dir "$minilm" --expected "$minilm-expected.json" --device cpu --json
else
  echo "== MiniLM skipped: no $minilm (run scripts/device-minilm-prep.py in a call before)" | tee -a "$out/log.txt"
fi

nproc=$(nproc)
bench() { # NAME ARGS…: bench/interleave.py, its table to the log, its JSON to OUT/NAME.json
  local name=$1
  shift
  echo "== $name" | tee -a "$out/log.txt"
  if python3 bench/interleave.py --name "$name" --rounds 3 --threads "$nproc" \
    --version "torch=$(python3 -c 'import torch; print(torch.__version__)')" \
    --out "$out/$name.json" "$@" >> "$out/log.txt" 2>&1; then echo "   ok"; else echo "   FAILED"; status=1; fi
}
pal_args="--n 60000 --steps 100 --warmup 5 --eval-n 20000"
for mode in distinct repeating; do
  bench "pal-$mode-cuda" \
    --tool "palpipe=$bin bench-pal --$mode $pal_args --device cuda" \
    --tool "pytorch=python3 bench/pal_reference.py --$mode $pal_args --device cuda --threads $nproc" \
    --metric train_comparisons_per_s --metric eval_comparisons_per_s --metric train_ms_per_step
done
if [ -d "$minilm" ]; then
  bench minilm-cuda \
    --tool "palpipe=$bin bench-minilm --device cuda --batch 128 --rounds 2 --model-dir $minilm .device/persona/*.jsonl" \
    --tool "sentence-transformers=python3 bench/minilm_reference.py --device cuda --batch 128 --rounds 2 --threads $nproc --model $minilm .device/persona/*.jsonl" \
    --metric median_sentences_per_s
fi
for dev in cuda cpu; do
  echo "== bench-clip $dev" | tee -a "$out/log.txt"
  "$bin" bench-clip --device $dev --images 2000 >> "$out/clip.txt" 2>> "$out/log.txt" || status=1
done
cat "$out/parity.txt"
grep -v '^== .*round' "$out/log.txt"
exit $status
