"""The serving tools around a server's life, without starting one: a stale pid file (serving/server.py),
which files make hotdog.mar stale (serving/archive.py vs the Makefile), a soak with no requests
(bench/soak.py). Every server-state file lives in tmp_path, never in the repo's .serve/.
"""
import subprocess
import sys
import time

import pytest

from bench import soak
from serving import server
from serving.archive import mar_inputs
from serving.config import REPO, ServeError
from bench.harness import config_copy


@pytest.fixture
def unrelated_process():
    """A live process in its own session that is not TorchServe, as a reused pid would be."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def stale_pid_file(tmp_path, pid: int):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    (tmpdir / server.PID_FILE).write_text(f"{pid}\n")
    return tmp_path / "work", tmpdir


def test_stop_never_kills_a_process_that_reused_the_pid(tmp_path, unrelated_process):
    workdir, tmpdir = stale_pid_file(tmp_path, unrelated_process.pid)
    workdir.mkdir()
    done = subprocess.run([sys.executable, "-m", "serving.server", "stop", "--workdir", str(workdir),
                           "--tmpdir", str(tmpdir)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "TorchServe is not running." in done.stdout
    assert f"stale {tmpdir / server.PID_FILE}" in done.stderr and f"pid {unrelated_process.pid}" in done.stderr
    assert unrelated_process.poll() is None  # still running: neither SIGTERMed nor its group SIGKILLed
    assert not (tmpdir / server.PID_FILE).exists()


def test_start_is_not_refused_by_a_pid_that_is_not_torchserve(tmp_path, unrelated_process, capsys):
    workdir, tmpdir = stale_pid_file(tmp_path, unrelated_process.pid)
    # A missing archive makes start() fail right after the "already running" check, before a server starts.
    with pytest.raises(ServeError, match="not found") as refused:
        server.start(config_copy(tmp_path), workdir, tmpdir, tmp_path / "missing.mar")
    assert "already running" not in str(refused.value)
    assert "stale" in capsys.readouterr().err and not (tmpdir / server.PID_FILE).exists()
    assert unrelated_process.poll() is None


def test_mar_inputs_are_the_makefiles():
    """The tests' stale-archive check (conftest) watches exactly the files `make mar` rebuilds on."""
    printed = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(REPO),
                              "--eval=print-mar-inputs: ; @echo $(MAR_INPUTS)", "print-mar-inputs"],
                             capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert printed and sorted(REPO / p for p in printed) == sorted(mar_inputs())


@pytest.mark.parametrize("args", [["--requests", "0"], ["--concurrency", "0"], ["--warmup", "-1"]])
def test_soak_refuses_a_run_with_nothing_to_measure(args, capsys):
    with pytest.raises(SystemExit) as refused:
        soak.main(args)  # refused before any server starts
    assert refused.value.code == 2 and "must be" in capsys.readouterr().err


def test_soak_summary_of_no_requests():
    assert soak.percentile([], 50) is None
    assert soak.latency_summary([]) == dict.fromkeys(("p50", "p90", "p99", "max", "mean"))
    assert soak.latency_summary([3.0, 1.0, 2.0]) == {"p50": 2.0, "p90": 3.0, "p99": 3.0, "max": 3.0, "mean": 2.0}


def test_a_port_held_by_another_program_is_named_with_its_pid(tmp_path):
    """`make serve` refuses a taken port naming the process that holds it, before starting anything."""
    cfg = config_copy(tmp_path)
    host, port = cfg.listen_ports()["inference"]
    holder = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", host],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not server._holder(port) and time.monotonic() < deadline:  # until it listens
            time.sleep(0.1)
        done = subprocess.run([sys.executable, "-m", "serving.server", "start", "--config", str(cfg.path),
                               "--workdir", str(tmp_path), "--tmpdir", str(tmp_path / "tmp")],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 2
    assert f"port already in use: {port} (inference, {host}, held by pid {holder.pid}: " in done.stderr
    assert "http.server" in done.stderr and not (tmp_path / "tmp" / server.PID_FILE).exists()
