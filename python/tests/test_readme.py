"""The README runs as written against the quick start's daemon.

Every fenced block of README.md is tagged by the comment on the line before
it: `<!-- readme: run -->` (shell: its `$ ` commands, or every line of an
`sh` block, run in order in one shell, and the output shown under a `$`
command must be what the command prints, a line "..." standing for any
lines), `<!-- readme: run; why -->` (run,
the output shown being another machine's), `<!-- readme: python -->` (run
with the quick start's Python) or `<!-- readme: not run: why -->`.  The
blocks run from a tree that is the repository's as the quick start leaves it
(build/, scripts/, .venv with the package) with run/ of its own, against the
daemon `scripts/quickstart --daemon-only` starts there.
"""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO

TAG = re.compile(r"<!-- readme: (run|python|not run)(?:[:;] *(.*?))? -->")
MARK = "@@readme-command "


def blocks():
    """(kind, note, language, body, line) of every fenced block of the README."""
    lines = (REPO / "README.md").read_text().split("\n")
    out, i = [], 0
    while i < len(lines):
        if lines[i].startswith("```"):
            lang = lines[i][3:].strip()
            tag = TAG.fullmatch(lines[i - 1].strip()) if i else None
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            out.append((tag.group(1) if tag else None, tag.group(2) if tag else None, lang,
                        lines[i + 1:j], i + 1))
            i = j + 1
        else:
            i += 1
    return out


def commands(kind_note, lang, body):
    """[(command, expected output lines or None)] of a run block."""
    if any(line.startswith("$ ") for line in body):
        cmds = []
        for line in body:
            if line.startswith("$ "):
                cmds.append([line[2:], []])
            elif cmds:
                cmds[-1][1].append(line)
        check = kind_note is None
        return [(c, out if check else None) for c, out in cmds]
    return [(line, None) for line in body if line.strip() and not line.startswith("#")]


def shown(expected, got) -> bool:
    """Whether got is the output the README shows; a line "..." stands for any lines."""
    pattern = "".join(r"(?:[^\n]*\n)*?" if line == "..." else re.escape(line) + r"\n"
                      for line in expected)
    return re.fullmatch(pattern, "".join(line + "\n" for line in got)) is not None


def test_every_block_of_the_readme_says_whether_it_runs():
    found = blocks()
    assert len(found) > 20, "the README's blocks were not found"
    untagged = [line for kind, _, _, _, line in found if kind is None]
    assert not untagged, f"README blocks without a <!-- readme: ... --> tag at lines {untagged}"
    assert sum(kind == "run" for kind, *_ in found) >= 8


def tree(tmp_path: Path) -> Path:
    """A tree like the repository after the quick start, with run/ of its own."""
    t = tmp_path / "tree"
    t.mkdir()
    build = Path(os.environ.get("LS_BINARY_DIR", REPO / "build"))
    (t / "build").symlink_to(build)
    (t / "scripts").symlink_to(REPO / "scripts")
    # The quick start's .venv has the package: this interpreter's environment has it too.
    (t / ".venv").symlink_to(Path(sys.prefix))
    return t


def test_the_readme_runs_as_written_against_the_quick_starts_daemon(tmp_path):
    t = tree(tmp_path)
    env = dict(os.environ, PATH=f"{t / 'build' / 'cli'}:{os.environ['PATH']}")
    env.pop("LORASTORE_SOCKET", None)
    log = open(tmp_path / "quickstart.log", "wb")
    daemon = subprocess.Popen([str(t / "scripts" / "quickstart"), "--daemon-only"], cwd=t,
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    sock = t / "run" / "lorastored.sock"
    deadline = time.monotonic() + 60
    while not sock.exists():
        assert daemon.poll() is None, (tmp_path / "quickstart.log").read_text()
        assert time.monotonic() < deadline, "the quick start's daemon did not start"
        time.sleep(0.1)
    try:
        script, expected, python = ["set -e"], [], []
        for kind, note, lang, body, line in blocks():
            if kind == "python":
                python.append("\n".join(body))
            if kind != "run":
                continue
            for cmd, out in commands(note, lang, body):
                script.append(f"echo '{MARK}{len(expected)}'")
                script.append(cmd)
                expected.append((line, cmd, out))
        run = subprocess.run(["bash", "-c", "\n".join(script)], cwd=t, env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        got = re.split(rf"^{MARK}(\d+)\n", run.stdout, flags=re.M)[1:]
        outputs = {int(got[k]): got[k + 1].rstrip("\n").split("\n") for k in range(0, len(got), 2)}
        assert len(outputs) == len(expected), run.stdout
        for n, (line, cmd, out) in enumerate(expected):
            if out is not None:
                assert shown(out, outputs[n]), f"README line {line}: `{cmd}` printed\n" + \
                    "\n".join(outputs[n])
        env["LORASTORE_SOCKET"] = str(sock)
        for code in python:
            py = subprocess.run([str(t / ".venv" / "bin" / "python"), "-c", code], cwd=t, env=env,
                                capture_output=True, text=True, timeout=60)
            assert py.returncode == 0, py.stderr
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0, (tmp_path / "quickstart.log").read_text()


def test_the_readme_python_example_prints_the_adapter_and_two_read_only_tensors(daemon, conn):
    from conftest import FIXTURES, child_python

    text = (REPO / "README.md").read_text()
    m = re.search(r"<!-- readme: python -->\n```python\n(.*?)```", text, re.S)
    assert m, "no Python example in the README"
    conn.import_dir(FIXTURES / "smollm-f16", name="demo/example")
    child = child_python(m.group(1), LORASTORE_SOCKET=daemon.socket)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("demo/example 1 ") and lines[0].endswith(" host"), out
    assert len(lines) == 3 and all(line.endswith(" False") for line in lines[1:]), out
