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
