#!/usr/bin/env python3
"""PyTorch yardstick for `palpipe score --input` (issue 13, "Speed").

Loads a palpipe PAL-B checkpoint (`weights.safetensors` + `card.json`, docs/checkpoint.md)
into bench/pal_reference.py's `PalB` model (f and g_k `mlp2-relu-dropout5-residual`, the
architecture that model is written for) and scores the rows of a `palpipe score --input`
file: `{"user", "prompt": {"id"}, "candidates": [{"id"}, ...]}` per line, the ids looked up
in a vector file (`{"content_id", "vector"}` per line, as `palpipe sql … --format json`
prints the store's `embeddings`). It does what the palpipe command does, in the same
process shape: read the vectors and the rows, score in batches, and print one JSON line per
candidate to `--out` (default: discarded). Prints one JSON object on stdout: the whole
process's rewards/s (`rewards_per_s`, from interpreter start, imports included, to the last
line written) and the scoring loop's alone (`forward_rewards_per_s`).

    python3 bench/score_reference.py CHECKPOINT_DIR VECTORS.jsonl ROWS.jsonl [--out F]

The safetensors file is read with NumPy (an 8-byte header length, a JSON header, raw
little-endian tensors), so no package but torch and numpy is needed.
"""

import argparse
import json
import os
import struct
import sys
import time

T_START = time.perf_counter()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pal_reference import PalB  # noqa: E402

ARCH = "mlp2-relu-dropout5-residual"
# nn.Sequential positions of the three Linear layers in pal_reference.projector.
LINEAR_AT = [0, 3, 6]


def read_safetensors(path):
    """name → float32 array of a safetensors file."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
        data = fh.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] != "F32":
            sys.exit(f"score_reference: tensor {name} is {meta['dtype']}, not F32")
        a, b = meta["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype="<f4").reshape(meta["shape"]).copy()
    return out


def load_model(ckpt):
    card = json.load(open(os.path.join(ckpt, "card.json")))
    m = card["model"]
    if m["kind"] != "pal-b" or m.get("dp", 0) == 0:
        sys.exit("score_reference: needs a PAL-B checkpoint with a prompt (dp > 0)")
    for key in ("item_arch", "prototype_arch"):
        if m[key] != ARCH:
            sys.exit(f"score_reference: {key} is {m[key]}; pal_reference.PalB is {ARCH}")
    if m.get("mode", "mixture") != "mixture":
        sys.exit("score_reference: only mixture mode")
    w = read_safetensors(os.path.join(ckpt, "weights.safetensors"))
    users = card["users"]
    model = PalB(m["dx"], m["d"], m["k"], len(users))
    sd = {"tau": torch.from_numpy(w["tau"])}
    for i, at in enumerate(LINEAR_AT):
        for p in ("weight", "bias"):
            sd[f"f.{at}.{p}"] = torch.from_numpy(w[f"f.{i}.{p}"])
            for k in range(m["k"]):
                sd[f"g.{k}.{at}.{p}"] = torch.from_numpy(w[f"g.{k}.{i}.{p}"])
    logits = w["user_logits"]
    for u in range(len(users)):
        sd[f"user_logits.{u}"] = torch.from_numpy(logits[u])
    model.load_state_dict(sd, strict=True)
    model.eval()
    return model, users, float(m.get("temperature", 1.0))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("vectors")
    ap.add_argument("rows")
    ap.add_argument("--out", default=os.devnull)
    ap.add_argument("--batch", type=int, default=1024, help="rows per forward pass")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    model, users, temp = load_model(a.checkpoint)
    vec = {}
    with open(a.vectors) as fh:
        for line in fh:
            if line.strip():
                r = json.loads(line)
                vec[r["content_id"]] = r["vector"]
    ids, index = [], {}
    rows = []
    with open(a.rows) as fh:
        for line in fh:
            if not line.strip():
                continue
            r = json.loads(line)
            cand = [c["id"] for c in r["candidates"]]
            for c in [r["prompt"]["id"]] + cand:
                if c not in index:
                    index[c] = len(ids)
                    ids.append(c)
            rows.append((users[r["user"]], index[r["prompt"]["id"]], [index[c] for c in cand]))
    table = torch.tensor(np.asarray([vec[c] for c in ids], dtype=np.float32))

    t0 = time.perf_counter()
    n_rewards = 0
    with open(a.out, "w") as out, torch.no_grad():
        s = model.tau.exp().clamp(max=100.0)
        for start in range(0, len(rows), a.batch):
            chunk = rows[start:start + a.batch]
            counts = [len(c) for _, _, c in chunk]
            w = torch.softmax(
                torch.stack([model.user_logits[u] for u, _, _ in chunk]) / temp, dim=-1)
            xc = table[[p for _, p, _ in chunk]]
            g = torch.stack([model.proj(gk, xc) for gk in model.g], dim=1)  # [B, K, d]
            z = (w.unsqueeze(2) * g).sum(1)  # [B, d]
            x = table[[i for _, _, c in chunk for i in c]]
            fx = model.proj(model.f, x)
            zz = torch.repeat_interleave(z, torch.tensor(counts), dim=0)
            r = model.reward(fx, zz, s).tolist()
            at = 0
            lines = []
            for j, n in enumerate(counts):
                for i in range(n):
                    lines.append(json.dumps(
                        {"candidate": i, "reward": r[at + i], "row": start + j}))
                at += n
            out.write("\n".join(lines) + "\n")
            n_rewards += len(r)
    t1 = time.perf_counter()
    print(json.dumps({
        "tool": "pytorch",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rows": len(rows),
        "rewards": n_rewards,
        "rewards_per_s": n_rewards / (t1 - T_START),
        "forward_rewards_per_s": n_rewards / (t1 - t0),
        "process_s": t1 - T_START,
        "forward_s": t1 - t0,
    }, sort_keys=True))


if __name__ == "__main__":
    main()
