"""A real lorastored per test, on a temporary socket and state directory.

The daemon binary comes from $LORASTORE_DAEMON, or the CMake build tree of
the repository ($LS_BINARY_DIR, default <repo>/build).
"""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "peft"


def daemon_binary() -> Path:
    if os.environ.get("LORASTORE_DAEMON"):
        return Path(os.environ["LORASTORE_DAEMON"])
    build = Path(os.environ.get("LS_BINARY_DIR", REPO / "build"))
    return build / "daemon" / "lorastored"


def cli_binary() -> Path:
    build = Path(os.environ.get("LS_BINARY_DIR", REPO / "build"))
    return build / "cli" / "lorastore"


class Daemon:
    def __init__(self, root: Path, *args: str):
        self.root = root
        self.socket = str(root / "lorastored.sock")
        self.state = root / "state"
        self.log = root / "daemon.log"
        binary = daemon_binary()
        if not binary.exists():
            pytest.fail(f"{binary} is not built (cmake --build build, or set LORASTORE_DAEMON)")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(binary), "--socket", self.socket, "--state-dir", str(self.state),
                 "--backend", "host", "--host-budget", "256MiB", *args],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"lorastored exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(self.socket)
                return
            except OSError:
                time.sleep(0.02)
        self.stop()
        pytest.fail(f"lorastored did not serve within 20 s:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def daemon(tmp_path):
    d = Daemon(tmp_path)
    yield d
    rc = d.stop()
    assert rc == 0, f"lorastored exited with {rc}:\n{d.log_text()}"


@pytest.fixture
def conn(daemon):
    import lorastore

    c = lorastore.connect(daemon.socket)
    yield c
    if not c.closed and c.live_leases == 0:
        c.close()


def child_python(code: str, **env) -> subprocess.Popen:
    """A second Python process running code (with this interpreter and path)."""
    e = dict(os.environ, **env)
    e["PYTHONPATH"] = os.pathsep.join(sys.path)
    return subprocess.Popen([sys.executable, "-c", code], env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def double_driver() -> Path:
    """The CUDA driver double of the C tests (a stand-in libcuda.so.1), built with CUDA."""
    build = Path(os.environ.get("LS_BINARY_DIR", REPO / "build"))
    return build / "tests" / "support" / "cuda_double" / "libls_cuda_double.so"
