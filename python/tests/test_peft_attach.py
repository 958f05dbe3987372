"""lorastore.peft.attach against PEFT itself: a transformers model with an
adapter of the daemon attached gives the logits of PeftModel.from_pretrained
on the adapter's folder, its LoRA parameters are the daemon's memory, and
detach ends the lease.  Real transformers + PEFT, nothing mocked: tiny random
models made here, the adapters of tests/fixtures/peft on random bases of
their shapes."""
import copy
import gc
import json
import os
import shutil
import struct

import pytest

REASON = "the engines' environment (scripts/install-deps --engines) is not installed"
torch = pytest.importorskip("torch", reason=REASON)
transformers = pytest.importorskip("transformers", reason=REASON)
peft = pytest.importorskip("peft", reason=REASON)

import lorastore  # noqa: E402
import lorastore.peft as lpeft  # noqa: E402
from conftest import FIXTURES, Daemon  # noqa: E402
from engine_models import make_adapter, make_base  # noqa: E402

IDS = torch.tensor([[1, 5, 9, 20, 33, 70, 90, 3], [4, 4, 17, 2, 60, 11, 8, 40]])


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """The tiny Llama and four adapters of it, made once for the module."""
    root = tmp_path_factory.mktemp("llama")
    base = make_base(root / "base")
    adapters = {
        "f32": make_adapter(base, root / "f32", seed=1),
        "bf16": make_adapter(base, root / "bf16", seed=2, dtype="BF16"),
        "patterns": make_adapter(base, root / "patterns", seed=3,
                                 rank_pattern={"q_proj": 4, "layers.1.mlp.down_proj": 2},
                                 alpha_pattern={"v_proj": 3, "o_proj": 40}),
        "rslora": make_adapter(base, root / "rslora", seed=4, r=16, use_rslora=True),
    }
    return base, adapters


def load_llama(base):
    return transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()


def logits(model, ids=IDS, **kw):
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            return model(input_ids=ids, decoder_input_ids=ids[:, :5], **kw).logits
        return model(input_ids=ids, **kw).logits


def lora_params(model, adapter_name):
    """{(module, "A" or "B"): parameter} of one adapter's LoRA layers."""
    out = {}
    for n, p in model.named_parameters():
        for kind in ("A", "B"):
            mid = f".lora_{kind}.{adapter_name}."
            if mid in n:
                out[(n.split(mid)[0].removeprefix("base_model.model."), kind)] = p
    return out


# --- the tiny Llama -------------------------------------------------------

@pytest.mark.parametrize("kind", ["f32", "bf16", "patterns", "rslora"])
def test_attach_gives_the_logits_of_peft_from_pretrained(conn, llama, kind):
    base, adapters = llama
    conn.import_dir(adapters[kind], name=f"llama/{kind}")
    model = lpeft.attach(load_llama(base), conn.acquire(f"llama/{kind}"), kind)
    model.set_adapter(kind)
    want = logits(peft.PeftModel.from_pretrained(load_llama(base), adapters[kind]).eval())
    # Exactly: both sides run the same PEFT layers on the same values.  For the
    # BF16 adapter on this float32 model both convert the tensors to float32
    # (PEFT's autocast, attach's copy to the base layer's dtype): the same values.
    assert torch.equal(logits(model), want)
    with model.disable_adapter():
        assert not torch.allclose(logits(model), want, atol=1e-2), "the adapter changed nothing"


def test_attached_lora_parameters_are_the_daemons_tensors(conn, llama):
    base, adapters = llama
    conn.import_dir(adapters["f32"], name="llama/shared")
    ad = conn.acquire("llama/shared")
    model = lpeft.attach(load_llama(base), ad, "s")
    params = lora_params(model, "s")
    assert len(params) == len(ad.tensors()) == 28
    for (module, kind), p in params.items():
        x = torch.from_dlpack(ad.tensor(module, kind))
        assert p.data_ptr() == x.data_ptr(), f"{module} {kind} is a copy"
        del x
    att = lpeft.attached(model)["s"]
    assert len(att.shared) == 28 and att.converted == []


def test_a_bf16_adapter_on_a_float32_model_reports_its_copies_as_converted(conn, llama):
    base, adapters = llama
    conn.import_dir(adapters["bf16"], name="llama/conv")
    ad = conn.acquire("llama/conv")
    model = lpeft.attach(load_llama(base), ad, "c")
    att = lpeft.attached(model)["c"]
    assert att.shared == [] and len(att.converted) == 28
    params = dict(model.named_parameters())
    for n in att.converted:
        assert params[n].dtype == torch.float32
    for (module, kind), p in lora_params(model, "c").items():
        assert p.data_ptr() != ad.tensor(module, kind).data_ptr


def test_a_mixed_batch_equals_each_adapters_own_run(conn, llama):
    base, adapters = llama
    model = load_llama(base)
    for kind in ("f32", "patterns", "rslora"):
        conn.import_dir(adapters[kind], name=f"llama/mix-{kind}")
        model = lpeft.attach(model, conn.acquire(f"llama/mix-{kind}"), kind)
    model.eval()
    ids = torch.cat([IDS, IDS.flip(1)])
    names = ["f32", "rslora", "__base__", "patterns"]
    mixed = logits(model, ids, adapter_names=names)
    alone = {}
    for name in names:
        if name == "__base__":
            with model.disable_adapter():
                alone[name] = logits(model, ids)
        else:
            model.set_adapter(name)
            alone[name] = logits(model, ids)
    for row, name in enumerate(names):
        # The whole batch through this one adapter: PEFT computes each row's
        # LoRA on that row alone either way, so only the summation order of a
        # smaller matmul could differ (float32 rounding of 256-term sums).
        torch.testing.assert_close(mixed[row], alone[name][row], rtol=1e-5, atol=1e-6)
    for name in ("f32", "rslora", "patterns"):
        assert not torch.allclose(alone[name], alone["__base__"], atol=1e-2), name


def test_detach_ends_the_lease(conn, llama):
    base, adapters = llama
    conn.import_dir(adapters["f32"], name="llama/lease")
    model = lpeft.attach(load_llama(base), conn.acquire("llama/lease"), "lease")
    assert conn.show("llama/lease")["pins"] == 1 and conn.live_leases == 1
    lpeft.detach(model, "lease")
    gc.collect()
    assert conn.show("llama/lease")["pins"] == 0
    assert conn.live_leases == 0
    assert "lease" not in lpeft.attached(model)


def test_detach_leaves_the_base_model_as_it_was(conn, llama):
    base, adapters = llama
    conn.import_dir(adapters["f32"], name="llama/asitwas")
    model = lpeft.attach(load_llama(base), conn.acquire("llama/asitwas"), "gone")
    model.set_adapter("gone")
    lpeft.detach(model, "gone")
    # The transformers model inside: PEFT cannot run a PeftModel whose last
    # adapter is gone (its active adapter is still the deleted one), nor give
    # its get_base_model().
    assert torch.equal(logits(model.base_model.model), logits(load_llama(base)))


def test_detach_ends_the_lease_when_the_caller_released_the_adapter(conn, llama):
    base, adapters = llama
    conn.import_dir(adapters["f32"], name="llama/with")
    with conn.acquire("llama/with") as ad:
        model = lpeft.attach(load_llama(base), ad, "w")
    assert conn.show("llama/with")["pins"] == 1, "the attachment's views keep the lease"
    lpeft.detach(model, "w")
    gc.collect()
    assert conn.show("llama/with")["pins"] == 0 and conn.live_leases == 0


def test_attaching_a_name_twice_raises_invalid_argument(conn, llama):
    base, adapters = llama
    conn.import_dir(adapters["f32"], name="llama/twice")
    model = lpeft.attach(load_llama(base), conn.acquire("llama/twice"), "t")
    with conn.acquire("llama/twice") as again:
        with pytest.raises(lorastore.InvalidArgument, match="already"):
            lpeft.attach(model, again, "t")
    assert conn.show("llama/twice")["pins"] == 1   # the first attachment's
    assert list(lpeft.attached(model)) == ["t"]


def test_detach_of_a_name_not_attached_raises_invalid_argument(conn, llama):
    base, adapters = llama
    conn.import_dir(adapters["f32"], name="llama/unknown")
    model = lpeft.attach(load_llama(base), conn.acquire("llama/unknown"), "u")
    with pytest.raises(lorastore.InvalidArgument, match="no adapter 'v'"):
        lpeft.detach(model, "v")
    assert list(lpeft.attached(model)) == ["u"]


def test_an_adapter_named_like_a_module_claims_only_its_own_parameters(conn, llama):
    # "model" is a part of every parameter name of a Llama under PEFT
    # ("base_model.model.model.layers..."): a match on names took them all.
    base, adapters = llama
    conn.import_dir(adapters["f32"], name="llama/named")
    model = lpeft.attach(load_llama(base), conn.acquire("llama/named"), "model")
    att = lpeft.attached(model)["model"]
    assert len(att.shared) == 28 and att.converted == []


# --- read-only ------------------------------------------------------------

def test_attached_lora_parameters_do_not_require_grad(conn, llama):
    base, adapters = llama
    conn.import_dir(adapters["f32"], name="llama/nograd")
    model = lpeft.attach(load_llama(base), conn.acquire("llama/nograd"), "g")
    params = lora_params(model, "g")
    assert params and not any(p.requires_grad for p in params.values())


def test_a_gradient_into_an_attached_parameter_raises_and_leaves_the_daemons_bytes(conn, llama):
    base, adapters = llama
    conn.import_dir(adapters["f32"], name="llama/ro")
    module = "model.layers.0.self_attn.q_proj"
    with conn.acquire("llama/ro") as ad:
        before = {k: torch.from_dlpack(ad.tensor(module, k)).clone() for k in ("A", "B")}
    model = lpeft.attach(load_llama(base), conn.acquire("llama/ro"), "ro")
    model.set_adapter("ro")
    lora_params(model, "ro")[(module, "B")].requires_grad_(True)
    out = model(input_ids=IDS).logits.sum()
    with pytest.raises(lorastore.InvalidArgument, match="read-only"):
        out.backward()
    # The lease of the attachment may live on in the failed backward's
    # traceback until the process ends: its pins are not checked here.
    with conn.acquire("llama/ro") as fresh:
        for k in ("A", "B"):
            now = torch.from_dlpack(fresh.tensor(module, k))
            assert torch.equal(now, before[k])
            del now


# --- the adapters of tests/fixtures/peft on random bases of their shapes --

def header_shapes(folder):
    """{tensor name: shape} from the safetensors header of a PEFT folder."""
    with open(folder / "adapter_model.safetensors", "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return {k.removeprefix("base_model.model."): v["shape"] for k, v in header.items()}


def shape_of(shapes, suffix):
    return next(s for k, s in shapes.items() if k.endswith(suffix))


def layer_count(shapes, word):
    """1 + the largest index after `word.` in the tensor names."""
    return 1 + max(int(k.split(f"{word}.")[1].split(".")[0]) for k in shapes if f"{word}." in k)


def bert(s):
    hidden = shape_of(s, "query.lora_A.weight")[1]
    return transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=100, hidden_size=hidden, num_hidden_layers=layer_count(s, "layer"),
        num_attention_heads=4, intermediate_size=96, num_labels=s["classifier.weight"][0]))


def distilbert(s):
    return transformers.DistilBertForSequenceClassification(transformers.DistilBertConfig(
        vocab_size=100, dim=s["pre_classifier.weight"][0], n_layers=layer_count(s, "layer"),
        n_heads=4, hidden_dim=96, num_labels=s["classifier.weight"][0]))


def roberta(s):
    hidden = shape_of(s, "query.lora_A.weight")[1]
    return transformers.RobertaForSequenceClassification(transformers.RobertaConfig(
        vocab_size=100, hidden_size=hidden, num_hidden_layers=layer_count(s, "layer"),
        num_attention_heads=4, intermediate_size=96, max_position_embeddings=40,
        num_labels=s["classifier.out_proj.weight"][0]))


def gpt2(s):
    # c_attn is a Conv1D (weight [in, out]): PEFT's fan_in_fan_out.
    hidden = shape_of(s, "c_attn.lora_A.weight")[1]
    assert shape_of(s, "c_attn.lora_B.weight")[0] == 3 * hidden
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=100, n_embd=hidden, n_layer=layer_count(s, "h"), n_head=4, n_positions=64,
        bos_token_id=0, eos_token_id=0))


def neox(s):
    hidden = shape_of(s, "query_key_value.lora_A.weight")[1]
    assert shape_of(s, "query_key_value.lora_B.weight")[0] == 3 * hidden
    return transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
        vocab_size=100, hidden_size=hidden, num_hidden_layers=layer_count(s, "layers"),
        num_attention_heads=4, intermediate_size=96))


def llama_like(config_cls, model_cls, s, **extra):
    """Llama or Gemma: one KV head, so k_proj's output is the head size."""
    hidden = shape_of(s, "q_proj.lora_A.weight")[1]
    head = shape_of(s, "k_proj.lora_B.weight")[0]
    return model_cls(config_cls(
        vocab_size=100, hidden_size=hidden, num_hidden_layers=layer_count(s, "layers"),
        num_attention_heads=shape_of(s, "q_proj.lora_B.weight")[0] // head,
        num_key_value_heads=1, head_dim=head, **extra))


def smollm(s):
    inter = shape_of(s, "up_proj.lora_B.weight")[0]
    return llama_like(transformers.LlamaConfig, transformers.LlamaForCausalLM, s,
                      intermediate_size=inter)


def gemma(s):
    return llama_like(transformers.GemmaConfig, transformers.GemmaForCausalLM, s,
                      intermediate_size=96)


def llama_embeddings(s):
    vocab, hidden = s["model.embed_tokens.base_layer.weight"]
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=64,
        num_hidden_layers=layer_count(s, "layers"), num_attention_heads=2,
        num_key_value_heads=2, tie_word_embeddings=False))


def t5(s):
    d_model = shape_of(s, "SelfAttention.q.lora_A.weight")[1]
    inner = shape_of(s, "SelfAttention.q.lora_B.weight")[0]
    return transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=100, d_model=d_model, num_heads=4, d_kv=inner // 4, d_ff=96,
        num_layers=layer_count(s, "block"), decoder_start_token_id=0))


# fixture: (builder, the model's dtype: the adapter's, so that nothing is copied)
BASES = {
    "bert-seqcls": (bert, torch.float32),
    "distilbert-rslora": (distilbert, torch.float32),
    "gemma-dora-bf16": (gemma, torch.bfloat16),
    "gpt2-conv1d": (gpt2, torch.float32),
    "llama-embeddings": (llama_embeddings, torch.float32),
    "neox-r1": (neox, torch.float32),
    "nan-neox": (neox, torch.float32),
    "roberta-patterns": (roberta, torch.float32),
    "smollm-f16": (smollm, torch.float16),
    "t5-regex": (t5, torch.float32),
}


def test_every_fixture_has_a_base_here():
    assert sorted(BASES) == sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())


def random_base(fixture, dtype=None):
    builder, own_dtype = BASES[fixture]
    torch.manual_seed(0)
    return builder(header_shapes(FIXTURES / fixture)).to(dtype or own_dtype).eval()


def with_saved_base_weights(model, folder):
    """model with the base weights the adapter saved (PEFT saves the embedding
    layers it adapted, as <module>.base_layer.weight): the base it was made on."""
    from safetensors.torch import load_file

    saved = load_file(folder / "adapter_model.safetensors")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, t in saved.items():
            if ".base_layer." in key:
                params[key.removeprefix("base_model.model.").replace(".base_layer", "")].copy_(t)
    return model


def from_pretrained(base, folder):
    # autocast_adapter_dtype=False: PEFT keeps a float16/bfloat16 adapter in its
    # dtype as attach does, instead of computing its LoRA in float32.
    return peft.PeftModel.from_pretrained(base, folder, autocast_adapter_dtype=False).eval()


@pytest.mark.parametrize("fixture", [f for f in BASES if f != "nan-neox"])
def test_a_fixture_attached_gives_the_logits_of_peft_and_shares_every_tensor(conn, fixture):
    folder = FIXTURES / fixture
    base = with_saved_base_weights(random_base(fixture), folder)
    conn.import_dir(folder, name=f"fx/{fixture}")
    ad = conn.acquire(f"fx/{fixture}")
    model = lpeft.attach(copy.deepcopy(base), ad, "fx")
    model.set_adapter("fx")
    want = logits(from_pretrained(copy.deepcopy(base), folder))
    # Exactly: the same PEFT layers (DoRA's, Conv1D's, embeddings', the
    # modules_to_save copies) on the same values in the same dtype.
    assert torch.equal(logits(model), want)
    assert not torch.allclose(logits(base), want, atol=1e-3), "the adapter changed nothing"
    att = lpeft.attached(model)["fx"]
    # All but the saved base weights (equal to the model's, left out).
    carried = [t for t in ad.tensors() if ".base_layer." not in t.module]
    assert att.converted == [] and len(att.shared) == len(carried)


def test_a_nonfinite_fixture_gives_the_nans_of_peft(conn):
    folder = FIXTURES / "nan-neox"
    base = random_base("nan-neox")
    conn.import_dir(folder, name="fx/nan", allow_nonfinite=True)
    model = lpeft.attach(copy.deepcopy(base), conn.acquire("fx/nan"), "nan")
    model.set_adapter("nan")
    got, want = logits(model), logits(from_pretrained(copy.deepcopy(base), folder))
    assert got.isnan().any(), "the adapter's NaNs did not reach the logits"
    # NaN-aware equality: NaN where PEFT has NaN, the same values elsewhere.
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def test_saved_modules_take_the_dtype_of_the_model(conn):
    # bert-seqcls saves its classifier (modules_to_save) in float32: on a
    # bfloat16 model its copy must be bfloat16 too, as PEFT's load makes it.
    folder = FIXTURES / "bert-seqcls"
    base = random_base("bert-seqcls", torch.bfloat16)
    conn.import_dir(folder, name="fx/bert-bf16")
    model = lpeft.attach(copy.deepcopy(base), conn.acquire("fx/bert-bf16"), "b")
    model.set_adapter("b")
    assert torch.equal(logits(model), logits(from_pretrained(copy.deepcopy(base), folder)))
    att = lpeft.attached(model)["b"]
    assert sorted(n for n in att.converted if "modules_to_save" in n) == [
        "base_model.model.classifier.modules_to_save.b.bias",
        "base_model.model.classifier.modules_to_save.b.weight"]


def test_an_adapter_whose_saved_base_weights_differ_from_the_models_is_refused(conn):
    # llama-embeddings saves embed_tokens and lm_head in full; on a base with
    # other embeddings, loading them would change the model under every adapter.
    base = random_base("llama-embeddings")
    conn.import_dir(FIXTURES / "llama-embeddings", name="fx/emb")
    model = copy.deepcopy(base)
    with pytest.raises(lorastore.InvalidAdapter, match="replaces weights of the base model"):
        lpeft.attach(model, conn.acquire("fx/emb"), "e")
    gc.collect()
    assert conn.show("fx/emb")["pins"] == 0 and conn.live_leases == 0
    assert torch.equal(model.get_input_embeddings().weight, base.get_input_embeddings().weight)


def test_an_adapter_under_a_doubled_prefix_equals_its_weights_merged_by_hand(conn, tmp_path):
    # neox-r1 with every key under "base_model.model." twice.  PEFT's
    # from_pretrained matches none of them and loads nothing (a warning only):
    # its LoRA layers keep their initial values, so PEFT is no oracle here.
    # The daemon reads the keys without the doubled prefix; the reference is
    # the base with scale * B @ A added to each query_key_value by hand.
    from safetensors.torch import load_file, save_file

    src, folder = FIXTURES / "neox-r1", tmp_path / "doubled"
    folder.mkdir()
    shutil.copy(src / "adapter_config.json", folder)
    saved = load_file(src / "adapter_model.safetensors")
    save_file({"base_model.model." + k: v for k, v in saved.items()},
              folder / "adapter_model.safetensors", metadata={"format": "pt"})
    config = json.loads((src / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]

    base = random_base("neox-r1")
    merged = copy.deepcopy(base)
    with torch.no_grad():
        for i, layer in enumerate(merged.gpt_neox.layers):
            key = f"base_model.model.gpt_neox.layers.{i}.attention.query_key_value"
            delta = scale * saved[f"{key}.lora_B.weight"] @ saved[f"{key}.lora_A.weight"]
            layer.attention.query_key_value.weight += delta
    conn.import_dir(folder, name="fx/doubled")
    model = lpeft.attach(copy.deepcopy(base), conn.acquire("fx/doubled"), "d")
    model.set_adapter("d")
    want = logits(merged)
    # Merged weights round once more than x A^T B^T added to x W^T: float32
    # rounding of sums over 64 terms of logits near 1.
    torch.testing.assert_close(logits(model), want, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(logits(base), want, atol=1e-3)


# --- the device tier ------------------------------------------------------

@pytest.fixture
def gpu_daemon(tmp_path):
    if os.environ.get("LS_TEST_REAL_GPU") != "1" or not torch.cuda.is_available():
        pytest.skip("needs a GPU and LS_TEST_REAL_GPU=1")
    d = Daemon(tmp_path, "--backend", "cuda", "--device-budget", "64MiB")
    yield d
    assert d.stop() == 0, d.log_text()


def test_a_device_tier_adapter_on_a_cuda_model_shares_the_gpu_copy(gpu_daemon, llama):
    base, adapters = llama
    torch.zeros(1, device="cuda")      # a CUDA context for the device tier's GPU
    conn = lorastore.connect(gpu_daemon.socket)
    conn.import_dir(adapters["f32"], name="gpu/a")
    host = lpeft.attach(load_llama(base), conn.acquire("gpu/a"), "h")
    host.set_adapter("h")
    want = logits(host)
    ad = conn.acquire("gpu/a", tier="device")
    assert ad.tier == "device" and ad.device >= 0
    model = lpeft.attach(load_llama(base).to(f"cuda:{ad.device}"), ad, "d")
    model.set_adapter("d")
    params = lora_params(model, "d")
    assert len(params) == 28
    for (module, kind), p in params.items():
        assert p.is_cuda and p.data_ptr() == ad.tensor(module, kind).data_ptr
    att = lpeft.attached(model)["d"]
    assert len(att.shared) == 28 and att.converted == []
    # float32 on both (torch leaves TF32 off for matmuls by default); the
    # GPU sums in another order: rounding of 256-term sums of values near 1.
    torch.testing.assert_close(logits(model, IDS.to(f"cuda:{ad.device}")).cpu(), want,
                               rtol=1e-4, atol=1e-4)
    lpeft.detach(model, "d")
    lpeft.detach(host, "h")
    del params, p, model, host
    gc.collect()
    assert conn.live_leases == 0
    conn.close()


# --- export ---------------------------------------------------------------

def test_an_exported_adapter_loads_in_peft_with_the_logits_of_the_original(conn, llama, tmp_path):
    base, adapters = llama
    conn.import_dir(adapters["patterns"], name="llama/export")
    conn.export("llama/export", tmp_path / "exported")
    want = logits(peft.PeftModel.from_pretrained(load_llama(base), adapters["patterns"]))
    got = logits(peft.PeftModel.from_pretrained(load_llama(base), tmp_path / "exported"))
    assert torch.equal(got, want)
