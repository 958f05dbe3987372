#!/usr/bin/env python3
"""Adapter load inside vLLM: lorastore against vLLM reading the adapter's folder.

What is measured, in ONE vLLM instance (CPU build, offline LLM, engine core
and worker in this process: VLLM_ENABLE_V1_MULTIPROCESSING=0, executor "uni"):

- **worker load**: the time of vLLM's WorkerLoRAManager._load_adapter, the
  step that turns a LoRARequest into vLLM's LoRAModel.  For a folder it reads
  adapter_config.json and opens adapter_model.safetensors; for lorastore://NAME
  the plugin (lorastore.vllm) acquires the adapter from lorastored and builds
  the LoRAModel from the daemon's tensors (B copied, A shared).  Timed by a
  wrapper put around the plugin's wrapper in this process.
- **worker add**: the worker's whole add_adapter (the load, then packing
  q/k/v and gate/up, scaling B in place, copying the adapter into a LoRA
  slot).  This is the figure to compare: safetensors (0.8) gives tensors
  backed by a copy-on-write mapping of the file, so the folder's load reads
  almost nothing and its bytes are read at first touch, after the load: B
  when vLLM scales it, A when the adapter is copied into a slot.
- **TTFT**: wall time of llm.generate(one prompt, max_tokens=1) for the first
  request that names a cold adapter (never loaded in this vLLM), which
  includes the worker's load and add and one forward pass.

The peer is vLLM's own load from the adapter's folder; the floor is the same
request naming an adapter already in vLLM's CPU cache ("warm": no load, only
the copy into a LoRA slot and the forward pass).  Each round measures warm,
folder and lorastore once, in an order that rotates from round to round; every
cold request names an adapter of its own with a fresh lora_int_id, so nothing
is cached in vLLM.  Before the rounds, the page cache holds every adapter
file (written just before; the folder reads are warm-cache reads) and the
daemon holds every adapter resident (acquired warm).  --cold-disk adds two
variants to each round: the folder's files dropped from the page cache
(posix_fadvise DONTNEED) before the request, and the adapter evicted from the
daemon with its blob dropped from the page cache (the daemon reads it again).
One warm-up round per way (not reported) pays the one-time costs: imports,
the plugin's connection to the daemon.

Model (default): a random Llama shaped like Llama-2-7B in width (hidden 4096,
intermediate 11008, 32 heads of 128, no GQA) with 2 layers and a 256-token
vocabulary, saved in bfloat16; adapters of rank 64 on q/k/v/o/gate/up/down,
bfloat16, 20.0 MB each (vLLM's LoRA dtype is the model's, so A is shared).

Run from the repository (the daemon in build/, the engine environment of
scripts/install-deps):

    ~/.cache/lorastore/engines/bin/python bench/engine_load.py
    ~/.cache/lorastore/engines/bin/python bench/engine_load.py --quick   # a smoke run
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROMPT = "the quick brown fox jumps over a lazy dog"


# ------------------------------------------------------------ models, adapters

def llama_shape(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
                head_dim: int = 128) -> dict:
    """A transformers LlamaConfig's fields (vocabulary: engine_models' 256)."""
    return dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                vocab_size=256, max_position_embeddings=256, tie_word_embeddings=False)


def module_shapes(shape: dict) -> dict:
    """{module name (last part): (in_features, out_features)} of a Llama layer."""
    h, i = shape["hidden_size"], shape["intermediate_size"]
    q = shape["num_attention_heads"] * shape["head_dim"]
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def write_base(path: Path, shape: dict, dtype: str, seed: int = 0) -> Path:
    """A random Llama with a small trained tokenizer (python/tests/engine_models.py)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(REPO / "python" / "tests"))
    import engine_models

    torch.manual_seed(seed)
    cfg = LlamaConfig(bos_token_id=1, eos_token_id=2, **shape)
    model = LlamaForCausalLM(cfg).to(getattr(torch, dtype))
    model.save_pretrained(path)
    engine_models.make_tokenizer(path)
    del model
    return path


def write_adapter(path: Path, shape: dict, rank: int, dtype: str, seed: int) -> int:
    """A PEFT LoRA folder for a base of this shape, with random A and B (so
    that B is not zero, as in a trained adapter); returns the bytes of its
    safetensors file."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(shape["num_hidden_layers"]):
        for mod, (fan_in, fan_out) in module_shapes(shape).items():
            part = "self_attn" if mod in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            key = f"base_model.model.model.layers.{layer}.{part}.{mod}"
            a = torch.randn(rank, fan_in, generator=g) * fan_in ** -0.5
            b = torch.randn(fan_out, rank, generator=g) * 0.02
            tensors[f"{key}.lora_A.weight"] = a.to(getattr(torch, dtype)).contiguous()
            tensors[f"{key}.lora_B.weight"] = b.to(getattr(torch, dtype)).contiguous()
    path.mkdir(parents=True)
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank,
        "target_modules": list(TARGETS), "lora_dropout": 0.0, "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
        "inference_mode": True, "base_model_name_or_path": None}, indent=1))
    return (path / "adapter_model.safetensors").stat().st_size


def drop_from_page_cache(paths) -> None:
    """Drop the files' pages from the page cache (flushed first: DONTNEED
    leaves dirty pages in place)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# ------------------------------------------------------------------ the daemon

class Daemon:
    """lorastored on a socket and state directory of its own under root."""

    def __init__(self, root: Path, binary: Path, budget: str):
        if not binary.exists():
            raise SystemExit(f"{binary} is not built (cmake --build build), or pass --daemon")
        self.socket = str(root / "lorastored.sock")
        self.state = root / "state"
        self.log_path = root / "lorastored.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [str(binary), "--socket", self.socket, "--state-dir", str(self.state),
                 "--backend", "host", "--host-budget", budget, "--log-level", "warning"],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"lorastored exited with {self.proc.returncode}:\n"
                                 + self.log_path.read_text(errors="replace"))
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(self.socket)
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise SystemExit("lorastored did not serve within 20 s")
                time.sleep(0.02)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> int:
        return stop_process(self.proc)


def stop_process(proc: subprocess.Popen) -> int:
    """SIGTERM, 20 s, then SIGKILL; the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so that finally blocks stop the daemon."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, handler)


def machine_line() -> str:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return (f"{datetime.date.today().isoformat()}, {os.cpu_count()} CPUs ({model}), "
            f"kernel {platform.release()}, Python {platform.python_version()}")


def med(xs) -> float:
    return statistics.median(xs) if xs else float("nan")


# ------------------------------------------------------------------- the run

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--intermediate", type=int, default=11008)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=32, help="attention heads of 128")
    ap.add_argument("--kv-heads", type=int, default=None, help="default: --heads (no GQA)")
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16",
                    help="of the model, the adapters and vLLM")
    ap.add_argument("--rounds", type=int, default=15, help="timed rounds")
    ap.add_argument("--cold-disk", action="store_true",
                    help="also folder and lorastore with the files out of the page cache")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 512 wide, rank 16, 3 rounds, with --cold-disk")
    ap.add_argument("--daemon", default=str(REPO / "build" / "daemon" / "lorastored"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--verbose", action="store_true", help="vLLM's INFO log")
    a = ap.parse_args(argv)
    if a.quick:
        a.hidden, a.intermediate, a.heads, a.rank, a.rounds = 512, 1024, 4, 16, 3
        a.cold_disk = True
    a.kv_heads = a.kv_heads or a.heads
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="bench-engine-load-"))
    daemon = None
    try:
        shape = llama_shape(a.hidden, a.intermediate, a.layers, a.heads, a.kv_heads)
        ways = ["warm", "folder", "lorastore"] + (["folder cold", "lorastore cold"]
                                                  if a.cold_disk else [])
        cold_ways = [w for w in ways if w != "warm"]
        # One adapter per cold request, plus a warm-up per way and the warm one.
        n_adapters = len(cold_ways) * (a.rounds + 1) + 1

        t0 = time.monotonic()
        base = write_base(work / "base", shape, a.dtype)
        dirs = [work / f"adapter{i:03d}" for i in range(n_adapters)]
        nbytes = [write_adapter(d, shape, a.rank, a.dtype, seed=1000 + i)
                  for i, d in enumerate(dirs)]
        daemon = Daemon(work, Path(a.daemon), "4GiB")
        os.environ["LORASTORE_VLLM"] = "1"
        os.environ["LORASTORE_SOCKET"] = daemon.socket
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if not a.verbose:
            os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        import lorastore

        conn = lorastore.connect(daemon.socket)
        names = [f"bench/a{i:03d}" for i in range(n_adapters)]
        for d, n in zip(dirs, names):
            conn.import_dir(d, name=n)
            conn.load(n)
        blobs = sorted((daemon.state / "blobs").glob("*.blob"))
        setup_s = time.monotonic() - t0

        import torch
        import vllm
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest

        t0 = time.monotonic()
        llm = LLM(model=str(base), enable_lora=True, max_lora_rank=a.rank, max_loras=2,
                  max_cpu_loras=n_adapters + 2, dtype=a.dtype, max_model_len=128,
                  enforce_eager=True, seed=0, max_num_batched_tokens=256, max_num_seqs=8,
                  kv_cache_memory_bytes=64 << 20, distributed_executor_backend="uni",
                  enable_prefix_caching=False)
        startup_s = time.monotonic() - t0

        # The worker runs in this process: wrap its load (around the plugin's
        # wrapper, which register() put in place while LLM() started) and its add.
        from vllm.lora.worker_manager import LRUCacheWorkerLoRAManager, WorkerLoRAManager

        if not getattr(WorkerLoRAManager._load_adapter, "_lorastore", False):
            raise SystemExit("engine_load: the lorastore vLLM plugin is not active "
                             "(is the lorastore package installed in this environment?)")
        load_s, add_s = {}, {}
        inner_load = WorkerLoRAManager._load_adapter
        inner_add = LRUCacheWorkerLoRAManager.add_adapter

        def timed_load(self, req):
            t = time.perf_counter()
            out = inner_load(self, req)
            load_s[req.lora_int_id] = time.perf_counter() - t
            return out

        def timed_add(self, req):
            t = time.perf_counter()
            out = inner_add(self, req)
            add_s[req.lora_int_id] = time.perf_counter() - t
            return out

        WorkerLoRAManager._load_adapter = timed_load
        LRUCacheWorkerLoRAManager.add_adapter = timed_add

        params = SamplingParams(temperature=0, max_tokens=1)
        # generate() once without a LoRA: the first forward pass pays for
        # allocations and kernel selection.
        llm.generate([PROMPT], params, use_tqdm=False)

        next_adapter = iter(range(n_adapters))

        def request(way: str):
            i = next(next_adapter)
            if way.startswith("lorastore"):
                req = LoRARequest(f"ls{i}", i + 1, f"lorastore://{names[i]}")
            else:
                req = LoRARequest(f"dir{i}", i + 1, str(dirs[i]))
            if way == "folder cold":
                drop_from_page_cache(dirs[i].iterdir())
            elif way == "lorastore cold":
                conn.evict(names[i])
                drop_from_page_cache(blobs)
            return req

        def timed_generate(req):
            t = time.perf_counter()
            out = llm.generate([PROMPT], params, lora_request=req, use_tqdm=False)
            wall = time.perf_counter() - t
            if len(out) != 1 or len(out[0].outputs[0].token_ids) != 1:
                raise SystemExit(f"engine_load: {req.lora_path} did not give one token")
            return wall

        warm_req = request("folder")
        timed_generate(warm_req)
        if warm_req.lora_int_id not in load_s:
            raise SystemExit("engine_load: the worker's load was not seen in this process "
                             "(VLLM_ENABLE_V1_MULTIPROCESSING=0 did not take effect)")
        for way in cold_ways:  # warm-up, not reported
            timed_generate(request(way))

        res = {w: {"load": [], "add": [], "ttft": []} for w in ways}
        for r in range(a.rounds):
            k = r % len(ways)
            for way in ways[k:] + ways[:k]:
                req = warm_req if way == "warm" else request(way)
                wall = timed_generate(req)
                res[way]["ttft"].append(wall)
                if way != "warm":
                    if req.lora_int_id not in load_s:
                        raise SystemExit(f"engine_load: no worker load seen for {req.lora_path}")
                    res[way]["load"].append(load_s[req.lora_int_id])
                    res[way]["add"].append(add_s[req.lora_int_id])
        st = conn.stats()
        conn.close()

        mb = statistics.mean(nbytes) / 1e6
        print(f"engine_load: {machine_line()}")
        print(f"  vLLM {vllm.__version__}, torch {torch.__version__} ({torch.get_num_threads()} "
              f"threads); model: random Llama, hidden {a.hidden}, intermediate "
              f"{a.intermediate}, {a.layers} layers, {a.heads} heads / {a.kv_heads} KV heads "
              f"of 128, vocab 256, {a.dtype}")
        print(f"  adapters: rank {a.rank} on {'/'.join(m[:-5] for m in TARGETS)}, {a.dtype}, "
              f"{mb:.2f} MB each ({n_adapters} distinct); {a.rounds} rounds, order rotating; "
              f"setup {setup_s:.0f} s, vLLM start {startup_s:.0f} s")
        print("  page cache warm for 'folder' and 'lorastore' (daemon: adapters resident); "
              "'cold': dropped (fadvise) / evicted before each request")
        host = next(t for t in st["tiers"] if t["name"] == "host")
        print(f"  daemon: {st['loads']} loads, {st['hits']} hits, {st['evictions']} "
              f"evictions; {host['adapters']} adapters resident at the end")
        print()
        print(f"  {'way':<16}{'load ms':>10}{'add ms':>10}{'TTFT ms':>10}")
        for w in ways:
            cell = (lambda k: f"{med(res[w][k]) * 1e3:>10.2f}" if res[w][k] else f"{'-':>10}")
            print(f"  {w:<16}{cell('load')}{cell('add')}{cell('ttft')}")
        print()
        print("  load: WorkerLoRAManager._load_adapter; add: the worker's add_adapter (load, "
              "pack, scale B, copy into a slot;\n  a folder's tensors are mapped from the file "
              "and read at first touch, in add after the load)")
        print("  medians of the rounds; ratios are medians of per-round ratios "
              "(both values from the same round)")
        pairs = [("lorastore", "folder")]
        if a.cold_disk:
            pairs.append(("lorastore cold", "folder cold"))
        for x, y in pairs:
            for k in ("load", "add", "ttft"):
                ratios = [p / q for p, q in zip(res[x][k], res[y][k])]
                print(f"  {x}/{y} {k}: {med(ratios):.3f}", end=";")
            print()
        print("  TTFT per round, ms (in the order of the rounds):")
        for w in ways:
            print(f"    {w:<16}" + " ".join(f"{x * 1e3:.1f}" for x in res[w]["ttft"]))
        ttft_over = [p - q for p, q in zip(res["lorastore"]["ttft"], res["warm"]["ttft"])]
        dir_over = [p - q for p, q in zip(res["folder"]["ttft"], res["warm"]["ttft"])]
        print(f"  TTFT above warm (the cost of a cold adapter), median ms: folder "
              f"{med(dir_over) * 1e3:.2f}, lorastore {med(ttft_over) * 1e3:.2f}")
        del llm
        return 0
    finally:
        finish("engine_load", daemon, work, a.keep)


def finish(tag: str, daemon, work, keep: bool) -> None:
    """Stop the daemon and remove the work folder (unless keep); a daemon that
    does not exit 0 fails the run, with its log's end."""
    failed = False
    if daemon is not None and daemon.stop() != 0:
        failed = True
        print(f"{tag}: lorastored exited with {daemon.proc.returncode}; its log ends:\n"
              + daemon.log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
    if keep:
        print(f"{tag}: kept {work}", file=sys.stderr)
    else:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    if failed and sys.exc_info()[0] is None:
        raise SystemExit(1)


if __name__ == "__main__":
    sys.exit(main())
