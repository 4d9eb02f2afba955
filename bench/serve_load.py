#!/usr/bin/env python3
"""Load generator for `palpipe serve` (issue 13, "Speed"), Python standard library only.

Starts `palpipe serve` on 127.0.0.1 (a free port), sends every row once to warm the
server's vector cache, then for `--seconds` keeps `--connections` threads each posting
`POST /score` requests over one keep-alive http.client connection, each request one row of
a `palpipe score --input` file (a user, a prompt and its candidates by content id). Prints
one JSON object: requests/s and rewards/s over the timed window, p50/p90/p99/max latency
(ms), the error count (a status other than 200, or a failed connection), and the server's
peak resident memory (VmHWM of its /proc status, read before it is stopped). Failed
requests are counted, not fatal: bench/score.sh fails the bench when the count is not 0.

    python3 bench/serve_load.py BIN STORE MODEL ROWS.jsonl [--seconds 30] [--connections 16]

The client runs on the same machine: on a small one it takes CPU from the server, so the
figures are the pair's, not the server's alone.
"""

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time


def vm_hwm_mib(pid):
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return None


def start(bin_, store, model, extra):
    p = subprocess.Popen(
        [bin_, "serve", "--model", model, "--addr", "127.0.0.1:0", "--store", store,
         "--queue", "1024"] + extra,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        line = p.stderr.readline()
        if not line:
            sys.exit("serve_load: the server exited before listening")
        if "listening on http://127.0.0.1:" in line:
            port = int(line.split("listening on http://127.0.0.1:")[1].split()[0])
            # Drain the request log so the server never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, port
    sys.exit("serve_load: the server did not start")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin")
    ap.add_argument("store")
    ap.add_argument("model")
    ap.add_argument("rows")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--serve-arg", action="append", default=[],
                    help="one more argument for palpipe serve (repeatable)")
    a = ap.parse_args()

    bodies = [json.dumps(json.loads(l)).encode() for l in open(a.rows) if l.strip()]
    per_request = len(json.loads(bodies[0])["candidates"])
    server, port = start(a.bin, a.store, a.model, a.serve_arg)
    try:
        # Warm-up: every row once, so that the timed window reads vectors from memory.
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for b in bodies:
            c.request("POST", "/score", b, {"Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            if r.status != 200:
                sys.exit(f"serve_load: warm-up request answered {r.status}")
        c.close()

        lat, errors, lock = [], [0], threading.Lock()
        stop_at = [0.0]
        start_gate = threading.Barrier(a.connections + 1)

        def client(k):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            mine, bad, i = [], 0, k
            start_gate.wait()
            while time.perf_counter() < stop_at[0]:
                body = bodies[i % len(bodies)]
                i += a.connections
                t = time.perf_counter()
                try:
                    conn.request("POST", "/score", body, {"Content-Type": "application/json"})
                    r = conn.getresponse()
                    r.read()
                    ok = r.status == 200
                except (OSError, http.client.HTTPException):
                    ok = False
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                if ok:
                    mine.append(time.perf_counter() - t)
                else:
                    bad += 1
            conn.close()
            with lock:
                lat.extend(mine)
                errors[0] += bad

        threads = [threading.Thread(target=client, args=(k,)) for k in range(a.connections)]
        for t in threads:
            t.start()
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        stop_at[0] = t0 + a.seconds
        start_gate.wait()
        for t in threads:
            t.join()
        window = time.perf_counter() - t0
        peak = vm_hwm_mib(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    lat.sort()
    q = lambda p: 1000.0 * lat[min(len(lat) - 1, int(p * len(lat)))] if lat else None
    out = {
        "tool": "palpipe-serve",
        "connections": a.connections,
        "seconds": window,
        "candidates_per_request": per_request,
        "requests": len(lat),
        "errors": errors[0],
        "requests_per_s": len(lat) / window,
        "rewards_per_s": len(lat) * per_request / window,
        "latency_ms": {"p50": q(0.50), "p90": q(0.90), "p99": q(0.99),
                       "max": 1000.0 * lat[-1] if lat else None,
                       "mean": 1000.0 * statistics.mean(lat) if lat else None},
        "server_peak_rss_mib": peak,
        "server_exit": server.returncode,
        "loadavg_before": list(load_before),
    }
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
