"""PyTorch's side of bench/matmul.sh: times a @ w.t() in f32 (a [M, K], w [N, K]), the
product of a Linear layer (layout `t`, the default), or a @ b with b [K, N] (layout `n`),
and prints one JSON object like bench/matmul/ (`ms`: median per product over REPS after 3
warm-up products; `gflops`).

    python3 bench/matmul_reference.py M N K THREADS REPS [t|n]
"""

import json
import sys
import time

import torch


def main():
    m, n, k, threads, reps = (int(v) for v in sys.argv[1:6])
    layout = sys.argv[6] if len(sys.argv) > 6 else "t"
    if layout not in ("t", "n"):
        sys.exit(f"layout must be t or n, got {layout!r}")
    torch.set_num_threads(threads)
    a = ((torch.arange(m * k) % 97).float() - 48.0).div(97.0).reshape(m, k)
    w = ((torch.arange(n * k) % 89).float() - 44.0).div(890.0).reshape(n, k)
    # `t`: the weight read transposed (a view, as nn.Linear does); `n`: w's buffer read as
    # [K, N] (as bench/matmul/ does; the values' distribution is the same, K = N here).
    b = w.t() if layout == "t" else w.reshape(k, n)
    # Into a preallocated output, as gemm writes into one.
    c = torch.empty(m, n)
    with torch.no_grad():
        for _ in range(3):
            torch.mm(a, b, out=c)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            torch.mm(a, b, out=c)
            times.append(time.perf_counter() - t)
    times.sort()
    s = times[len(times) // 2]
    print(json.dumps({"ms": round(s * 1e3, 3), "gflops": round(2 * m * n * k / s / 1e9, 1),
                      "m": m, "n": n, "k": k, "threads": threads, "layout": layout}))


if __name__ == "__main__":
    main()
