"""The device tier from Python: on the CUDA driver double here, on a GPU with torch."""
import os

import pytest

import lorastore
from conftest import FIXTURES, Daemon, double_driver


@pytest.fixture
def device_daemon(tmp_path, monkeypatch):
    if os.environ.get("LS_TEST_REAL_GPU") != "1":
        if not double_driver().exists():
            pytest.skip("this build has no CUDA path (no driver double to stand in for a GPU)")
        monkeypatch.setenv("LORASTORE_CUDA_DRIVER", str(double_driver()))
    d = Daemon(tmp_path, "--backend", "cuda", "--device-budget", "64MiB")
    yield d
    assert d.stop() == 0, d.log_text()


def test_a_device_tensor_exports_its_gpu_through_dlpack(device_daemon):
    with lorastore.connect(device_daemon.socket) as conn:
        conn.import_dir(FIXTURES / "smollm-f16", name="dev/a")
        with conn.acquire("dev/a", tier="device") as ad:
            assert ad.tier == "device" and ad.device >= 0 and ad.device_uuid.startswith("GPU-")
            info = ad.tensors()[0]
            t = ad.tensor(info.module, info.kind)
            assert t.__dlpack_device__() == (2, ad.device)      # kDLCUDA, the ordinal
            with pytest.raises(lorastore.InvalidArgument, match="GPU memory"):
                t.numpy()
            host = conn.acquire("dev/a")
            assert t.data_ptr != host.tensor(info.module, info.kind).data_ptr
            host.release()
            del t


def test_torch_shares_the_memory_of_a_host_tensor(conn):
    torch = pytest.importorskip("torch", reason="torch is not installed (the GPU machine has it)")
    conn.import_dir(FIXTURES / "smollm-f16", name="torch/a")
    with conn.acquire("torch/a") as ad:
        info = ad.tensors()[0]
        t = ad.tensor(info.module, info.kind)
        x = torch.from_dlpack(t)
        assert x.data_ptr() == t.data_ptr, "torch copied the tensor"
        assert tuple(x.shape) == t.shape
        del x


def test_torch_on_the_gpu_shares_the_daemons_device_copy(device_daemon):
    torch = pytest.importorskip("torch", reason="torch is not installed (the GPU machine has it)")
    if os.environ.get("LS_TEST_REAL_GPU") != "1" or not torch.cuda.is_available():
        pytest.skip("needs a GPU and LS_TEST_REAL_GPU=1")
    with lorastore.connect(device_daemon.socket) as conn:
        conn.import_dir(FIXTURES / "smollm-f16", name="torch/dev")
        with conn.acquire("torch/dev", tier="device") as ad, conn.acquire("torch/dev") as host:
            for info in ad.tensors():
                t = ad.tensor(info.module, info.kind)
                x = torch.from_dlpack(t)
                assert x.is_cuda and x.data_ptr() == t.data_ptr
                want = torch.from_dlpack(host.tensor(info.module, info.kind))
                assert torch.equal(x.cpu(), want)
                del x, want


def test_a_device_plan_without_a_usable_gpu_raises_device_error(device_daemon):
    if os.environ.get("LS_TEST_REAL_GPU") == "1":
        pytest.skip("a GPU is in use: the refusal it tests cannot happen")
    with lorastore.connect(device_daemon.socket) as conn:
        conn.import_dir(FIXTURES / "smollm-f16", name="dev/plan")
        with conn.acquire("dev/plan", tier="device") as ad, conn.acquire("dev/plan") as host:
            module = next(t.module for t in ad.tensors() if t.kind == "A")
            shape = ad.tensor(module, "A").shape
            out = ad.tensor(module, "B").shape[0]
            with pytest.raises(lorastore.DeviceError):
                conn.plan([ad], shape[1], [(module, 0, out)])
            with pytest.raises(lorastore.InvalidArgument):  # one plan, one tier
                conn.plan([ad, host], shape[1], [(module, 0, out)])


def test_device_apply_on_torch_cuda_tensors_equals_the_cpu_plan(device_daemon):
    torch = pytest.importorskip("torch", reason="torch is not installed (the GPU machine has it)")
    if os.environ.get("LS_TEST_REAL_GPU") != "1" or not torch.cuda.is_available():
        pytest.skip("needs a GPU and LS_TEST_REAL_GPU=1")
    import numpy as np

    with lorastore.connect(device_daemon.socket) as conn:
        conn.import_dir(FIXTURES / "smollm-f16", name="dev/apply")
        with conn.acquire("dev/apply", tier="device") as ad, conn.acquire("dev/apply") as host:
            module = next(t.module for t in ad.tensors() if t.kind == "A")
            in_f = ad.tensor(module, "A").shape[1]
            out = ad.tensor(module, "B").shape[0]
            slices = [(module, 0, out)]
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(9, in_f, generator=gen)
            y = torch.randn(9, out, generator=gen)
            tok = [0, -1, 0, 0, -1, 0, 0, 0, -1]
            want = y.numpy().copy()
            conn.plan([host], in_f, slices).apply(x.numpy(), want, token_adapter=tok)
            stream = torch.cuda.Stream()
            xd, yd = x.cuda(), y.cuda()
            torch.cuda.synchronize()
            plan = conn.plan([ad], in_f, slices)
            plan.apply(xd, yd, token_adapter=tok, stream=stream)
            stream.synchronize()
            np.testing.assert_allclose(yd.cpu().numpy(), want, rtol=1e-5, atol=1e-6)
            assert plan.bad_indices(stream) == 0
            del plan, xd, yd
