"""Names, versions and aliases through the Python package against a real lorastored."""
import shutil

import pytest

import lorastore
from conftest import FIXTURES


def test_importing_the_same_content_again_is_unchanged(conn):
    first = conn.import_dir(FIXTURES / "smollm-f16", name="cat/same")
    again = conn.import_dir(FIXTURES / "smollm-f16", name="cat/same")
    assert first["unchanged"] is False
    assert again["unchanged"] is True
    assert again["version"] == first["version"] == 1
    assert [e["version"] for e in conn.list("cat/same")] == [1]


def test_a_folder_named_adapter_is_not_a_name(conn, tmp_path):
    folder = tmp_path / "adapter"
    shutil.copytree(FIXTURES / "smollm-f16", folder)
    with pytest.raises(lorastore.Error, match="says nothing of the adapter"):
        conn.import_dir(folder)
    assert conn.list() == []


def test_a_version_for_another_base_model_needs_allow_new_base(conn):
    conn.import_dir(FIXTURES / "smollm-f16", name="cat/base")
    with pytest.raises(lorastore.Error, match="allow-new-base"):
        conn.import_dir(FIXTURES / "bert-seqcls", name="cat/base")
    entry = conn.import_dir(FIXTURES / "bert-seqcls", name="cat/base", allow_new_base=True)
    assert entry["version"] == 2


def test_an_alias_is_acquired_listed_moved_and_removed(conn):
    conn.import_dir(FIXTURES / "smollm-f16", name="cat/a")
    conn.import_dir(FIXTURES / "smollm-f16", name="cat/b")
    assert conn.tag("cat/a@1", "cat/a:prod")["version"] == 1
    assert conn.show("cat/a")["aliases"] == ["cat/a:prod"]
    assert conn.show("cat/a:prod")["name"] == "cat/a"
    assert conn.load("cat/a:prod") == "cat/a@1"
    with conn.acquire("cat/a:prod") as ad:
        assert ad.name == "cat/a"
    # An alias may name any adapter's version: it moves there at once.
    conn.tag("cat/b", "cat/a:prod")
    assert conn.show("cat/a:prod")["name"] == "cat/b"
    assert conn.show("cat/a")["aliases"] == []
    with pytest.raises(lorastore.Error, match="cat/a:prod"):
        conn.delete("cat/b@1")
    conn.untag("cat/a:prod")
    with pytest.raises(lorastore.NotFound):
        conn.show("cat/a:prod")
    assert conn.delete("cat/b@1")["versions"] == 1


def test_deleting_every_version_asks_for_all_and_says_what_went(conn):
    conn.import_dir(FIXTURES / "smollm-f16", name="cat/gone")
    with pytest.raises(lorastore.InvalidArgument, match="all=True"):
        conn.delete("cat/gone")
    removed = conn.delete("cat/gone", all=True)
    assert removed["versions"] == 1
    assert removed["freed_bytes"] == removed["blob_bytes"] > 0
    assert conn.list("cat/gone") == []


def test_an_exported_version_imports_again_to_the_same_digest(conn, tmp_path):
    entry = conn.import_dir(FIXTURES / "roberta-patterns", name="cat/exp")
    assert conn.export("cat/exp", tmp_path / "out") == "cat/exp@1"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors"]
    again = conn.import_dir(tmp_path / "out", name="cat/exp")
    assert again["unchanged"] is True
    assert again["digest"] == entry["digest"]
    with pytest.raises(lorastore.Error, match="already holds"):
        conn.export("cat/exp", tmp_path / "out")


def test_each_size_is_one_number_in_python_and_the_cli_json(conn, daemon):
    import json
    import subprocess

    from conftest import cli_binary

    entry = conn.import_dir(FIXTURES / "smollm-f16", name="cat/sized")
    shown = conn.show("cat/sized")
    listed = conn.list("cat/sized")[0]
    for key in ("tensor_bytes", "resident_bytes", "blob_bytes"):
        assert entry[key] == shown[key] == listed[key], key
    with conn.acquire("cat/sized") as ad:
        assert ad.tensor_bytes == shown["tensor_bytes"]
        assert ad.resident_bytes == shown["resident_bytes"]
        assert "bytes" not in dir(ad)
    out = subprocess.run([str(cli_binary()), "--socket", daemon.socket, "--json", "show",
                          "cat/sized"], check=True, capture_output=True, text=True).stdout
    cli = json.loads(out)
    for key in ("tensor_bytes", "resident_bytes", "blob_bytes"):
        assert cli[key] == shown[key], key


def test_the_cli_json_and_python_give_the_same_documents(conn, daemon):
    import json
    import subprocess

    from conftest import cli_binary

    conn.import_dir(FIXTURES / "roberta-patterns", name="cat/shape")
    conn.tag("cat/shape", "cat/shape:prod")

    def cli(*args):
        out = subprocess.run([str(cli_binary()), "--socket", daemon.socket, "--json", *args],
                             check=True, capture_output=True, text=True).stdout
        return json.loads(out)

    assert cli("ls", "cat/")["adapters"] == conn.list("cat/")
    assert cli("show", "cat/shape") == conn.show("cat/shape")
    imported = cli("import", str(FIXTURES / "roberta-patterns"), "--name", "cat/shape")
    again = conn.import_dir(FIXTURES / "roberta-patterns", name="cat/shape")
    assert {k: v for k, v in imported["imported"][0].items() if k != "dir"} == again
    assert conn.show("cat/shape")["created"].endswith("Z")


def test_stats_are_the_same_document_from_the_cli_and_python(conn, daemon):
    import json
    import subprocess

    from conftest import cli_binary

    out = subprocess.run([str(cli_binary()), "--socket", daemon.socket, "--json", "stats"],
                         check=True, capture_output=True, text=True).stdout
    cli, py = json.loads(out), conn.stats()
    assert cli["tiers"] == py["tiers"]
    assert set(cli) == set(py)
    assert "device" not in py["tiers"][0], "the host tier has no GPU to name"


def test_the_package_has_a_version_and_no_stray_names():
    assert lorastore.__version__ == "0.1.0"
    public = {n for n in dir(lorastore) if not n.startswith("_")}
    # Submodules appear once imported; everything else public is in __all__.
    assert public - set(lorastore.__all__) <= {"peft", "vllm"}, public - set(lorastore.__all__)


def test_state_dict_gives_torch_tensors_of_the_daemons_memory(conn):
    torch = pytest.importorskip("torch", reason="torch is not installed (scripts/install-deps "
                                                 "--engines)")
    conn.import_dir(FIXTURES / "smollm-f16", name="cat/torch")
    with conn.acquire("cat/torch") as ad:
        plain = ad.state_dict()
        tensors = ad.state_dict(framework="torch")
        arrays = ad.state_dict(framework="numpy")
        assert tensors.keys() == plain.keys() == arrays.keys()
        for key, t in tensors.items():
            assert isinstance(t, torch.Tensor)
            assert t.data_ptr() == plain[key].data_ptr, f"{key} was copied"
            assert t.dtype == torch.float16
            assert tuple(t.shape) == arrays[key].shape
        with pytest.raises(lorastore.InvalidArgument):
            ad.state_dict(framework="jax")
