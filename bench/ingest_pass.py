#!/usr/bin/env python3
"""One timed pass over a JSON lines file, for bench/ingest.sh (run through interleave.py,
which adds the wall time and the peak RSS). Prints one JSON object with `mb_per_s`.

    python3 bench/ingest_pass.py palpipe FILE STORE BIN   # `palpipe ingest` into a fresh store
    python3 bench/ingest_pass.py reference FILE           # `wc -l`, then a json.loads pass

The reference is what the issue names: `wc -l` plus a Python `json.loads` pass over the same
file; its `mb_per_s` is the file's size over the two times together, and it prints each
alone too.
"""

import json
import os
import shutil
import subprocess
import sys
import time


def main():
    tool, path = sys.argv[1], sys.argv[2]
    mb = os.path.getsize(path) / 1e6
    if tool == "palpipe":
        store, binary = sys.argv[3], sys.argv[4]
        shutil.rmtree(store, ignore_errors=True)
        cmd = [binary, "ingest", path, "--dataset", "bench",
               "--column", "user=annotator", "--column", "prompt=prompt",
               "--column", "chosen=chosen", "--column", "rejected=rejected",
               "--store", store, "--quiet"]
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        s = time.perf_counter() - t
        shutil.rmtree(store, ignore_errors=True)
        print(json.dumps({"mb": round(mb, 1), "seconds": s, "mb_per_s": mb / s}))
    elif tool == "reference":
        t0 = time.perf_counter()
        subprocess.run(["wc", "-l", path], check=True, stdout=subprocess.DEVNULL)
        t1 = time.perf_counter()
        with open(path, "rb") as fh:
            for line in fh:
                json.loads(line)
        t2 = time.perf_counter()
        print(json.dumps({"mb": round(mb, 1), "seconds": t2 - t0, "mb_per_s": mb / (t2 - t0),
                          "wc_l_mb_per_s": mb / (t1 - t0),
                          "json_loads_mb_per_s": mb / (t2 - t1)}))
    else:
        sys.exit(f"unknown tool {tool!r}: palpipe or reference")


if __name__ == "__main__":
    main()
