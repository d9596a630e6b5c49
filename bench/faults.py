"""Fault injection under load: `python -m bench.faults` (make bench-faults) -> reports/faults.json.

A private TorchServe serves real JPEGs to a few client threads that send requests back to back, each
with a bounded client timeout. Then one fault is injected into the Python worker:

- `kill`: SIGKILL (the worker dies at once; TorchServe notices the closed socket and starts another);
- `hang`: SIGSTOP (the worker is alive but never answers; TorchServe gives up after the model's
  responseTimeout, kills it and starts another). The archive is re-packed with a short
  responseTimeout for this, so the run takes seconds, not the shipped 60 s.

For each fault the report gives the time from the fault to the first good answer to a request sent
after it, the time until the management API shows a new READY worker, every failed request (status,
message), the slowest request, and whether any request hit the client timeout (a hang). Measured,
never asserted as timings; tests/test_faults.py checks the behaviour (recovery, no hang, bounded errors).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
import zipfile
from collections import Counter
from pathlib import Path

import requests

from serving.config import MAR, MODEL_NAME, REPO
from bench.harness import private_server, workers

SAMPLE = REPO / "tests" / "data" / "sample"


def short_timeout_mar(dst: Path, response_timeout: int, src: Path = MAR) -> Path:
    """A copy of hotdog.mar whose model-config.yaml has another responseTimeout (seconds)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename == "model-config.yaml":
                data = re.sub(rb"(?m)^responseTimeout:.*$", b"responseTimeout: %d" % response_timeout, data)
            zout.writestr(item, data)
    return dst


class Load:
    """Client threads sending real JPEGs back to back; every request recorded with its times."""

    def __init__(self, srv, images: list[bytes], threads: int = 4, timeout: float = 30.0):
        self.srv, self.images, self.threads, self.timeout = srv, images, threads, timeout
        self.records: list[dict] = []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.url = f"{srv.cfg.inference_url}/predictions/{MODEL_NAME}"
        self.t0 = time.monotonic()

    def headers(self) -> dict:
        return {**self.srv.inference_headers(), "Content-Type": "image/jpeg"}

    def _client(self, idx: int) -> None:
        session = requests.Session()
        headers = self.headers()
        i = idx
        while not self.stop_event.is_set():
            data = self.images[i % len(self.images)]
            i += self.threads
            start = time.monotonic()
            rec = {"start": start - self.t0}
            try:
                r = session.post(self.url, data=data, headers=headers, timeout=self.timeout)
                rec["status"] = r.status_code
                if r.status_code != 200:
                    try:
                        body = r.json()
                        rec["error"] = str(body.get("message") or body.get("error") or body)[:160]
                    except ValueError:
                        rec["error"] = r.text[:160]
            except requests.Timeout:
                rec["status"], rec["error"] = "client-timeout", f"no answer in {self.timeout} s"
            except requests.RequestException as e:
                rec["status"], rec["error"] = "connection-error", str(e)[:160]
                time.sleep(0.05)
            rec["end"] = time.monotonic() - self.t0
            with self.lock:
                self.records.append(rec)

    def __enter__(self):
        self.pool = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(self.threads)]
        for t in self.pool:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_event.set()
        for t in self.pool:
            t.join(self.timeout + 5)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def wait_for_good_answer(self, sent_after: float, deadline: float) -> None:
        """Until a request started at or after `sent_after` got 200, or `deadline` (both on now())."""
        while self.now() < deadline and not any(
                r["status"] == 200 and r["start"] >= sent_after for r in list(self.records)):
            time.sleep(0.1)


def _ready_worker(srv, exclude: set[int] = frozenset()) -> dict | None:
    """A READY worker whose pid is not in `exclude` (the workers that were there before the fault)."""
    try:
        return next((w for w in workers(srv) if w.get("status") == "READY" and w["pid"] not in exclude), None)
    except (requests.RequestException, ValueError):
        return None


def _probe(load: Load) -> dict:
    """One request on its own connection; returns its status and seconds."""
    start = time.monotonic()
    try:
        r = requests.post(load.url, data=load.images[0], timeout=load.timeout, headers=load.headers())
        status = r.status_code
    except requests.RequestException as e:
        status = type(e).__name__
    return {"status": status, "seconds": round(time.monotonic() - start, 2)}


def inject(srv, fault: str, images: list[bytes], threads: int = 4, warmup: float = 3.0, after: float = 5.0,
           max_wait: float = 90.0, client_timeout: float = 30.0) -> dict:
    """Run load, inject `fault` into the worker, wait for recovery, return the measurements."""
    old = _ready_worker(srv)
    assert old, "no READY worker before the fault"
    pid = old["pid"]
    before_fault = {w["pid"] for w in workers(srv)}  # with several workers, the others stay up
    with Load(srv, images, threads, client_timeout) as load:
        time.sleep(warmup)
        # The fault must land on a worker that is serving: on a loaded machine the first answers can
        # take longer than `warmup`.
        load.wait_for_good_answer(sent_after=0.0, deadline=max_wait)
        t_fault = load.now()
        os.kill(pid, signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
        new_ready_at, new_pid = None, None
        while load.now() - t_fault < max_wait:
            w = _ready_worker(srv, before_fault)
            if w:
                new_ready_at, new_pid = load.now(), w["pid"]
                break
            time.sleep(0.1)
        # A fresh request once the new worker is READY: the load threads may all still be waiting on
        # requests the dead worker held (TorchServe sometimes leaves those unanswered).
        probe = _probe(load) if new_ready_at is not None else None
        # Keep the load on until the new worker has answered (a loaded machine may take longer than
        # `after`), then `after` more seconds of it serving.
        load.wait_for_good_answer(sent_after=t_fault, deadline=t_fault + max_wait)
        time.sleep(after)
        t_end = load.now()
    if fault == "hang":
        try:  # TorchServe should have killed it; never leave a stopped process behind
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    recs = sorted(load.records, key=lambda r: r["start"])
    before = [r for r in recs if r["end"] <= t_fault]
    affected = [r for r in recs if r["end"] > t_fault]
    failed = [r for r in affected if r["status"] != 200]
    first_ok_after = next((r["end"] for r in sorted(affected, key=lambda r: r["end"])
                           if r["status"] == 200 and r["start"] >= t_fault), None)
    return {
        "fault": fault, "signal": "SIGKILL" if fault == "kill" else "SIGSTOP",
        "client_threads": threads, "client_timeout_s": client_timeout,
        "old_worker_pid": pid, "new_worker_pid": new_pid,
        "requests_before_fault": len(before), "requests_after_fault": len(affected),
        "failed_requests": len(failed),
        "failed_by_status": dict(Counter(str(r["status"]) for r in failed)),
        "failure_messages": sorted({f"{r['status']}: {r.get('error', '')}" for r in failed})[:10],
        "seconds_to_first_good_answer": None if first_ok_after is None else round(first_ok_after - t_fault, 2),
        "seconds_to_new_ready_worker": None if new_ready_at is None else round(new_ready_at - t_fault, 2),
        "slowest_request_s": round(max(r["end"] - r["start"] for r in recs), 2),
        "client_timeouts": sum(r["status"] == "client-timeout" for r in recs),
        "client_timeouts_started_before_fault": sum(r["status"] == "client-timeout" and r["start"] < t_fault
                                                    for r in recs),
        "probe_after_new_worker": probe,
        "good_answers_after_recovery": sum(r["status"] == 200 for r in affected
                                           if new_ready_at and r["start"] >= new_ready_at - t_fault),
        "observed_seconds": round(t_end, 1),
        "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],  # a shared machine: context
    }


def sample_images(n: int = 12) -> list[bytes]:
    return [p.read_bytes() for p in sorted(SAMPLE.glob("*/*.jpg"))[:n]]


def run(faults: list[str], response_timeout: int = 5, threads: int = 4, base: Path | None = None) -> dict:
    images = sample_images()
    results = []
    with tempfile.TemporaryDirectory(prefix="hotdog-faults-") as tmp:
        mar = short_timeout_mar(Path(tmp) / "store" / "hotdog.mar", response_timeout)
        with private_server(mar, base=base) as srv:
            for fault in faults:
                results.append(inject(srv, fault, images, threads))
    return {"response_timeout_s": response_timeout, "results": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", default="kill,hang", help="comma-separated: kill, hang")
    parser.add_argument("--response-timeout", type=int, default=5, help="responseTimeout (s) for the hang test")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--out", default=str(REPO / "reports" / "faults.json"))
    args = parser.parse_args(argv)
    report = run(args.faults.split(","), args.response_timeout, args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
