#!/usr/bin/env python3
"""MiniLM embedding speed yardstick: sentence-transformers (PyTorch, CPU) embeds the persona
statements with all-MiniLM-L6-v2, the way palpipe's `embed` does (mean pooling, L2
normalisation, batch 32), and prints one JSON object: sentences/s (best and median of a few
rounds, after a warm-up) and peak RSS. palpipe's side is run by bench/run.sh.

    python bench/minilm_reference.py [--model DIR] [--batch 32] [--threads 2] [--rounds 3] \
        [FILE.jsonl ...]   # default: /work/shared/data/persona/*.jsonl, field `statement`
"""

import argparse
import glob
import json
import os
import platform
import time


def peak_rss_mib():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="*")
    ap.add_argument(
        "--model", default=os.path.expanduser("~/.cache/palpipe/models/all-MiniLM-L6-v2")
    )
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from sentence_transformers import SentenceTransformer

    files = args.files or sorted(glob.glob("/work/shared/data/persona/*.jsonl"))
    statements = []
    for f in files:
        with open(f) as fh:
            statements += [json.loads(l)["statement"] for l in fh if l.strip()]

    model = SentenceTransformer(args.model, device=args.device)
    model.encode(statements[:64], batch_size=args.batch, normalize_embeddings=True)  # warm-up
    secs = []
    for _ in range(args.rounds):
        t = time.perf_counter()
        v = model.encode(
            statements,
            batch_size=args.batch,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        secs.append(time.perf_counter() - t)
        assert v.shape == (len(statements), 384), v.shape
    secs.sort()
    n = len(statements)
    print(
        json.dumps(
            {
                "tool": "sentence-transformers",
                "device": args.device,
                "torch": torch.__version__,
                "threads": args.threads,
                "batch": args.batch,
                "statements": n,
                "files": len(files),
                "rounds": args.rounds,
                "seconds": secs,
                "best_sentences_per_s": n / secs[0],
                "median_sentences_per_s": n / secs[len(secs) // 2],
                "peak_rss_mib": peak_rss_mib(),
                "nproc": os.cpu_count(),
                "platform": platform.platform(),
            }
        )
    )


if __name__ == "__main__":
    main()
