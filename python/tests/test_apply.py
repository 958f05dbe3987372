"""Plan.apply on numpy arrays against a float64 numpy reference of the same product."""
import json

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

import lorastore

HIDDEN, KV = 64, 32
SLICES = [("model.layers.1.self_attn.q_proj", 0, HIDDEN),
          ("model.layers.1.self_attn.k_proj", HIDDEN, KV),
          ("model.layers.1.self_attn.v_proj", HIDDEN + KV, KV)]
WIDTH = HIDDEN + 2 * KV


def write_adapter(path, seed, rank, dtype):
    """A PEFT folder: q/k/v of 2 layers, rank `rank`, alpha 2 * rank (scale 2)."""
    rng = np.random.default_rng(seed)
    path.mkdir()
    tensors = {}
    for layer in range(2):
        for proj, out in (("q_proj", HIDDEN), ("k_proj", KV), ("v_proj", KV)):
            base = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{base}.lora_A.weight"] = (rng.standard_normal((rank, HIDDEN)) * 0.3).astype(dtype)
            tensors[f"{base}.lora_B.weight"] = (rng.standard_normal((out, rank)) * 0.3).astype(dtype)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank,
        "target_modules": ["q_proj", "k_proj", "v_proj"]}))


@pytest.fixture
def pair(conn, tmp_path, request):
    dtype = getattr(request, "param", np.float32)
    ads = []
    for i, rank in enumerate((4, 8)):
        write_adapter(tmp_path / f"a{i}", 10 + i, rank, dtype)
        conn.import_dir(tmp_path / f"a{i}", name=f"apply/a{i}")
        ads.append(conn.acquire(f"apply/a{i}"))
    yield ads
    for a in ads:
        a.release()


def reference(ads, x, y0, tok):
    """float64: y0 + scale * (x A^T) B^T per token, and the terms' magnitudes."""
    y = y0.astype(np.float64)
    mag = np.zeros_like(y)
    for t, a in enumerate(tok):
        if a < 0:
            continue
        for module, off, out in SLICES:
            A = ads[a].tensor(module, "A").numpy().astype(np.float64)
            B = ads[a].tensor(module, "B").numpy().astype(np.float64)
            xt = x[t].astype(np.float64)
            y[t, off:off + out] += 2.0 * (B @ (A @ xt))
            mag[t, off:off + out] += 2.0 * (np.abs(B) @ (np.abs(A) @ np.abs(xt)))
    return y, mag


def check(got, y0, want, mag, tok, ulp):
    for t, a in enumerate(tok):
        if a < 0:
            assert got[t].tobytes() == y0[t].tobytes(), f"token {t} without adapter changed"
    tol = 1e-5 * mag + 1e-6 + ulp * np.abs(want)
    diff = np.abs(got.astype(np.float64) - want)
    assert np.all(diff <= tol), f"max |diff| {diff.max():.3g}, tolerance there {tol[diff.argmax() // WIDTH].max():.3g}"


def test_float32_tokens_equal_the_float64_reference(conn, pair):
    rng = np.random.default_rng(1)
    tok = np.array([0, 1, -1, 1, 0, 0, -1, 1], dtype=np.int32)
    x = rng.standard_normal((len(tok), HIDDEN)).astype(np.float32)
    y0 = rng.standard_normal((len(tok), WIDTH)).astype(np.float32)
    y = y0.copy()
    plan = conn.plan(pair, HIDDEN, SLICES)
    plan.apply(x, y, token_adapter=tok)
    want, mag = reference(pair, x, y0, tok)
    # F32 accumulation over in + r <= 72 terms: within 1e-5 of the magnitudes (10x margin).
    check(y, y0, want, mag, tok, ulp=0)


@pytest.mark.parametrize("pair", [ml_dtypes.bfloat16], indirect=True)
def test_bfloat16_segments_equal_the_float64_reference(conn, pair):
    rng = np.random.default_rng(2)
    segments = [(0, 5, 1), (5, 3, -1), (8, 6, 0)]
    tok = np.array([1] * 5 + [-1] * 3 + [0] * 6, dtype=np.int32)
    x = rng.standard_normal((len(tok), HIDDEN)).astype(ml_dtypes.bfloat16)
    y0 = rng.standard_normal((len(tok), WIDTH)).astype(ml_dtypes.bfloat16)
    y = y0.copy()
    conn.plan(pair, HIDDEN, SLICES).apply(x, y, segments=segments, threads=2)
    want, mag = reference(pair, x, y0, tok)
    # The sum is rounded once to bfloat16: one ulp (2^-7 of the value) besides F32's error.
    check(y, y0, want, mag, tok, ulp=2.0 ** -7)


def test_factors_scale_each_adapter(conn, pair):
    rng = np.random.default_rng(3)
    tok = np.array([0, 1], dtype=np.int32)
    x = rng.standard_normal((2, HIDDEN)).astype(np.float32)
    y1 = np.zeros((2, WIDTH), np.float32)
    y2 = np.zeros((2, WIDTH), np.float32)
    conn.plan(pair, HIDDEN, SLICES).apply(x, y1, token_adapter=tok)
    conn.plan(pair, HIDDEN, SLICES, factors=[0.5, 3.0]).apply(x, y2, token_adapter=tok)
    np.testing.assert_allclose(y2[0], 0.5 * y1[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(y2[1], 3.0 * y1[1], rtol=1e-6, atol=1e-7)


def test_bad_shapes_and_indices_raise_and_leave_y_unchanged(conn, pair):
    plan = conn.plan(pair, HIDDEN, SLICES)
    x = np.ones((3, HIDDEN), np.float32)
    y = np.full((3, WIDTH), 7.0, np.float32)
    before = y.copy()
    with pytest.raises(lorastore.InvalidArgument):
        plan.apply(np.ones((3, HIDDEN - 1), np.float32), y, token_adapter=[0, 1, 0])
    with pytest.raises(lorastore.InvalidArgument):
        plan.apply(x, y, token_adapter=[0, 2, 0])          # index out of range
    with pytest.raises(lorastore.InvalidArgument):
        plan.apply(x, np.ones((3, WIDTH - 1), np.float32), token_adapter=[0, 1, 0])
    with pytest.raises(lorastore.InvalidArgument):
        plan.apply(x, y.astype(np.float16), token_adapter=[0, 1, 0])  # dtypes differ
    with pytest.raises(lorastore.InvalidArgument):
        plan.apply(x, y, token_adapter=[0, 1])              # one index short
    with pytest.raises(ValueError):
        plan.apply(x, y[:, ::2], token_adapter=[0, 1, 0])   # not contiguous
    assert y.tobytes() == before.tobytes()


def test_a_read_only_y_is_refused(conn, pair):
    plan = conn.plan(pair, HIDDEN, SLICES)
    y = np.zeros((1, WIDTH), np.float32)
    y.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        plan.apply(np.ones((1, HIDDEN), np.float32), y, token_adapter=[0])


def test_a_plan_keeps_its_adapters_leases(conn, pair):
    plan = conn.plan(pair, HIDDEN, SLICES)
    for a in pair:
        a.release()
    assert conn.show("apply/a0")["pins"] == 1, "the plan does not hold the lease"
    y = np.zeros((1, WIDTH), np.float32)
    plan.apply(np.ones((1, HIDDEN), np.float32), y, token_adapter=[1])
    assert np.any(y != 0)
    del plan
    import gc
    gc.collect()
    assert conn.show("apply/a0")["pins"] == 0


def test_a_released_adapter_cannot_make_a_plan(conn, pair):
    pair[0].release()
    with pytest.raises(lorastore.InvalidArgument, match="released"):
        conn.plan(pair, HIDDEN, SLICES)


def test_the_device_module_takes_adapter_objects_through_the_c_api(conn, pair):
    """lorastore._cuda reads Adapter objects through _lorastore's capsule: anything
    else is refused by type, and host-tier adapters by tier, before any GPU work."""
    try:
        from lorastore import _cuda
    except ImportError as e:
        pytest.skip(f"lorastore._cuda is not built here: {e}")
    with pytest.raises(TypeError, match="expected a lorastore adapter"):
        _cuda.plan_create([object()], HIDDEN, SLICES, None)
    with pytest.raises(lorastore.InvalidArgument, match="another tier"):
        _cuda.plan_create([a._a for a in pair], HIDDEN, SLICES, None)
