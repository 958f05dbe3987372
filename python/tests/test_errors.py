"""Library codes raise lorastore.Error subclasses named for what happened."""
import pytest

import lorastore
from conftest import FIXTURES


def test_an_unknown_name_raises_not_found(conn):
    with pytest.raises(lorastore.NotFound) as e:
        conn.acquire("no/such-adapter")
    assert isinstance(e.value, lorastore.Error)
    assert e.value.code < 0 and lorastore.strerror(e.value.code)
    assert e.value.message


def test_a_malformed_ref_raises_invalid_argument(conn):
    with pytest.raises(lorastore.InvalidArgument):
        conn.acquire("bad name with spaces@x")
    with pytest.raises(lorastore.InvalidArgument):
        conn.import_dir(FIXTURES / "smollm-f16", name="a b")


def test_an_unknown_tensor_raises_not_found(conn):
    conn.import_dir(FIXTURES / "smollm-f16", name="fx/err")
    with conn.acquire("fx/err") as ad:
        with pytest.raises(lorastore.NotFound):
            ad.tensor("model.no.such.module", "A")
        with pytest.raises(ValueError):
            ad.tensor("model.no.such.module", "C")


def test_a_missing_daemon_raises_connection_closed_or_not_found(tmp_path):
    with pytest.raises((lorastore.ConnectionClosed, lorastore.NotFound)):
        lorastore.connect(str(tmp_path / "nobody-here.sock"))


def test_a_corrupt_blob_raises_corrupt(daemon, conn):
    entry = conn.import_dir(FIXTURES / "smollm-f16", name="fx/corrupt")
    blob = daemon.state / "blobs" / f"{entry['digest']}.blob"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x5A  # the data region (or the manifest: also Corrupt)
    blob.write_bytes(bytes(data))
    with pytest.raises(lorastore.Corrupt):
        conn.acquire("fx/corrupt")


def test_using_a_released_adapter_raises(conn):
    conn.import_dir(FIXTURES / "smollm-f16", name="fx/rel")
    ad = conn.acquire("fx/rel")
    ad.release()
    assert ad.released
    with pytest.raises(lorastore.Error):
        ad.tensors()


def test_a_non_admin_import_raises_permission_denied():
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from conftest import Daemon

    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as nobody")
    # A folder nobody can reach: the socket and a copy of the adapter.
    root = Path(tempfile.mkdtemp(prefix="lorastore-nobody-"))
    try:
        root.chmod(0o755)
        shutil.copytree(FIXTURES / "smollm-f16", root / "adapter")
        for p in (root / "adapter", *(root / "adapter").iterdir()):
            p.chmod(0o755 if p.is_dir() else 0o644)
        d = Daemon(root)
        os.chmod(d.socket, 0o666)
        pid = os.fork()
        if pid == 0:  # the child: nobody, with the module already loaded
            code = 10
            try:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                code = 11
                with lorastore.connect(d.socket) as c:
                    try:
                        c.import_dir(root / "adapter", name="nobody/new")
                        code = 12
                    except lorastore.PermissionDenied as e:
                        code = 0 if e.code < 0 else 13
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the nobody client got no PermissionDenied"
        with lorastore.connect(d.socket) as c:
            assert c.stats()["catalog_versions"] == 0, "the refused import changed the catalog"
        assert d.stop() == 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_a_daemon_that_never_answers_raises_timeout_after_connect_timeout_ms(tmp_path):
    import socket
    import time

    path = str(tmp_path / "silent.sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen(8)  # never accepted, never answered
        t0 = time.monotonic()
        with pytest.raises(lorastore.Timeout):
            lorastore.connect(path, connect_timeout_ms=300)
        assert time.monotonic() - t0 < 2.0
