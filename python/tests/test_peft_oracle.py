"""PEFT's own LoRA layers as the oracle of plan.apply (where torch, transformers and peft are).

A tiny Llama built from a config (nothing downloaded), wrapped by PEFT with
random LoRA weights on q/k/v (B not zero), saved with save_pretrained and
imported into lorastore.  For each layer, the base projections' outputs plus
plan.apply over the fused q/k/v output equal PEFT's LoRA layers' outputs.
"""
import pytest

np = pytest.importorskip("numpy", reason="numpy is not installed")
torch = pytest.importorskip("torch", reason="torch is not installed (the GPU machine has it)")
transformers = pytest.importorskip("transformers", reason="transformers is not installed")
peft = pytest.importorskip("peft", reason="peft is not installed")

HIDDEN, HEADS, KV_HEADS, LAYERS = 64, 4, 2, 2
KV = HIDDEN * KV_HEADS // HEADS


@pytest.fixture
def peft_model(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=HIDDEN, intermediate_size=128,
                                   num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                   num_key_value_heads=KV_HEADS, vocab_size=128)
    base = transformers.LlamaForCausalLM(cfg).float().eval()
    lora = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj"],
                           init_lora_weights=False)
    model = peft.get_peft_model(base, lora).eval()
    model.save_pretrained(tmp_path / "adapter")
    return model, tmp_path / "adapter"


def test_base_plus_plan_apply_equals_peft_on_every_layer(conn, peft_model):
    model, path = peft_model
    conn.import_dir(path, name="peft/tiny")
    x = torch.randn(5, HIDDEN)
    with conn.acquire("peft/tiny") as ad:
        compared = 0
        for layer in range(LAYERS):
            attn = model.base_model.model.model.layers[layer].self_attn
            mods = [(attn.q_proj, "q_proj", HIDDEN), (attn.k_proj, "k_proj", KV),
                    (attn.v_proj, "v_proj", KV)]
            slices, off = [], 0
            for _, name, out in mods:
                slices.append((f"model.layers.{layer}.self_attn.{name}", off, out))
                off += out
            with torch.no_grad():
                want = torch.cat([m(x) for m, _, _ in mods], dim=1).numpy()
                y = np.ascontiguousarray(
                    torch.cat([m.base_layer(x) for m, _, _ in mods], dim=1).numpy())
            plan = conn.plan([ad], HIDDEN, slices)
            plan.apply(np.ascontiguousarray(x.numpy()), y, token_adapter=[0] * len(x))
            # Both sum in F32 over at most 64 + 8 terms of magnitude ~1.
            np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)
            compared += y.size
            del plan
        assert compared > 0


def test_on_the_gpu_the_device_plan_equals_peft_on_every_layer(tmp_path, peft_model):
    """The same on the device tier: PEFT's layers on the GPU against a DevicePlan."""
    import os

    import lorastore
    from conftest import Daemon

    if os.environ.get("LS_TEST_REAL_GPU") != "1" or not torch.cuda.is_available():
        pytest.skip("needs a GPU and LS_TEST_REAL_GPU=1")
    model, path = peft_model
    model = model.cuda()
    (tmp_path / "gpu").mkdir()
    d = Daemon(tmp_path / "gpu", "--backend", "cuda", "--device-budget", "256MiB")
    try:
        with lorastore.connect(d.socket) as conn:
            conn.import_dir(path, name="peft/gpu")
            x = torch.randn(7, HIDDEN, device="cuda")
            stream = torch.cuda.current_stream()
            with conn.acquire("peft/gpu", tier="device") as ad:
                for layer in range(LAYERS):
                    attn = model.base_model.model.model.layers[layer].self_attn
                    mods = [(attn.q_proj, "q_proj", HIDDEN), (attn.k_proj, "k_proj", KV),
                            (attn.v_proj, "v_proj", KV)]
                    slices, off = [], 0
                    for _, name, out in mods:
                        slices.append((f"model.layers.{layer}.self_attn.{name}", off, out))
                        off += out
                    with torch.no_grad():
                        want = torch.cat([m(x) for m, _, _ in mods], dim=1)
                        y = torch.cat([m.base_layer(x) for m, _, _ in mods], dim=1).contiguous()
                    plan = conn.plan([ad], HIDDEN, slices)
                    plan.apply(x, y, token_adapter=[0] * len(x), stream=stream)
                    stream.synchronize()
                    torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-5)
                    del plan
    finally:
        assert d.stop() == 0, d.log_text()
