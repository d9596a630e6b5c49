"""Soak benchmark: `python -m bench.soak` (make bench-soak) -> reports/soak.json.

A private TorchServe answers --requests real test JPEGs (../shared/data/hotdog/test, cycled) sent by
--concurrency client threads. Reports errors (by status), latency percentiles, throughput, the
handler's mean batch size, and the Python worker's and the Java frontend's RSS after a warm-up and at
the end (sampled along the way), so memory growth shows. A benchmark: nothing here is asserted.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import requests

from serving.config import MODEL_NAME, REPO
from bench.harness import private_server, rss_mb, worker_pids
from bench.parity import batch_counters
from bench.reports import test_images
from training.data import SHARED_DATA

def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank); None for no values (nothing was timed)."""
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values)) - 1))]


def latency_summary(latencies: list[float]) -> dict:
    """p50/p90/p99/max/mean in ms; all None when there were no requests (a warm-up of 0)."""
    if not latencies:
        return dict.fromkeys(("p50", "p90", "p99", "max", "mean"))
    return {**{f"p{q}": round(percentile(latencies, q), 1) for q in (50, 90, 99)},
            "max": round(max(latencies), 1), "mean": round(statistics.fmean(latencies), 1)}


def workers_rss_mb(pids: list[int]) -> float | None:
    """Resident memory of all the model's workers together, None if one of them is gone."""
    sizes = [rss_mb(pid) for pid in pids]
    return None if None in sizes else round(sum(sizes), 1)


def soak(srv, images: list[bytes], n: int, concurrency: int, timeout: float = 60.0,
         samples: int = 10) -> dict:
    url = f"{srv.cfg.inference_url}/predictions/{MODEL_NAME}"
    headers = {**srv.inference_headers(), "Content-Type": "image/jpeg"}
    counter = iter(range(n))
    lock = threading.Lock()
    latencies, statuses, rss_series = [], Counter(), []
    done = [0]
    pids = sorted(worker_pids(srv))

    def client():
        session = requests.Session()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            start = time.perf_counter()
            try:
                r = session.post(url, data=images[i % len(images)], headers=headers, timeout=timeout)
                status = r.status_code if r.status_code != 200 or "label" in r.json() else "no-label"
            except requests.RequestException as e:
                status = type(e).__name__
            ms = (time.perf_counter() - start) * 1000
            with lock:
                latencies.append(ms)
                statuses[str(status)] += 1
                done[0] += 1

    def sampler(stop: threading.Event):
        while not stop.wait(max(0.5, n / 2000)):
            rss_series.append({"requests_done": done[0], "worker_rss_mb": workers_rss_mb(pids),
                               "frontend_rss_mb": rss_mb(srv.pid)})

    batches0, reqs0 = batch_counters(srv.cfg)
    stop = threading.Event()
    sampling = threading.Thread(target=sampler, args=(stop,), daemon=True)
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    sampling.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    stop.set()
    sampling.join()
    batches1, reqs1 = batch_counters(srv.cfg)
    errors = {k: v for k, v in statuses.items() if k != "200"}
    return {
        "requests": n, "concurrency": concurrency, "errors": sum(errors.values()), "errors_by_status": errors,
        "wall_s": round(wall, 1), "requests_per_s": round(n / wall, 1),
        "latency_ms": latency_summary(latencies),
        "mean_batch_size": round((reqs1 - reqs0) / max(1.0, batches1 - batches0), 2),
        "worker_pids": pids, "worker_pids_unchanged": sorted(worker_pids(srv)) == pids,
        "rss_series": rss_series,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=300, help="requests before the starting RSS is read")
    parser.add_argument("--data", default=str(SHARED_DATA / "test"))
    parser.add_argument("--out", default=str(REPO / "reports" / "soak.json"))
    args = parser.parse_args(argv)
    # Refused before a server starts: a soak of no requests (or no clients) has nothing to report.
    if args.requests < 1 or args.concurrency < 1:
        parser.error(f"--requests and --concurrency must be at least 1 (got {args.requests}, {args.concurrency})")
    if args.warmup < 0:
        parser.error(f"--warmup must be 0 or more (got {args.warmup})")
    images, source, out = test_images(args.data, args.out)
    with private_server() as srv:
        pids = sorted(worker_pids(srv))
        rss_loaded = workers_rss_mb(pids)
        soak(srv, images, args.warmup, args.concurrency)
        rss_start, fe_start = workers_rss_mb(pids), rss_mb(srv.pid)
        result = soak(srv, images, args.requests, args.concurrency)
        rss_end, fe_end = workers_rss_mb(pids), rss_mb(srv.pid)
    series = [s["worker_rss_mb"] for s in result["rss_series"] if s["worker_rss_mb"]]
    report = {
        "images": len(images), "image_source": source, "warmup_requests": args.warmup, **result,
        "worker_rss_mb": {"after_load": rss_loaded, "start": rss_start, "end": rss_end,
                          "growth": round(rss_end - rss_start, 1) if rss_start and rss_end else None,
                          "min_during": min(series, default=None), "max_during": max(series, default=None)},
        "frontend_rss_mb": {"start": fe_start, "end": fe_end},
        # This machine is shared: the load average says how much of it the run had.
        "load_average_1_5_15_min_at_end": [round(x, 2) for x in __import__("os").getloadavg()],
        "cpu_count": __import__("os").cpu_count(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "rss_series"}, indent=2))
    return 0 if report["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
