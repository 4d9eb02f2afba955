#!/usr/bin/env bash
# The CUDA build on a machine without a GPU (`make cuda-check`): it must load, run every CPU
# path the integration tests cover, pass the CLIP parity check on the CPU, and turn
# `--device cuda` into a clean error. It runs against the link stub of the driver library
# (every function answers CUDA_ERROR_NO_DEVICE), put on the library path under the driver's
# soname in a temporary folder: never do that where a real driver is installed.
#
# usage: scripts/cuda-check.sh CUDA_BINARY CUDA_HOME
set -euo pipefail
bin=$1
cuda_home=$2
[ -x "$bin" ] || { echo "no CUDA build at '$bin': run 'make build-cuda'" >&2; exit 2; }

nodriver=$(mktemp -d)
trap 'rm -rf "$nodriver"' EXIT
ln -s "$cuda_home/lib/stubs/libcuda.so" "$nodriver/libcuda.so.1"
export LD_LIBRARY_PATH="$cuda_home/lib:$nodriver"

echo "== the CUDA build loads: $("$bin" --version)"
echo "== CLIP parity on the CPU"
"$bin" parity --encoder clip --device cpu

echo "== --device cuda without a GPU is a clean error"
set +e
msg=$("$bin" parity --encoder clip --device cuda 2>&1)
code=$?
set -e
echo "$msg"
if [ "$code" -ne 1 ] || ! grep -q "cannot open device 'cuda'" <<<"$msg"; then
  echo "expected exit 1 naming the device, got exit $code" >&2
  exit 1
fi

echo "== the integration tests, against the CUDA build"
PALPIPE_TEST_BIN="$bin" cargo test --test '*' -q
