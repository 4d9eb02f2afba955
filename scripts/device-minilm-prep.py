#!/usr/bin/env python3
"""First half of the MiniLM device check (scripts/device-check.sh runs the second half).

A device call carries at most 64 MiB, and the CUDA build alone is ~54 MiB, so
all-MiniLM-L6-v2 travels in an earlier call, its float32 weights rounded to float16
(`.device/minilm/model-f16.safetensors`, 45 MiB; integer tensors unchanged). This script,
run on the GPU machine with its PyTorch and sentence-transformers, writes:

- DST/: the model folder again, with those weights widened back to float32 (every float is
  exactly a float16, so palpipe and sentence-transformers read the same numbers);
- DST-expected.json: sentence-transformers' vectors (CPU, float32) for the sentences of
  tests/fixtures/minilm/expected.json, in that file's format, the reference that
  `palpipe parity --encoder minilm` checks palpipe against on each device;

and prints one JSON object: how far float16 rounding moved the vectors from the committed
fixture (real weights), and sentence-transformers on the GPU against its CPU.

    python3 scripts/device-minilm-prep.py .device/minilm tests/fixtures/minilm/expected.json /tmp/minilm-dev
"""

import json
import os
import shutil
import sys

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer


def cosines(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main():
    src, fixture, dst = sys.argv[1:4]
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model-f16.safetensors"))
    t = load_file(os.path.join(src, "model-f16.safetensors"))
    t = {k: (v.float() if v.dtype == torch.float16 else v) for k, v in t.items()}
    save_file(t, os.path.join(dst, "model.safetensors"))

    fx = json.load(open(fixture))
    sentences = [i["sentence"] for i in fx["items"]]
    cpu = SentenceTransformer(dst, device="cpu").encode(
        sentences, normalize_embeddings=True, convert_to_numpy=True)
    out = {"sentences": len(sentences), "torch": torch.__version__}
    out["min_cosine_f16_weights_vs_fixture"] = float(
        cosines(cpu, [i["vector"] for i in fx["items"]]).min())
    if torch.cuda.is_available():
        gpu = SentenceTransformer(dst, device="cuda").encode(
            sentences, normalize_embeddings=True, convert_to_numpy=True)
        out["min_cosine_st_cuda_vs_st_cpu"] = float(cosines(gpu, cpu).min())
        out["gpu"] = torch.cuda.get_device_name(0)
    doc = {
        "model": "all-MiniLM-L6-v2 (weights rounded to float16, widened to float32)",
        "max_length": 256,
        "generator": "scripts/device-minilm-prep.py (sentence-transformers, CPU, float32)",
        "items": [{"sentence": s, "vector": [float(x) for x in v]}
                  for s, v in zip(sentences, cpu)],
    }
    with open(dst + "-expected.json", "w") as fh:
        json.dump(doc, fh)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
