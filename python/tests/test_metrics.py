"""lorastored's Prometheus endpoint (--metrics-listen), scraped over real HTTP
and read with prometheus_client's own parser of the text format."""
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

import lorastore
from conftest import FIXTURES, Daemon, daemon_binary

parser = pytest.importorskip(
    "prometheus_client.parser", reason="prometheus_client is not installed (scripts/install-deps)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def metrics_daemon(tmp_path):
    port = free_port()
    d = Daemon(tmp_path, "--metrics-listen", f"127.0.0.1:{port}")
    d.url = f"http://127.0.0.1:{port}/metrics"
    yield d
    rc = d.stop()
    assert rc == 0, f"lorastored exited with {rc}:\n{d.log_text()}"


def scrape(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert families, "no metric families"
    return families


def value(families, name, sample=None, **labels):
    fam = families[name]
    for s in fam.samples:
        if s.name == (sample or name) and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {sample or name} {labels} in {fam.samples}")


def test_metrics_follow_imports_loads_acquires_and_clients(metrics_daemon):
    before = scrape(metrics_daemon.url)
    assert value(before, "lorastore_catalog_versions") == 0
    with lorastore.connect(metrics_daemon.socket) as conn:
        conn.import_dir(FIXTURES / "smollm-f16", name="m/a")
        with conn.acquire("m/a") as ad:
            assert ad.version == 1
            with conn.acquire("m/a"):
                pass
            time.sleep(0.3)  # the loop publishes every 100 ms
            fam = scrape(metrics_daemon.url)
            assert value(fam, "lorastore_leases") == 1
            assert value(fam, "lorastore_clients") >= 1
    fam = scrape(metrics_daemon.url)
    assert value(fam, "lorastore_catalog_versions") == 1
    assert value(fam, "lorastore_imports", "lorastore_imports_total") == 1
    assert value(fam, "lorastore_loads", "lorastore_loads_total", tier="host") == 1
    assert value(fam, "lorastore_misses", "lorastore_misses_total", tier="host") >= 1
    assert value(fam, "lorastore_tier_adapters", tier="host") == 1
    assert value(fam, "lorastore_tier_used_bytes", tier="host") > 0
    assert value(fam, "lorastore_tier_budget_bytes", tier="host") == 256 << 20
    assert value(fam, "lorastore_tier_slab_bytes", tier="host") > 0
    # Two acquires: a cold one (with its load), timed by the daemon, and a
    # warm one, taken in shared memory without a request (counted apart).
    acq = fam["lorastore_acquire_duration_seconds"]
    assert acq.type == "histogram"
    assert value(fam, "lorastore_acquire_duration_seconds",
                 "lorastore_acquire_duration_seconds_count") == 1
    assert value(fam, "lorastore_acquire_duration_seconds",
                 "lorastore_acquire_duration_seconds_bucket", le="+Inf") == 1
    assert value(fam, "lorastore_warm_acquires", "lorastore_warm_acquires_total") == 1
    assert value(fam, "lorastore_load_duration_seconds",
                 "lorastore_load_duration_seconds_count", tier="host") == 1
    assert value(fam, "lorastore_event_loop_info",
                 engine=("io_uring" if "io_uring" in metrics_daemon.log_text() else "epoll")) == 1
    version = subprocess.run([str(daemon_binary()), "--version"], capture_output=True,
                             text=True).stdout.split()[-1]
    assert value(fam, "lorastore_build_info", version=version, backend="host") == 1


def test_the_per_connection_bounds_are_counted_and_start_at_zero(metrics_daemon):
    """The bounds of one connection (reply queue, worker jobs, unanswerable
    requests, a lease page over the pin limit) have counters; the C tests of
    test_daemon_hostile and test_daemon_warm_path drive them."""
    fam = scrape(metrics_daemon.url)
    for name in ("lorastore_client_reads_paused", "lorastore_malformed_requests",
                 "lorastore_jobs_refused", "lorastore_jobs_cancelled",
                 "lorastore_warm_unpublished", "lorastore_warm_over_limit"):
        assert fam[name].type == "counter", name
        assert value(fam, name, name + "_total") == 0, name
    # A frame that is no request closes its connection and is counted.
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(metrics_daemon.socket))
        s.sendall(bytes([16, 0, 0, 0]) + b"\xff" * 16)
        s.settimeout(5)
        assert s.recv(4096) == b""
    time.sleep(0.3)  # the loop publishes every 100 ms
    fam = scrape(metrics_daemon.url)
    assert value(fam, "lorastore_malformed_requests", "lorastore_malformed_requests_total") == 1


def test_only_metrics_is_served(metrics_daemon):
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(metrics_daemon.url.replace("/metrics", "/other"), timeout=10)
    assert e.value.code == 404


def tcp_sockets_of(pid: int) -> set:
    """Inodes of the TCP sockets (IPv4 and IPv6) that process pid holds."""
    import os

    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    tcp = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        tcp |= {line.split()[9] for line in lines}
    return inodes & tcp


def test_without_the_option_no_tcp_port_is_opened(tmp_path):
    d = Daemon(tmp_path)
    try:
        assert tcp_sockets_of(d.proc.pid) == set()
    finally:
        assert d.stop() == 0


def test_with_the_option_one_tcp_port_is_opened(metrics_daemon):
    assert len(tcp_sockets_of(metrics_daemon.proc.pid)) == 1


def test_a_bad_listen_address_stops_the_start_with_a_clear_message(tmp_path):
    r = subprocess.run([str(daemon_binary()), "--socket", str(tmp_path / "s"), "--state-dir",
                        str(tmp_path / "st"), "--metrics-listen", "localhost"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode != 0
    assert "--metrics-listen" in r.stderr and "ADDR:PORT" in r.stderr
