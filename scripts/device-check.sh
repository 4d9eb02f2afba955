#!/usr/bin/env bash
# The CUDA build's check on a lent GPU machine, in one run: parity of the tiny CLIP fixture on
# the GPU (and on that machine's CPU, for comparison) and CLIP images/s on both.
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

# Each step's stdout goes to OUT_DIR/<step>.json, every stderr to OUT_DIR/log.txt (a device
# call brings back at most 8 files).
status=0
step() {
  local name=$1
  shift
  echo "== $name: $*" | tee -a "$out/log.txt"
  if "$@" > "$out/$name.json" 2>> "$out/log.txt"; then
    echo "   ok"
  else
    echo "   FAILED (exit $?)"
    status=1
  fi
  cat "$out/$name.json"
}

{
  if command -v nvidia-smi > /dev/null; then nvidia-smi -L; else echo "no nvidia-smi here"; fi
  ldd "$bin"
} > "$out/env.txt" 2>&1
cat "$out/env.txt"
if grep -q '=> not found' "$out/env.txt"; then
  echo "the binary cannot load all its libraries (see above)" >&2
  exit 1
fi
step parity-cuda "$bin" parity --encoder clip --device cuda --json
step parity-cpu "$bin" parity --encoder clip --device cpu --json
step clip-cuda "$bin" bench-clip --device cuda --images 2000
step clip-cpu "$bin" bench-clip --device cpu --images 2000
cat "$out/log.txt"
exit $status
