#!/usr/bin/env python3
"""PyTorch yardstick for `palpipe bench-pal` (issue #3).

An independent PyTorch implementation of the same PAL-B head (PAL-SPEC "Projectors",
"PAL-B", "Training"): item mapping f and K prototype mappings g_k, each
`mlp2-relu-dropout5-residual` (Linear -> Dropout -> ReLU, twice, then Linear, plus the
input), user logits W [U, K], mixture w = softmax(W), z = sum_k w_k g_k(x_c),
r = min(exp(tau), 100) * cos(f(x), z), logistic loss on m = r(x_l) - r(x_r), AdamW per
parameter group (projectors lr 1e-4 wd 0.01, user logits lr 5e-3 wd 0, tau lr 0.1 wd 0).
The user logits are one parameter per user (as in the reference code), so only the users
present in a batch get updated.

It is written the way the reference code computes a batch: f runs on every comparison's
left and right item and g_k on every comparison's prompt; nothing is de-duplicated.

Same data modes and sizes as the Rust benchmark; prints the same JSON fields.
"""

import argparse
import datetime
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def projector(d_in, d, p=0.5):
    return nn.Sequential(
        nn.Linear(d_in, d), nn.Dropout(p), nn.ReLU(),
        nn.Linear(d, d), nn.Dropout(p), nn.ReLU(),
        nn.Linear(d, d),
    )


class PalB(nn.Module):
    def __init__(self, dim, d, k, n_users):
        super().__init__()
        self.f = projector(dim, d)
        self.g = nn.ModuleList([projector(dim, d) for _ in range(k)])
        self.tau = nn.Parameter(torch.tensor([math.log(1 / 0.07)]))
        # one parameter per user, as the reference code's ParameterDict
        self.user_logits = nn.ParameterList(
            [nn.Parameter(torch.randn(k)) for _ in range(n_users)])

    def proj(self, net, x):
        return x + net(x)  # residual

    def reward(self, fx, z, s):
        return s * F.cosine_similarity(fx, z, dim=-1, eps=1e-8)

    def margins(self, users, xc, xl, xr):
        w = torch.softmax(torch.stack([self.user_logits[u] for u in users]), dim=-1)  # [B, K]
        g = torch.stack([self.proj(gk, xc) for gk in self.g], dim=1)  # [B, K, d]
        z = (w.unsqueeze(2) * g).sum(1)
        s = self.tau.exp().clamp(max=100.0)
        rl = self.reward(self.proj(self.f, xl), z, s)
        rr = self.reward(self.proj(self.f, xr), z, s)
        return rl - rr


def generate(a, distinct, rng):
    scale = 1.0 / math.sqrt(a.dim)
    if distinct:
        n_items, n_prompts = max(a.pool, 2), max(a.pool, 1)
    else:
        n_items, n_prompts = 2, max(a.prompts, 1)
    items = (rng.standard_normal((n_items, a.dim)) * scale).astype(np.float32)
    prompts = (rng.standard_normal((n_prompts, a.dim)) * scale).astype(np.float32)
    user = rng.integers(0, a.users, a.n)
    prompt = rng.integers(0, n_prompts, a.n)
    if distinct:
        left = rng.integers(0, n_items, a.n)
        right = rng.integers(0, n_items - 1, a.n)
        right = right + (right >= left)
    else:
        left = np.zeros(a.n, dtype=np.int64)
        right = np.ones(a.n, dtype=np.int64)
    y = np.where(rng.random(a.n) < 0.5, 1.0, -1.0).astype(np.float32)
    return (torch.from_numpy(items), torch.from_numpy(prompts),
            user, torch.from_numpy(prompt), torch.from_numpy(left),
            torch.from_numpy(right), torch.from_numpy(y))


def peak_rss_mib():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--users", type=int, default=1000)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--distinct", action="store_true")
    mode.add_argument("--repeating", action="store_true")
    ap.add_argument("--pool", type=int, default=20_000)
    ap.add_argument("--prompts", type=int, default=4000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--eval-n", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    a = ap.parse_args()
    distinct = a.distinct
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)

    t0 = time.perf_counter()
    items, prompts, user, prompt, left, right, y = generate(a, distinct, rng)
    gen_s = time.perf_counter() - t0

    dev = torch.device(a.device)
    items, prompts, prompt, left, right, y = (
        t.to(dev) for t in (items, prompts, prompt, left, right, y))
    # On a GPU the kernels run asynchronously: each phase timer waits for its work.
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    model = PalB(a.dim, a.d, a.k, a.users).to(dev)
    proj_params = list(model.f.parameters()) + list(model.g.parameters())
    # AdamW, one group per part (PAL-SPEC "Training", reference values)
    opt_proj = torch.optim.AdamW(proj_params, lr=1e-4, weight_decay=0.01,
                                 betas=(0.9, 0.999), eps=1e-8)
    opt_users = torch.optim.AdamW(list(model.user_logits), lr=5e-3, weight_decay=0.0,
                                  betas=(0.9, 0.999), eps=1e-8)
    opt_tau = torch.optim.AdamW([model.tau], lr=0.1, weight_decay=0.0,
                                betas=(0.9, 0.999), eps=1e-8)
    opts = (opt_proj, opt_users, opt_tau)
    params = sum(p.numel() for p in model.parameters())

    ph = {"gather": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0, "other": 0.0}

    def step(i, timed):
        sl = slice(i * a.batch, (i + 1) * a.batch)
        t0 = time.perf_counter()
        u = user[sl].tolist()
        xc = prompts[prompt[sl]]
        xl = items[left[sl]]
        xr = items[right[sl]]
        yb = y[sl]
        sync()
        t1 = time.perf_counter()
        m = model.margins(u, xc, xl, xr)
        loss = F.softplus(yb * m).mean()  # log(1 + exp(-t)), t = -y m
        sync()
        t2 = time.perf_counter()
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        sync()
        t3 = time.perf_counter()
        for o in opts:
            o.step()  # params without a gradient (absent users) are skipped
        sync()
        t4 = time.perf_counter()
        _ = loss.item()
        t5 = time.perf_counter()
        if timed:
            ph["gather"] += t1 - t0
            ph["forward"] += t2 - t1
            ph["backward"] += t3 - t2
            ph["optimizer"] += t4 - t3
            ph["other"] += t5 - t4

    model.train()
    for i in range(a.warmup):
        step(i, False)
    cpu0 = time.process_time()
    for i in range(a.warmup, a.warmup + a.steps):
        step(i, True)
    cpu_s = time.process_time() - cpu0
    train_s = sum(ph.values())

    # scoring: evaluation mode, chunks of 4096, no gradients
    model.eval()
    eval_n = min(a.eval_n, a.n)
    t0 = time.perf_counter()
    correct = 0
    with torch.no_grad():
        for s in range(0, eval_n, 4096):
            sl = slice(s, min(s + 4096, eval_n))
            m = model.margins(user[sl].tolist(), prompts[prompt[sl]], items[left[sl]],
                              items[right[sl]])
            correct += int(((m > 0) == (y[sl] < 0)).sum())
    sync()
    eval_s = time.perf_counter() - t0

    per_step = lambda x: 1000.0 * x / a.steps
    out = {
        "tool": "pytorch",
        "device": a.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "mode": "distinct" if distinct else "repeating",
        "n": a.n, "users": a.users, "dx": a.dim, "dp": a.dim, "d": a.d, "k": a.k,
        "arch": "mlp2-relu-dropout5-residual", "batch": a.batch,
        "warmup_steps": a.warmup, "steps": a.steps, "params": params,
        "train_comparisons_per_s": a.steps * a.batch / train_s,
        "train_ms_per_step": per_step(train_s),
        "train_cpu_ms_per_step": per_step(cpu_s),
        "phases_ms_per_step": {k: per_step(v) for k, v in ph.items()},
        "eval_n": eval_n,
        "eval_comparisons_per_s": eval_n / eval_s,
        "data_gen_s": gen_s,
        "peak_rss_mib": peak_rss_mib(),
        "nproc": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    print(json.dumps(out, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
