"""Tensors read in place through DLPack: the bytes, read-only views, lifetimes."""
import gc
import json
import signal
import time

import ml_dtypes  # noqa: F401  (numpy learns "bfloat16" for the safetensors library)
import numpy as np
import pytest
import safetensors.numpy

import lorastore
from conftest import FIXTURES, child_python

EXPECTED = json.loads((FIXTURES / "expected.json").read_text())["fixtures"]


@pytest.mark.parametrize("fixture", sorted(EXPECTED))
def test_every_fixture_tensor_equals_the_safetensors_librarys_reading(conn, fixture):
    conn.import_dir(FIXTURES / fixture, name=f"fx/{fixture}", allow_nonfinite=True)
    source = safetensors.numpy.load_file(FIXTURES / fixture / "adapter_model.safetensors")
    compared = 0
    with conn.acquire(f"fx/{fixture}") as ad:
        for t in EXPECTED[fixture]["tensors"]:
            kind = {"A": "A", "B": "B", "magnitude": "magnitude"}.get(t["kind"], "extra")
            got = ad.tensor(t["module"], kind).numpy()
            want = source[t["name"]]
            assert got.dtype == want.dtype, t["name"]
            assert got.shape == want.shape, t["name"]
            # Bit for bit (NaN included): the bytes are the file's.
            assert got.tobytes() == want.tobytes(), t["name"]
            compared += 1
    assert compared == len(EXPECTED[fixture]["tensors"]) > 0


def test_numpy_views_are_read_only_and_a_write_raises(conn):
    conn.import_dir(FIXTURES / "smollm-f16", name="fx/ro")
    with conn.acquire("fx/ro") as ad:
        info = ad.tensors()[0]
        view = np.from_dlpack(ad.tensor(info.module, info.kind))
        assert view.flags.writeable is False
        with pytest.raises(ValueError):
            view[0, 0] = 1
        del view


def test_tensors_list_the_table(conn):
    conn.import_dir(FIXTURES / "bert-seqcls", name="fx/table")
    with conn.acquire("fx/table") as ad:
        rows = ad.tensors()
        assert len(rows) == EXPECTED["bert-seqcls"]["n_tensors"]
        kinds = {r.kind for r in rows}
        assert {"A", "B", "extra"} <= kinds
        a = next(r for r in rows if r.kind == "A")
        assert a.rank == 8 and a.scale == 2.0 and a.dtype == "F32" and len(a.shape) == 2
        assert ad.rank == 8 and ad.version == 1 and ad.tier == "host" and len(ad.digest) == 64


def test_a_view_outliving_release_reads_right_and_holds_the_lease_until_freed(conn):
    conn.import_dir(FIXTURES / "smollm-f16", name="fx/life")
    ad = conn.acquire("fx/life")
    info = ad.tensors()[0]
    want = ad.tensor(info.module, info.kind).numpy().copy()
    view = np.from_dlpack(ad.tensor(info.module, info.kind))
    ad.release()
    del ad
    gc.collect()
    assert conn.show("fx/life")["pins"] == 1, "the view's lease ended early"
    assert np.array_equal(view, want)
    del view
    gc.collect()
    assert conn.show("fx/life")["pins"] == 0, "the lease outlived its last view"
    assert conn.live_leases == 0


def test_close_with_a_live_view_raises_and_the_view_stays_readable(conn):
    conn.import_dir(FIXTURES / "smollm-f16", name="fx/close")
    ad = conn.acquire("fx/close")
    info = ad.tensors()[0]
    want = ad.tensor(info.module, info.kind).numpy().copy()
    view = np.from_dlpack(ad.tensor(info.module, info.kind))
    ad.release()
    with pytest.raises(lorastore.Error, match="1 adapter lease"):
        conn.close()
    assert not conn.closed
    assert np.array_equal(view, want)
    del view
    gc.collect()
    conn.close()
    assert conn.closed


def test_a_killed_python_client_leaves_no_lease(daemon, conn):
    conn.import_dir(FIXTURES / "smollm-f16", name="fx/kill")
    child = child_python(
        "import sys, numpy as np, lorastore\n"
        f"c = lorastore.connect({daemon.socket!r})\n"
        "ad = c.acquire('fx/kill')\n"
        "i = ad.tensors()[0]\n"
        "v = np.from_dlpack(ad.tensor(i.module, i.kind))\n"
        "print('held', flush=True)\n"
        "sys.stdin = None\n"
        "import time; time.sleep(60)\n")
    assert child.stdout.readline().strip() == "held", child.stderr.read()
    assert conn.show("fx/kill")["pins"] == 1
    child.send_signal(signal.SIGKILL)
    child.wait()
    deadline = time.monotonic() + 10
    while conn.show("fx/kill")["pins"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert conn.show("fx/kill")["pins"] == 0
    assert conn.stats()["leases"] == 0


def test_bf16_tensors_reach_numpy_as_ml_dtypes_bfloat16(conn):
    conn.import_dir(FIXTURES / "gemma-dora-bf16", name="fx/bf16")
    with conn.acquire("fx/bf16") as ad:
        a = next(r for r in ad.tensors() if r.kind == "A")
        arr = ad.tensor(a.module, "A").numpy()
        assert arr.dtype == ml_dtypes.bfloat16
        assert arr.flags.writeable is False
        del arr


def test_state_dict_uses_peft_names(conn):
    conn.import_dir(FIXTURES / "smollm-f16", name="fx/sd")
    with conn.acquire("fx/sd") as ad:
        sd = ad.state_dict()
        names = {t["name"] for t in EXPECTED["smollm-f16"]["tensors"]}
        assert set(sd) == names
        src = safetensors.numpy.load_file(FIXTURES / "smollm-f16" / "adapter_model.safetensors")
        for name, t in sd.items():
            assert np.from_dlpack(t).tobytes() == src[name].tobytes()
        del sd


def test_copy_true_is_refused_rather_than_copied(conn):
    conn.import_dir(FIXTURES / "smollm-f16", name="fx/copy")
    with conn.acquire("fx/copy") as ad:
        i = ad.tensors()[0]
        with pytest.raises(BufferError):
            ad.tensor(i.module, i.kind).__dlpack__(copy=True)


def test_threads_share_one_connection(conn):
    import threading

    conn.import_dir(FIXTURES / "smollm-f16", name="fx/threads")
    errors = []

    def worker():
        try:
            for _ in range(100):
                with conn.acquire("fx/threads") as ad:
                    i = ad.tensors()[0]
                    v = np.from_dlpack(ad.tensor(i.module, i.kind))
                    assert v.size > 0
                    del v
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    gc.collect()
    assert conn.live_leases == 0
    assert conn.show("fx/threads")["pins"] == 0


@pytest.mark.parametrize("fixture", sorted(EXPECTED))
def test_peft_config_gives_the_files_fields(conn, fixture):
    conn.import_dir(FIXTURES / fixture, name=f"cfg/{fixture}", allow_nonfinite=True)
    want = json.loads((FIXTURES / fixture / "adapter_config.json").read_text())
    with conn.acquire(f"cfg/{fixture}") as ad:
        got = ad.peft_config()
    assert got == conn.show(f"cfg/{fixture}")["peft_config"]
    assert got["r"] == want["r"] and got["lora_alpha"] == want["lora_alpha"]
    targets = want["target_modules"]
    if isinstance(targets, str):
        assert got["target_modules"] == targets
    else:
        assert sorted(got["target_modules"]) == sorted(targets)
    for key, default in (("use_rslora", False), ("use_dora", False), ("fan_in_fan_out", False),
                         ("bias", "none"), ("base_model_name_or_path", None),
                         ("rank_pattern", {}), ("alpha_pattern", {})):
        assert got[key] == (want.get(key) if want.get(key) is not None else default), key


def test_a_second_acquire_is_taken_in_shared_memory_with_the_same_tensors(conn):
    """The warm path (proto/directory.h): once a version was acquired by a
    request on this connection, the next acquire needs none, and counts as a
    lease like any other."""
    conn.import_dir(FIXTURES / "gemma-dora-bf16", name="fx/warm")
    with conn.acquire("fx/warm") as first:
        a = next(r for r in first.tensors() if r.kind == "A")
        want = first.tensor(a.module, "A").numpy().tobytes()
        before = conn.stats()["warm_leases"]
        with conn.acquire("fx/warm") as second:
            assert conn.stats()["warm_leases"] == before + 1
            assert conn.show("fx/warm")["pins"] == 2
            assert second.version == first.version
            assert second.tensor(a.module, "A").numpy().tobytes() == want
        assert conn.stats()["warm_leases"] == before
