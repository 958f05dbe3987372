"""The README's Python example runs as written against a real daemon."""
import re

from conftest import FIXTURES, REPO, child_python


def test_the_readme_python_example_prints_the_adapter_and_two_read_only_tensors(daemon, conn):
    text = (REPO / "README.md").read_text()
    m = re.search(r"<!-- python-example -->\n```python\n(.*?)```", text, re.S)
    assert m, "no Python example in the README"
    conn.import_dir(FIXTURES / "smollm-f16", name="demo/example")
    child = child_python(m.group(1), LORASTORE_SOCKET=daemon.socket)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("demo/example 1 ") and lines[0].endswith(" host"), out
    assert len(lines) == 3 and all(line.endswith(" False") for line in lines[1:]), out
