"""Worker faults under load on a private real TorchServe (bench/faults.py; make bench-faults reports the numbers).

kill -9 and a hung worker (SIGSTOP, on an archive re-packed with a 5 s responseTimeout): TorchServe
replaces the worker, only requests in flight at the fault fail (with a 5xx, never a hang past the
client timeout), and the load is served again by the new worker. No timing is asserted.
"""
import pytest
import yaml

from bench import faults
from conftest import REPO
from bench.harness import private_server, worker_pids

THREADS = 3
WORKERS = yaml.safe_load((REPO / "serve_config" / "model-config.yaml").read_text())["minWorkers"]


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    mar = faults.short_timeout_mar(base / "store" / "hotdog.mar", response_timeout=5)
    with private_server(mar, base=base / "ts") as srv:
        keys = srv.keys
        yield srv
    assert not any(p.exists() for p in (base / "ts" / "tmp").glob(".model_server.pid"))
    # Dead and hung workers make TorchServe log a lot: still no key in any of it.
    logs = [p for p in (base / "ts" / "work" / "logs").rglob("*") if p.is_file()]
    assert logs
    for kind, key in keys.items():
        assert not [p.name for p in logs if key in p.read_text(errors="replace")], f"{kind} key in the logs"


@pytest.mark.parametrize("fault", ["kill", "hang"])
def test_worker_fault_recovers_without_hang(fault_server, fault):
    images = faults.sample_images(6)
    result = faults.inject(fault_server, fault, images, threads=THREADS, warmup=1.5, after=2.0,
                           client_timeout=30.0)
    assert result["requests_before_fault"] > 0
    assert result["new_worker_pid"] and result["new_worker_pid"] != result["old_worker_pid"], result
    pids = worker_pids(fault_server)  # the replacement beside the workers that were not hit
    assert result["new_worker_pid"] in pids and result["old_worker_pid"] not in pids and len(pids) == WORKERS
    assert result["probe_after_new_worker"]["status"] == 200, result  # served again, no server hang
    # What can be lost: per client thread, the request in flight at the fault and the one it sends while
    # the worker is being replaced. TorchServe answers those 507 once the new worker is up, but in about
    # one run in three it never answered them (client timeouts); a client needs its own timeout.
    assert result["failed_requests"] <= 2 * THREADS, result
    assert all(s.startswith("5") or s == "client-timeout" for s in result["failed_by_status"]), result
