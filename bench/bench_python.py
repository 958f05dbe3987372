#!/usr/bin/env python3
"""The Python package against the C client and against loading files, in one run.

1. Warm acquire from Python: acquire + tensor + numpy.from_dlpack + release
   of one resident adapter (16 layers, rank 8, 1024 wide, F16, q/k/v/o: the
   adapter of bench_acquire), against the C client's warm acquire + release
   (bench_acquire, one client).  Rounds alternate C and Python; medians of
   the per-round medians.  Target: Python within 1.5x of C.
2. A Python worker holding a set of 100 adapters: acquire each and take a
   numpy view of every tensor, against safetensors.numpy.load_file of each
   adapter's file (what engines do today, per worker).  Time and the
   worker's resident memory added.

Run from the repository with the package installed in .venv and the build in
build/ (scripts/test does both):  .venv/bin/python bench/bench_python.py
"""
import argparse
import gc
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

import lorastore

REPO = Path(__file__).resolve().parents[1]


def write_adapter(path: Path, seed: int, layers: int, hidden: int, rank: int) -> None:
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    tensors = {}
    for i in range(layers):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            base = f"base_model.model.model.layers.{i}.self_attn.{proj}"
            tensors[f"{base}.lora_A.weight"] = (rng.standard_normal((rank, hidden)) * 0.02).astype(np.float16)
            tensors[f"{base}.lora_B.weight"] = (rng.standard_normal((hidden, rank)) * 0.02).astype(np.float16)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}))


class Daemon:
    def __init__(self, root: Path, binary: Path):
        self.socket = str(root / "d.sock")
        self.log = open(root / "daemon.log", "wb")
        self.proc = subprocess.Popen([str(binary), "--socket", self.socket, "--state-dir",
                                      str(root / "state"), "--backend", "host",
                                      "--host-budget", "2GiB", "--log-level", "warning"],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(self.socket)
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit("bench_python: lorastored did not start")
                time.sleep(0.02)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(20)
        self.log.close()


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def python_warm(conn, iters: int) -> float:
    """Median microseconds of acquire + tensor + from_dlpack + release."""
    module = "model.layers.0.self_attn.q_proj"
    for _ in range(200):
        with conn.acquire("bench/warm") as ad:
            a = np.from_dlpack(ad.tensor(module, "A"))
            del a
    times = []
    clock = time.perf_counter_ns
    for _ in range(iters):
        t0 = clock()
        ad = conn.acquire("bench/warm")
        a = np.from_dlpack(ad.tensor(module, "A"))
        del a
        ad.release()
        del ad
        times.append(clock() - t0)
    return statistics.median(times) / 1000.0


def c_warm(binary: Path, iters: int) -> float:
    """Median microseconds of bench_acquire's warm acquire + release, one client."""
    out = subprocess.run([str(binary), "--iters", str(iters), "--clients", "1"],
                         capture_output=True, text=True, check=True).stdout
    meds = [float(m.group(1)) for m in
            re.finditer(r"^\s+1\s+lorastore \(\S+\)\s+\d+\s+([\d.]+)", out, re.M)]
    if not meds:
        raise SystemExit("bench_python: no lorastore line in bench_acquire's output:\n" + out)
    return statistics.median(meds)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=20000, help="timed warm acquires per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of C and Python, alternated")
    ap.add_argument("--adapters", type=int, default=100, help="adapters of the set (part 2)")
    ap.add_argument("--set-layers", type=int, default=32, help="layers of each adapter of the set")
    ap.add_argument("--build", default=str(REPO / "build"), help="the CMake build tree")
    a = ap.parse_args()
    build = Path(a.build)
    work = Path(tempfile.mkdtemp(prefix="bench-python-"))
    d = Daemon(work, build / "daemon" / "lorastored")
    try:
        conn = lorastore.connect(d.socket)
        write_adapter(work / "warm", 1, 16, 1024, 8)
        conn.import_dir(work / "warm", name="bench/warm")
        print(f"bench_python: Python {sys.version.split()[0]}, numpy {np.__version__}; "
              f"{a.iters} warm acquires per round, {a.rounds} rounds")
        py, c = [], []
        for r in range(a.rounds):
            c.append(c_warm(build / "bench" / "bench_acquire", a.iters))
            py.append(python_warm(conn, a.iters))
            print(f"  round {r + 1}: C {c[-1]:.1f} us, Python {py[-1]:.1f} us")
        cm, pm = statistics.median(c), statistics.median(py)
        print(f"warm acquire, median us: C acquire + release {cm:.1f}; Python acquire + tensor "
              f"+ from_dlpack + release {pm:.1f}; Python/C {pm / cm:.2f} (target <= 1.5)")

        # 2. a set of adapters held by one worker
        files = []
        for i in range(a.adapters):
            p = work / f"set{i}"
            write_adapter(p, 100 + i, a.set_layers, 1024, 16)
            conn.import_dir(p, name=f"set/a{i:03d}")
            files.append(p / "adapter_model.safetensors")
        for i in range(a.adapters):
            conn.load(f"set/a{i:03d}")
        mb = sum(f.stat().st_size for f in files) / 1e6
        gc.collect()
        r0, t0 = rss_kib(), time.perf_counter()
        held = []
        for i in range(a.adapters):
            ad = conn.acquire(f"set/a{i:03d}")
            views = [np.from_dlpack(ad.tensor(t.module, t.kind)) for t in ad.tensors()]
            held.append((ad, views))
        t_ls, r_ls = time.perf_counter() - t0, rss_kib() - r0
        n_views = sum(len(v) for _, v in held)
        del held, views, ad
        gc.collect()
        r0, t0 = rss_kib(), time.perf_counter()
        loaded = [load_file(str(f)) for f in files]
        t_st, r_st = time.perf_counter() - t0, rss_kib() - r0
        del loaded
        print(f"holding {a.adapters} adapters ({mb:.0f} MB of files, {n_views} tensors): "
              f"lorastore {t_ls * 1000:.0f} ms, +{r_ls / 1024:.1f} MiB resident; "
              f"safetensors.numpy.load_file {t_st * 1000:.0f} ms, +{r_st / 1024:.1f} MiB "
              f"resident; time ratio {t_st / t_ls:.1f}x")
        gc.collect()
        conn.close()
    finally:
        d.stop()
        subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
