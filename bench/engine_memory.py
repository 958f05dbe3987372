#!/usr/bin/env python3
"""Memory of adapters held by several engine processes: lorastore against
each process loading the adapters' folders.

Two parts, each run both ways:

- **vllm**: two vLLM processes (CPU build, offline LLM, engine core and
  worker in the process: VLLM_ENABLE_V1_MULTIPROCESSING=0, executor "uni")
  hold the same 16 adapters in their CPU caches (max_cpu_loras=16): one
  1-token generate per adapter puts it there.  Folder: LoRARequest with the
  adapter's folder: safetensors (0.8) gives tensors backed by a copy-on-write
  mapping of the file, so A stays page-cache pages that every process
  mapping the file shares (Pss_File), and B becomes the process's own when
  vLLM scales it in place.  lorastore: lorastore://NAME through the plugin
  (lorastore.vllm): the plugin gives vLLM a copy of B, and A is the
  daemon's shared memory (Pss_Shmem).
- **peft**: four Python processes with transformers + PEFT hold the same 50
  adapters.  Folder: PeftModel.from_pretrained, then load_adapter, per
  adapter (PEFT copies each tensor into its own parameter).  lorastore:
  lorastore.peft.attach (every LoRA parameter is the daemon's memory).
  Then one forward pass of a mixed batch, one row per adapter
  (adapter_names=...), so that every adapter's pages are touched as serving
  would touch them.

Measured, for each engine process (with its descendants): RSS and PSS from
/proc/PID/smaps_rollup before the adapters (model loaded, one forward pass
done) and after (every adapter held and used once), and the same for
lorastored.  RSS counts every page a process maps in full, shared or not, so
the daemon's shared pages count again in every process that touches them;
PSS divides each page by the number of processes mapping it, so the PSS of
all processes together is the memory the machine really spends.  The totals
are therefore sums of PSS growth: the engine processes' plus the daemon's
(the daemon's PSS falls as clients share its pages), and, for lorastore, the
daemon's own copy of the part's adapters (what its PSS grew by while it
loaded them, measured once before the rounds).  The peer is the folder
way; the floor for lorastore is one copy of the adapters on the machine (the
daemon's), plus for vLLM a copy of B per process.  Page cache that no
process maps (the folders' files once read) is counted by neither way (it
is reclaimable); the file pages that processes map are in their PSS.

Model (default): a random Llama 2048 wide (intermediate 5632, 16 heads of
128, no GQA), 4 layers, vocabulary 256, float32; adapters of rank 16 on
q/k/v/o/gate/up/down, float32 (so lorastore's tensors are used without a
conversion), 10.1 MB each.  Each repeat runs each part both ways, one way
after the other (the order alternates between repeats), the processes of one
way side by side.

Run from the repository (the daemon in build/, the engine environment of
scripts/install-deps):

    ~/.cache/lorastore/engines/bin/python bench/engine_memory.py
    ~/.cache/lorastore/engines/bin/python bench/engine_memory.py --quick   # a smoke run
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_load import (  # noqa: E402  (this folder's module)
    PROMPT, REPO, Daemon, exit_on_sigterm, finish, llama_shape, machine_line, module_shapes,
    stop_process, write_adapter, write_base)

MiB = 1 << 20
PHASE_TIMEOUT_S = 1200


# -------------------------------------------------------------- measurement

def descendants(pid: int) -> list:
    """pid and every process below it."""
    children = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def smaps(pid: int) -> dict:
    """Rss, Pss, Pss_Anon, Pss_File, Pss_Shmem in bytes, summed over pid's tree."""
    keys = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem")
    total = dict.fromkeys(keys, 0)
    for p in descendants(pid):
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:  # gone meanwhile
            continue
        for line in text.splitlines():
            k, _, v = line.partition(":")
            if k in total:
                total[k] += int(v.split()[0]) * 1024
    return total


def diff(after: dict, before: dict) -> dict:
    return {k: after[k] - before[k] for k in after}


# ------------------------------------------------------------------- workers

def worker_vllm(spec: dict, way: str, reply, commands) -> None:
    if way == "lorastore":
        os.environ["LORASTORE_VLLM"] = "1"
        os.environ["LORASTORE_SOCKET"] = spec["socket"]
    else:  # vLLM as it is
        os.environ.pop("LORASTORE_VLLM", None)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    n = spec["vllm_adapters"]
    llm = LLM(model=spec["base"], enable_lora=True, max_lora_rank=spec["rank"], max_loras=2,
              max_cpu_loras=n, dtype="float32", max_model_len=128, enforce_eager=True, seed=0,
              max_num_batched_tokens=256, max_num_seqs=8, kv_cache_memory_bytes=64 << 20,
              distributed_executor_backend="uni", enable_prefix_caching=False)
    params = SamplingParams(temperature=0, max_tokens=1)
    llm.generate([PROMPT], params, use_tqdm=False)
    gc.collect()
    reply("ready")
    commands("go")
    t = time.perf_counter()
    each = []
    for i in range(n):
        path = (f"lorastore://{spec['names'][i]}" if way == "lorastore" else spec["dirs"][i])
        t1 = time.perf_counter()
        out = llm.generate([PROMPT], params, lora_request=LoRARequest(f"a{i}", i + 1, path),
                           use_tqdm=False)
        each.append(round(time.perf_counter() - t1, 4))
        if len(out[0].outputs[0].token_ids) != 1:
            raise SystemExit(f"engine_memory: {path} gave no token")
    secs = time.perf_counter() - t
    print("engine_memory worker: seconds per generate:", each, flush=True)
    held = llm.llm_engine.list_loras()
    if len(held) != n:
        raise SystemExit(f"engine_memory: vLLM's CPU cache holds {len(held)} adapters, not {n}")
    gc.collect()
    reply("done " + json.dumps({"secs": secs, "held": len(held)}))
    commands("exit")


def worker_peft(spec: dict, way: str, reply, commands) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    # The processes run side by side: torch's threads share the CPUs between them.
    torch.set_num_threads(spec["peft_threads"])
    torch.manual_seed(0)
    n = spec["peft_adapters"]
    model = AutoModelForCausalLM.from_pretrained(spec["base"], dtype=torch.float32).eval()
    ids = torch.randint(3, spec["vocab"], (n, 4))
    with torch.no_grad():
        model(ids)
    gc.collect()
    reply("ready")
    commands("go")
    t = time.perf_counter()
    shared = converted = 0
    if way == "lorastore":
        import lorastore
        import lorastore.peft

        conn = lorastore.connect(spec["socket"])
        pm = model
        for i in range(n):
            ad = conn.acquire(spec["names"][i])
            pm = lorastore.peft.attach(pm, ad, f"a{i}")
            ad.release()
        for att in lorastore.peft.attached(pm).values():
            shared += len(att.shared)
            converted += len(att.converted)
    else:
        from peft import PeftModel

        pm = PeftModel.from_pretrained(model, spec["dirs"][0], adapter_name="a0")
        for i in range(1, n):
            pm.load_adapter(spec["dirs"][i], adapter_name=f"a{i}")
    pm.eval()
    with torch.no_grad():
        pm(input_ids=ids, adapter_names=[f"a{i}" for i in range(n)])
    secs = time.perf_counter() - t
    gc.collect()
    reply("done " + json.dumps({"secs": secs, "held": len(pm.peft_config),
                                "shared": shared, "converted": converted}))
    commands("exit")


def worker_main(a) -> int:
    spec = json.loads(Path(a.spec).read_text())
    out = os.fdopen(a.reply_fd, "w", buffering=1)

    def reply(msg: str) -> None:
        out.write(msg + "\n")

    def commands(expected: str) -> None:
        line = sys.stdin.readline().strip()
        if line != expected:  # the parent went away or gave up
            raise SystemExit(f"engine_memory worker: {line!r} instead of {expected!r}")

    {"vllm": worker_vllm, "peft": worker_peft}[a.worker](spec, a.way, reply, commands)
    return 0


class Worker:
    """One engine process: started by run_set, driven line by line."""

    def __init__(self, work: Path, spec_path: Path, part: str, way: str, idx: int, env: dict):
        self.name = f"{part}-{way}-{idx}"
        self.log_path = work / f"{self.name}.log"
        r, w = os.pipe()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker", part, "--way", way,
                 "--spec", str(spec_path), "--reply-fd", str(w)],
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, pass_fds=(w,),
                env=env, text=True)
        os.close(w)
        self.replies = r
        self.pending = b""

    def expect(self, word: str, deadline: float) -> str:
        """The rest of the worker's next line that begins with word."""
        while True:
            while b"\n" in self.pending:
                line, self.pending = self.pending.split(b"\n", 1)
                head, _, rest = line.decode().strip().partition(" ")
                if head == word:
                    return rest
            left = deadline - time.monotonic()
            if left <= 0:
                raise SystemExit(f"engine_memory: {self.name} did not say {word!r} in time; "
                                 f"log: {self.log_path}\n{self.log_tail()}")
            ready, _, _ = select.select([self.replies], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self.replies, 4096)
                if not chunk:
                    self.proc.wait(30)
                    raise SystemExit(f"engine_memory: {self.name} exited with "
                                     f"{self.proc.returncode} before {word!r}:\n{self.log_tail()}")
                self.pending += chunk

    def send(self, word: str) -> None:
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.proc)
        if self.replies >= 0:
            os.close(self.replies)
            self.replies = -1
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except OSError:
                pass


LIVE: list = []  # workers to stop whatever happens


def run_set(work: Path, spec_path: Path, part: str, way: str, procs: int, daemon: Daemon) -> dict:
    """Start procs workers side by side, measure them (and the daemon) before
    and after they load the adapters; returns the deltas."""
    env = dict(os.environ)
    ws = [Worker(work, spec_path, part, way, i, env) for i in range(procs)]
    LIVE.extend(ws)
    try:
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        for w in ws:
            w.expect("ready", deadline)
        before = [smaps(w.proc.pid) for w in ws]
        d_before = smaps(daemon.pid)
        for w in ws:
            w.send("go")
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        info = [json.loads(w.expect("done", deadline)) for w in ws]
        after = [smaps(w.proc.pid) for w in ws]
        d_after = smaps(daemon.pid)
        for w in ws:
            w.send("exit")
        for w in ws:
            rc = w.proc.wait(120)
            if rc != 0:
                raise SystemExit(f"engine_memory: {w.name} exited with {rc}:\n{w.log_tail()}")
        return {"procs": [diff(x, y) for x, y in zip(after, before)],
                "daemon": diff(d_after, d_before), "info": info,
                "before_rss": [b["Rss"] for b in before]}
    finally:
        for w in ws:
            w.stop()
            LIVE.remove(w)


# ------------------------------------------------------------------- the run

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("vllm", "peft", "both"), default="both")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=16, help="attention heads of 128")
    ap.add_argument("--kv-heads", type=int, default=None, help="default: --heads (no GQA)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--vllm-procs", type=int, default=2)
    ap.add_argument("--vllm-adapters", type=int, default=16)
    ap.add_argument("--peft-procs", type=int, default=4)
    ap.add_argument("--peft-adapters", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3, help="rounds of both ways per part")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 512 wide, 2 layers, 4 and 6 adapters, 1 repeat")
    ap.add_argument("--daemon", default=str(REPO / "build" / "daemon" / "lorastored"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    # A worker process (started by the run itself).
    ap.add_argument("--worker", choices=("vllm", "peft"), help=argparse.SUPPRESS)
    ap.add_argument("--way", choices=("folder", "lorastore"), help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--reply-fd", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.quick:
        a.hidden, a.intermediate, a.layers, a.heads = 512, 1024, 2, 4
        a.vllm_adapters, a.peft_adapters, a.repeats = 4, 6, 1
    a.kv_heads = a.kv_heads or a.heads
    return a


def mib(x: float) -> str:
    return f"{x / MiB:.1f}"


def report(part: str, procs: int, n: int, rounds: dict, daemon_copy: dict,
           adapter_bytes: tuple) -> None:
    a_bytes, b_bytes = adapter_bytes
    print(f"\n  {part}: {procs} processes, {n} adapters each "
          f"(A {mib(n * a_bytes)} MiB + B {mib(n * b_bytes)} MiB of tensors); "
          f"medians over {len(rounds['folder'])} repeats; MiB")
    print(f"  {'way':<11}{'proc dRSS':>11}{'proc dPSS':>11}{'sum dRSS':>10}"
          f"{'sum dPSS':>10}{'  of it anon/file/shmem':<26}{'daemon dPSS':>12}"
          f"{'total':>9}")
    totals = {}
    for way in ("folder", "lorastore"):
        rs = rounds[way]
        proc_rss = [p["Rss"] for r in rs for p in r["procs"]]
        proc_pss = [p["Pss"] for r in rs for p in r["procs"]]
        sum_rss = [sum(p["Rss"] for p in r["procs"]) for r in rs]
        sum_pss = [sum(p["Pss"] for p in r["procs"]) for r in rs]
        split = {k: statistics.median([sum(p[k] for p in r["procs"]) for r in rs])
                 for k in ("Pss_Anon", "Pss_File", "Pss_Shmem")}
        d_pss = [r["daemon"]["Pss"] for r in rs]
        copy = daemon_copy["Pss"] if way == "lorastore" else 0
        total = [s + d + copy for s, d in zip(sum_pss, d_pss)]
        totals[way] = total
        split_s = "/".join(mib(split[k]) for k in ("Pss_Anon", "Pss_File", "Pss_Shmem"))
        print(f"  {way:<11}{mib(statistics.median(proc_rss)):>11}"
              f"{mib(statistics.median(proc_pss)):>11}{mib(statistics.median(sum_rss)):>10}"
              f"{mib(statistics.median(sum_pss)):>10}  {split_s:<24}"
              f"{mib(statistics.median(d_pss)):>12}{mib(statistics.median(total)):>9}")
    ratios = [ls / fo for ls, fo in zip(totals["lorastore"], totals["folder"])]
    print(f"  total = sum dPSS + daemon dPSS (+ the daemon's copy, {mib(daemon_copy['Pss'])} MiB, "
          f"for lorastore); lorastore/folder total: {statistics.median(ratios):.3f} "
          f"(per repeat: {', '.join(f'{r:.3f}' for r in ratios)})")
    for way in ("folder", "lorastore"):
        info = [i for r in rounds[way] for i in r["info"]]
        secs = statistics.median(i["secs"] for i in info)
        extra = ""
        if way == "lorastore" and part == "peft":
            extra = (f"; tensors shared {info[0]['shared']}, converted "
                     f"{info[0]['converted']} (one process)")
        print(f"    {way}: load + use {secs:.1f} s per process (median), adapters held "
              f"{sorted({i['held'] for i in info})}{extra}; RSS before "
              f"{mib(statistics.median(b for r in rounds[way] for b in r['before_rss']))}")


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.worker:
        return worker_main(a)
    exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="bench-engine-memory-"))
    daemon = None
    try:
        parts = ["vllm", "peft"] if a.part == "both" else [a.part]
        shape = llama_shape(a.hidden, a.intermediate, a.layers, a.heads, a.kv_heads)
        n = max(a.vllm_adapters if "vllm" in parts else 0,
                a.peft_adapters if "peft" in parts else 0)
        t0 = time.monotonic()
        base = write_base(work / "base", shape, "float32")
        dirs = [work / f"adapter{i:03d}" for i in range(n)]
        nbytes = [write_adapter(d, shape, a.rank, "float32", seed=2000 + i)
                  for i, d in enumerate(dirs)]
        a_bytes = sum(a.rank * fi * 4 for fi, _ in module_shapes(shape).values()) * a.layers
        b_bytes = sum(a.rank * fo * 4 for _, fo in module_shapes(shape).values()) * a.layers

        daemon = Daemon(work, Path(a.daemon), "4GiB")
        import lorastore

        # Each part uses the first adapters (vLLM's 16 are among PEFT's 50):
        # the daemon's copy of each part's set is measured as it is loaded.
        empty = smaps(daemon.pid)
        names = [f"bench/m{i:03d}" for i in range(n)]
        counts = {p: (a.vllm_adapters if p == "vllm" else a.peft_adapters) for p in parts}
        copies = {}
        with lorastore.connect(daemon.socket) as conn:
            for d, name in zip(dirs, names):
                conn.import_dir(d, name=name)
            for i, name in enumerate(names):
                conn.load(name)
                if i + 1 in counts.values():
                    copies[i + 1] = diff(smaps(daemon.pid), empty)
        resident = smaps(daemon.pid)
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps({
            "base": str(base), "dirs": [str(d) for d in dirs], "names": names,
            "socket": daemon.socket, "rank": a.rank, "vocab": shape["vocab_size"],
            "vllm_adapters": a.vllm_adapters, "peft_adapters": a.peft_adapters,
            "peft_threads": max(1, (os.cpu_count() or 1) // a.peft_procs)}))
        setup_s = time.monotonic() - t0

        results = {p: {"folder": [], "lorastore": []} for p in parts}
        for r in range(a.repeats):
            order = ("folder", "lorastore") if r % 2 == 0 else ("lorastore", "folder")
            for part in parts:
                procs = a.vllm_procs if part == "vllm" else a.peft_procs
                for way in order:
                    t = time.monotonic()
                    results[part][way].append(run_set(work, spec_path, part, way, procs, daemon))
                    print(f"engine_memory: repeat {r + 1}, {part}, {way}: "
                          f"{time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
        final = smaps(daemon.pid)

        print(f"engine_memory: {machine_line()}")
        print(f"  model: random Llama, hidden {a.hidden}, intermediate {a.intermediate}, "
              f"{a.layers} layers, {a.heads} heads / {a.kv_heads} KV heads of 128, vocab 256, "
              f"float32; adapters rank {a.rank} on q/k/v/o/gate/up/down, float32, "
              f"{statistics.mean(nbytes) / 1e6:.2f} MB each; setup {setup_s:.0f} s")
        print(f"  lorastored: RSS {mib(empty['Rss'])} MiB empty, {mib(resident['Rss'])} with "
              f"the {n} adapters resident (PSS {mib(empty['Pss'])} -> {mib(resident['Pss'])}), "
              f"RSS {mib(final['Rss'])} at the end")
        print("  d = after minus before, per process (with its descendants); sums over the "
              "processes of one set; PSS splits shared pages between the processes mapping them")
        for part in parts:
            procs = a.vllm_procs if part == "vllm" else a.peft_procs
            report(part, procs, counts[part], results[part], copies[counts[part]],
                   (a_bytes, b_bytes))
        return 0
    finally:
        for w in list(LIVE):
            w.stop()
        finish("engine_memory", daemon, work, a.keep)


if __name__ == "__main__":
    sys.exit(main())
