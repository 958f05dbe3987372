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


def test_a_malformed_ref_raises_invalid_adapter(conn):
    with pytest.raises(lorastore.InvalidAdapter):
        conn.acquire("bad name with spaces@x")


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
