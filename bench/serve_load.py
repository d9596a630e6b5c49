"""Serving speed, side by side: `python -m bench.serve_load` (make bench-serve) -> reports/bench_serve.{json,png}.

A closed-loop load generator: C client threads (C = 1, 8, 32), each with one keep-alive HTTP
connection, send the real test JPEGs (the same bytes to every server: `--request multipart`, the
default, as an upload form's field `file`; `--request raw`, as the request body) one request after
the other, for a bounded time and request count, on loopback only. All servers are started first;
then, per level, each gets `--rounds` windows in turn (rotating order), so load from other jobs on a
shared machine falls on every server alike. Servers:
  baseline          bench/baselines/fastapi_app.py (FastAPI + uvicorn, one eager forward per request),
                    on the same weights and preprocessing as ours: the same-weights reference;
  baseline-t1       the same app with torch.set_num_threads(1): a tuned reference (--baseline-threads);
  baseline-pool     the same app running decode + forward in its thread pool, as a `def` endpoint
                    does (--baseline-pool);
  baseline-seed     bench/baselines/seed_app.py: the common single-file app (UploadFile, torchvision
                    transforms at 192 px, the seed's ResNN with random weights); multipart only;
  ts-<variant>      our TorchServe on hotdog.mar built with that variant's model-config.yaml
                    (runtime, threads, batchSize, maxBatchDelay, workers), free ports, own workdir;
                    ts-default is what `make serve` starts, ts-eager what `make mar-eager` packs.
Per server and C: req/s, p50/p90/p99 latency, errors, the server processes' CPU time (psutil,
frontend + workers), served accuracy and label agreement with the baseline per image, and the
ratio ours / baseline. The machine is shared (2 cores, other jobs): absolute numbers drift, the
ratios from one run are the result.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from handlers.hotdog_handler import HANDLER_OPTIONS  # noqa: E402  (keys that live under `handler:`)
from serving import server as ts_server  # noqa: E402
from serving.archive import EAGER_MODEL_CONFIG, MODEL_CONFIG, build_mar  # noqa: E402
from serving.config import ServeConfig  # noqa: E402
from bench.harness import free_ports  # noqa: E402
from training.data import DataError, data_split  # noqa: E402

BOUNDARY = "hotdogbenchboundary7e1c"
# How a JPEG travels. multipart: an upload form (what a FastAPI UploadFile endpoint expects, the headline);
# raw: the bytes as the body (TorchServe's documented `curl -T photo.jpg`); both servers accept both.
CONTENT_TYPES = {"multipart": f"multipart/form-data; boundary={BOUNDARY}", "raw": "image/jpeg"}

# name -> a whole model-config.yaml, or overrides of serve_config/model-config.eager.yaml (HANDLER_OPTIONS
# go under `handler:`; a `server` dict overrides serve_config/config.properties for that server only).


def config_as_overrides(path: Path) -> dict:
    """A whole model-config.yaml written as VARIANTS write overrides (its `handler:` keys at the top)."""
    cfg = yaml.safe_load(path.read_text())
    return {**{k: v for k, v in cfg.items() if k != "handler"}, **(cfg.get("handler") or {})}


# Two single-threaded int8 workers: the base every int8 sweep row varies.
INT8_W2T1 = {"runtime": "executorch_int8", "minWorkers": 2, "maxWorkers": 2, "threads": 1}
DRAFT_INT8 = {**INT8_W2T1, "maxBatchDelay": 1, "jpeg_draft": True}
VARIANTS = {
    "default": MODEL_CONFIG,  # serve_config/model-config.yaml as it is (what `make mar` / `make serve` use)
    "eager": EAGER_MODEL_CONFIG,  # serve_config/model-config.eager.yaml as it is (`make mar-eager`)
    # the eager archive as `make mar` built it before: 1 worker of torch's default threads, 50 ms window
    "eager-d50": {"minWorkers": 1, "maxWorkers": 1, "maxBatchDelay": 50, "threads": 0},
    "eager-w2t1": {"minWorkers": 2, "maxWorkers": 2, "threads": 1},
    "executorch": {"runtime": "executorch"},
    "int8": {"runtime": "executorch_int8"},
    "int8-w2t1": INT8_W2T1,
    "int8-w2t1-b8d5": {**INT8_W2T1, "maxBatchDelay": 5},
    "int8-w1t2-b8d5": {"runtime": "executorch_int8", "threads": 2, "maxBatchDelay": 5},
    "int8-w2t1-b4d5": {**INT8_W2T1, "batchSize": 4, "maxBatchDelay": 5},
    "int8-w2t1-b16d10": {**INT8_W2T1, "batchSize": 16, "maxBatchDelay": 10},
    "int8-w2t1-b8d1": {**INT8_W2T1, "maxBatchDelay": 1},
    "int8-w2t1-b4d2": {**INT8_W2T1, "batchSize": 4, "maxBatchDelay": 2},
    "int8-w2t1-b8d1-draft": DRAFT_INT8,
    "int8-w2t1-b4d1-draft": {**DRAFT_INT8, "batchSize": 4},
    "int8-w2t1-b4d0-draft": {**DRAFT_INT8, "batchSize": 4, "maxBatchDelay": 0},
    "int8-w2t1-b8d0-draft": {**DRAFT_INT8, "maxBatchDelay": 0},
    "int8-w1t2-b8d1-draft": {**DRAFT_INT8, "minWorkers": 1, "maxWorkers": 1, "threads": 2},
    # two threads in each of the two workers: a lone request (C=1) gets both cores, at C=8 they oversubscribe
    "int8-w2t2-b8d1-draft": {**DRAFT_INT8, "threads": 2},
    "int8-w2t1-b8d3-draft": {**DRAFT_INT8, "maxBatchDelay": 3},
    # no batching: no 1 ms wait for company (TorchServe reads a delay of 0 as "unset": 100 ms)
    "int8-w2t1-b1-draft": {**DRAFT_INT8, "batchSize": 1},
    # the default config with one server setting changed
    "default-serialgc": {**config_as_overrides(MODEL_CONFIG), "server": {"vmargs": "-XX:+UseSerialGC"}},
    # one Netty event-loop thread for clients and one for the workers (default: 2 per core each)
    "default-netty1": {**config_as_overrides(MODEL_CONFIG),
                        "server": {"number_of_netty_threads": "1", "netty_client_threads": "1"}},
    "default-quiet": {**config_as_overrides(MODEL_CONFIG),
                       "server": {"async_logging": "true", "disable_system_metrics": "true"}},
    "int8-w3t1-b8d1": {**INT8_W2T1, "minWorkers": 3, "maxWorkers": 3, "maxBatchDelay": 1},
    "int8-w3t1-b8d5": {**INT8_W2T1, "minWorkers": 3, "maxWorkers": 3, "maxBatchDelay": 5},
    "eager-w2t1-b8d5": {"minWorkers": 2, "maxWorkers": 2, "threads": 1, "maxBatchDelay": 5},
    "compile": {"runtime": "compile", "threads": 1},
    "compile-w2t1-b8d5": {"runtime": "compile", "minWorkers": 2, "maxWorkers": 2, "threads": 1, "maxBatchDelay": 5},
}
DEFAULT_VARIANTS = ["default", "eager"]


def load_images(data: Path, limit: int | None, request: str = "multipart") -> list[tuple[str, str, bytes]]:
    """(relative path, true label, request body) for the test JPEGs, interleaved by class."""
    by_class = {d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
                for d in sorted(Path(data).iterdir()) if d.is_dir()}
    rows = []
    for i in range(max(map(len, by_class.values()))):
        for label, files in by_class.items():
            if i < len(files):
                rows.append((f"{label}/{files[i].name}", label, files[i].read_bytes()))
    rows = rows[:limit] if limit else rows
    return [(rel, label, multipart(raw) if request == "multipart" else raw) for rel, label, raw in rows]


def multipart(raw: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"img.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + raw + f"\r\n--{BOUNDARY}--\r\n".encode()


# --- servers --------------------------------------------------------------------------------------

class Target:
    name: str
    host: str
    port: int
    path: str
    headers: dict
    pid: int

    def cpu_seconds(self) -> tuple[float, float]:
        """user+system CPU of the server's root process and of its children (TorchServe: the Java
        frontend and the Python workers); children that already exited are not counted."""
        try:
            root = psutil.Process(self.pid)
            children = root.children(recursive=True)
        except psutil.NoSuchProcess:
            return 0.0, 0.0

        def cpu(p):
            try:
                t = p.cpu_times()
                return t.user + t.system
            except psutil.NoSuchProcess:
                return 0.0
        return cpu(root), sum(map(cpu, children))


class Baseline(Target):
    def __init__(self, weights: Path, workdir: Path, threads: int = 0, threadpool: bool = False, seed: bool = False):
        self.host, self.port, self.path = "127.0.0.1", free_ports(1)[0], "/predict"
        if seed:
            self.name = "baseline-seed"
            cmd = ["bench.baselines.seed_app", "--weights", str(weights), "--port", str(self.port)]
        else:
            self.name = "baseline" + (f"-t{threads}" if threads else "") + ("-pool" if threadpool else "")
            cmd = ["bench.baselines.fastapi_app", "--weights", str(weights), "--port", str(self.port),
                   "--threads", str(threads), *(["--threadpool"] if threadpool else [])]
        self.headers = {}
        self.log = open(workdir / f"{self.name}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", *cmd],
                                     cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"baseline exited ({self.proc.returncode}); see {self.log.name}")
            try:
                c = http.client.HTTPConnection(self.host, self.port, timeout=2)
                c.request("GET", "/ping")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("baseline did not answer /ping in 120 s")
            time.sleep(0.3)

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.log.close()


def variant_model_config(overrides: dict | Path) -> dict:
    if isinstance(overrides, Path):  # a whole model-config.yaml
        return yaml.safe_load(overrides.read_text())
    cfg = yaml.safe_load(EAGER_MODEL_CONFIG.read_text())
    handler = dict(cfg.get("handler") or {})
    for key, value in overrides.items():
        if key == "server":
            continue
        if key in HANDLER_OPTIONS:
            handler[key] = value
        else:
            cfg[key] = value
    cfg["handler"] = handler
    return cfg


def build_variant_mar(weights: Path, store: Path, overrides: dict, name: str = "hotdog") -> Path:
    store.mkdir(parents=True, exist_ok=True)
    cfg_path = store / f"{name}-model-config.yaml"
    cfg = variant_model_config(overrides)
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return build_mar(weights, store, name, cfg_path)


class TorchServe(Target):
    def __init__(self, name: str, overrides: dict, weights: Path, base: Path):
        self.name = f"ts-{name}"
        base = base / self.name
        self.workdir, self.tmpdir = base / "work", base / "tmp"
        self.workdir.mkdir(parents=True)
        mar = build_variant_mar(weights, base / "store", overrides)
        cfg = ServeConfig.load()
        self.server_options = {} if isinstance(overrides, Path) else overrides.get("server", {})
        cfg = cfg.write_copy(base / "config.properties", dict(zip(cfg.listen_ports(), free_ports(5))),
                             **self.server_options)
        self.srv = ts_server.start(cfg, self.workdir, self.tmpdir, mar, timeout=300)
        url = cfg.inference_url.split("//", 1)[1]
        self.host, self.port = url.rsplit(":", 1)[0], int(url.rsplit(":", 1)[1])
        self.path = "/predictions/hotdog"
        self.headers = self.srv.inference_headers()
        self.pid = self.srv.pid
        self.config = variant_model_config(overrides)

    def stop(self):
        ts_server.stop(self.workdir, self.tmpdir)


# --- load -----------------------------------------------------------------------------------------

def run_level(target: Target, images, concurrency: int, duration: float, max_requests: int,
              warmup: int, request: str = "multipart") -> dict:
    """Closed loop: `concurrency` threads, each sends its next image as soon as its answer arrives."""
    headers = {**target.headers, "Content-Type": CONTENT_TYPES[request]}
    lock = threading.Lock()
    state = {"next": 0, "sent": 0, "warm": 0}
    window_open = threading.Event()
    latencies, errors, answers = [], [], {}
    stop_at = [0.0]

    def take():
        with lock:
            if state.get("closed") or state["sent"] >= max_requests + warmup or (stop_at[0] and time.perf_counter() > stop_at[0]):
                return None
            i = state["next"] % len(images)
            state["next"] += 1
            state["sent"] += 1
            return i, state["sent"] <= warmup

    def worker():
        conn = http.client.HTTPConnection(target.host, target.port, timeout=60)
        while (job := take()) is not None:
            i, is_warmup = job
            if not is_warmup and not window_open.is_set():
                window_open.wait()  # counted requests start together, when the clock does
                conn.close()  # idle while waiting: the server may have dropped the keep-alive (uvicorn: 5 s)
            rel, _, body = images[i]
            t0 = time.perf_counter()
            try:
                conn.request("POST", target.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                conn = http.client.HTTPConnection(target.host, target.port, timeout=60)
                status, data = f"{type(e).__name__}", b""
            dt = time.perf_counter() - t0
            if is_warmup:
                with lock:
                    state["warm"] += 1
                continue
            with lock:
                if state.get("closed"):
                    break
                if status == 200:
                    try:  # an answer without a label is an error, not a fast success
                        answers[rel] = json.loads(data)["label"]
                        latencies.append(dt)
                    except (ValueError, KeyError, TypeError):
                        errors.append("bad json")
                else:
                    errors.append(str(status))
        conn.close()

    # Warm-up requests (not counted) go first, from the same threads, then the clock starts.
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    # The window opens when every warm-up request is answered, not just sent: on a loaded machine a
    # slow warm-up would otherwise eat the whole window.
    while True:
        with lock:
            if state["warm"] >= warmup or not any(t.is_alive() for t in threads):
                break
        time.sleep(0.005)
    cpu0, client0, t0 = target.cpu_seconds(), time.process_time(), time.perf_counter()
    stop_at[0] = t0 + duration
    window_open.set()
    # Bounded: requests still unanswered `grace` seconds after the window count as timeouts (a server
    # that collapses under load must not stall the run); their threads finish on their own.
    grace = max(30.0, duration)  # generous: a loaded machine must not turn slow answers into errors
    for t in threads:
        t.join(max(0.0, stop_at[0] + grace - time.perf_counter()))
    with lock:
        stuck = sum(t.is_alive() for t in threads)
        errors.extend(["timeout (unanswered at window end + grace)"] * stuck)
        state["closed"] = True  # the stuck threads record and send nothing more
    elapsed = time.perf_counter() - t0
    root_cpu, children_cpu = (after - before for after, before in zip(target.cpu_seconds(), cpu0))
    client_cpu = time.process_time() - client0
    return {"latencies": latencies, "errors": errors, "answers": answers, "seconds": elapsed,
            "server_cpu_s": root_cpu + children_cpu, "server_root_cpu_s": root_cpu, "client_cpu_s": client_cpu}


def merge_windows(concurrency: int, windows: list[dict]) -> dict:
    """One level's result from its measurement windows (interleaved with the other servers' windows)."""
    lat = sorted(x for w in windows for x in w["latencies"])
    errors = [e for w in windows for e in w["errors"]]
    answers = {}
    for w in windows:
        answers.update(w["answers"])
    elapsed = sum(w["seconds"] for w in windows)
    cpu = sum(w["server_cpu_s"] for w in windows)
    root_cpu = sum(w["server_root_cpu_s"] for w in windows)
    client_cpu = sum(w["client_cpu_s"] for w in windows)
    pct = (lambda q: round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else None)
    return {
        "concurrency": concurrency, "requests": len(lat) + len(errors), "ok": len(lat), "errors": len(errors),
        "error_kinds": sorted(set(errors))[:5], "seconds": round(elapsed, 3), "windows": len(windows),
        "req_per_s": round(len(lat) / elapsed, 2) if elapsed else 0.0,
        "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
        "mean_ms": round(1000 * statistics.fmean(lat), 3) if lat else None,
        "server_cpu_s": round(cpu, 3), "server_cores_used": round(cpu / elapsed, 3) if elapsed else None,
        "server_cpu_ms_per_req": round(1000 * cpu / len(lat), 3) if lat else None,
        # The root process: TorchServe's Java frontend (its workers are the rest); all of the baseline.
        "server_root_cpu_ms_per_req": round(1000 * root_cpu / len(lat), 3) if lat else None,
        "client_cores_used": round(client_cpu / elapsed, 3) if elapsed else None,
        "answers": answers,
    }


def run_all(targets: list, images, levels, duration, max_requests, warmup, rounds, log,
            request: str = "multipart") -> dict:
    """Every level: `rounds` rounds, each giving every server one window of duration/rounds seconds,
    in an order that rotates per round, so background load on a shared machine hits all servers alike."""
    out = {t.name: {} for t in targets}
    for c in levels:
        windows = {t.name: [] for t in targets}
        for r in range(rounds):
            k = r % len(targets)
            for t in targets[k:] + targets[:k]:
                windows[t.name].append(run_level(t, images, c, duration / rounds, max(1, max_requests // rounds),
                                                 max(warmup, 2 * c) if r == 0 else c, request))
        for t in targets:
            res = merge_windows(c, windows[t.name])
            log(f"  {t.name:>22} C={c:<3} {res['req_per_s']:7.1f} req/s  p50 {res['p50_ms'] or 0:6.1f} ms  "
                f"p99 {res['p99_ms'] or 0:6.1f} ms  errors {res['errors']}  server CPU {res['server_cores_used']} cores")
            out[t.name][str(c)] = res
    return out


def summarize_answers(levels: dict, truth: dict, reference: dict | None) -> dict:
    answers = {}
    for r in levels.values():
        answers.update(r.pop("answers"))
    n = len(answers)
    out = {"images_answered": n,
           "served_accuracy": round(sum(answers[k] == truth[k] for k in answers) / n, 4) if n else None}
    if reference is not None:
        common = [k for k in answers if k in reference]
        out["agreement_with_baseline"] = (round(sum(answers[k] == reference[k] for k in common) / len(common), 4)
                                          if common else None)
        out["compared_images"] = len(common)
    return out, answers


def goals(ours: dict, baseline: dict, levels: list[int]) -> dict:
    """Issue 28's goals for the default server against the same-weights baseline, as measured here."""
    out = {}
    if 8 in levels:
        ratio = ours["ratio_vs_baseline"]["8"]["req_per_s"]
        out["req_per_s_at_c8_vs_baseline"] = {"goal": ">= 4x", "measured": ratio, "met": bool(ratio and ratio >= 4)}
    if 1 in levels:
        mine, theirs = ours["levels"]["1"]["p50_ms"], baseline["levels"]["1"]["p50_ms"]
        out["p50_at_c1_ms"] = {"goal": "<= baseline", "measured": mine, "baseline": theirs,
                               "met": bool(mine and theirs and mine <= theirs)}
    # The baseline serves the eager fp32 model on the same images: its accuracy is fp32 eager's.
    mine, theirs = ours["served_accuracy"], baseline["served_accuracy"]
    if mine is not None and theirs is not None:
        out["served_accuracy_vs_fp32_eager"] = {"goal": "within 0.5 pt", "measured": mine, "fp32_eager": theirs,
                                                "met": abs(mine - theirs) <= 0.005}
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["servers"])
    levels = report["levels"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        res = report["servers"][name]["levels"]
        xs = [i + k * width for i in range(len(levels))]
        axes[0].bar(xs, [res[str(c)]["req_per_s"] for c in levels], width, label=name)
        axes[1].bar(xs, [res[str(c)]["p50_ms"] or 0 for c in levels], width, label=name)
    for ax, title in zip(axes, ("throughput (req/s, higher is better)", "p50 latency (ms, lower is better)")):
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(levels))], [f"C={c}" for c in levels])
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"hotdog serving, side by side on {report['machine']['cpu_count']} shared CPU cores "
                 f"(one run; compare ratios, not absolutes)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(REPO / "weights"))
    parser.add_argument("--data", help="(default: <data home>/hotdog/test)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"TorchServe variants, comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--baseline-threads", type=int, default=1,
                        help="also run the baseline with torch.set_num_threads(N) as a tuned reference (0: skip)")
    parser.add_argument("--baseline-pool", action="store_true",
                        help="also run the baseline with decode + forward in its thread pool (a `def` endpoint)")
    parser.add_argument("--no-baseline-seed", dest="baseline_seed", action="store_false",
                        help="skip the seed-style single-file app (it takes multipart uploads only)")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per level (upper bound)")
    parser.add_argument("--max-requests", type=int, default=20000,
                        help="requests per level (upper bound; high enough that duration ends every window)")
    parser.add_argument("--rounds", type=int, default=6,
                        help="windows per server and level, interleaved across servers (duration is split)")
    parser.add_argument("--warmup", type=int, default=200, help="uncounted requests before each level")
    parser.add_argument("--images", type=int, default=0, help="use only the first N test images (0: all)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: levels 1,8, 2 s / 40 requests each, 16 images")
    parser.add_argument("--request", choices=sorted(CONTENT_TYPES), default="multipart",
                        help="how the JPEG is sent, to every server alike")
    parser.add_argument("--out", default=str(REPO / "reports" / "bench_serve.json"))
    args = parser.parse_args(argv)
    # SIGTERM (timeout, kill) unwinds like Ctrl-C, so the servers started below are stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if args.quick:
        args.levels, args.duration, args.max_requests, args.warmup, args.images = "1,8", 2.0, 40, 4, 16
        args.baseline_threads, args.rounds = 0, 1
    levels = [int(c) for c in args.levels.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    try:
        args.data = args.data or data_split("test")
    except DataError as e:
        parser.exit(2, f"error: {e}\n")
    images = load_images(Path(args.data), args.images or None, args.request)
    if not images:
        parser.error(f"no JPEGs under {args.data}")
    truth = {rel: label for rel, label, _ in images}
    weights = Path(args.weights)
    log = lambda s: print(s, flush=True)  # noqa: E731
    report = {
        "what": "closed-loop HTTP load, loopback, real test JPEGs, one server at a time",
        "request": {"format": args.request, "content_type": CONTENT_TYPES[args.request]},
        "note": ("2 shared CPU cores (a training benchmark and other jobs run beside it): absolute req/s "
                 "drift from run to run; the ratios ours/baseline measured in this one run are the result"),
        "levels": levels, "duration_s": args.duration, "rounds": args.rounds, "max_requests": args.max_requests, "warmup": args.warmup,
        "images": len(images), "data": os.path.relpath(args.data, REPO),
        "machine": {"cpu_count": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                    "loadavg_before": os.getloadavg()},
        "servers": {},
    }
    with tempfile.TemporaryDirectory(prefix="hotdog-bench-") as tmp:
        tmp = Path(tmp)
        baselines = [{}] + ([{"threads": args.baseline_threads}] if args.baseline_threads else [])
        baselines += [{"threadpool": True}] if args.baseline_pool else []
        baselines += [{"seed": True}] if args.baseline_seed and args.request == "multipart" else []
        targets = []
        try:  # all up at once; an idle server costs next to no CPU
            for options in baselines:
                targets.append(Baseline(weights, tmp, **options))
                log(f"{targets[-1].name}: started")
            for variant in variants:
                log(f"{variant}: starting")
                targets.append(TorchServe(variant, VARIANTS[variant], weights, tmp))
            results = run_all(targets, images, levels, args.duration, args.max_requests, args.warmup,
                              args.rounds, log, args.request)
        finally:
            for target in targets:
                target.stop()
        reference = None
        for target in targets:
            summary, answers = summarize_answers(results[target.name], truth, reference)
            if target.name == "baseline":
                reference = answers
            entry = {"levels": results[target.name], **summary}
            if target.name == "baseline-seed":  # random weights: its answers measure speed only
                entry = {"levels": entry["levels"], "weights": "random (the seed's ResNN at 192 px, untrained)"}
            if isinstance(target, TorchServe):
                entry["model_config"] = target.config
                if target.server_options:
                    entry["config_properties_overrides"] = target.server_options
            report["servers"][target.name] = entry
    def ratios(entry, base):
        return {str(c): {"req_per_s": round(entry["levels"][str(c)]["req_per_s"] / base[str(c)]["req_per_s"], 3)
                         if base[str(c)]["req_per_s"] else None,
                         "p50": round(entry["levels"][str(c)]["p50_ms"] / base[str(c)]["p50_ms"], 3)
                         if base[str(c)]["p50_ms"] and entry["levels"][str(c)]["p50_ms"] else None}
                for c in levels}

    servers = report["servers"]
    references = [n for n in servers if n.startswith("baseline")]  # "baseline" first: the headline
    for name, entry in servers.items():
        if name not in references:
            entry.update({f"ratio_vs_{ref}": ratios(entry, servers[ref]["levels"]) for ref in references})
    if "ts-default" in servers and "baseline" in servers:
        report["goals"] = goals(servers["ts-default"], servers["baseline"], levels)
    report["machine"]["loadavg_after"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, out.with_suffix(".png"))
    log(f"wrote {out} and {out.with_suffix('.png')}")
    for name, entry in report["servers"].items():
        if "ratio_vs_baseline" in entry:
            r = entry["ratio_vs_baseline"]
            log(f"  {name}: " + "  ".join(f"C={c} {r[str(c)]['req_per_s']}x req/s, p50 x{r[str(c)]['p50']}"
                                          for c in levels) + f"  accuracy {entry['served_accuracy']}"
                f" agreement {entry.get('agreement_with_baseline')}")
    for name, goal in report.get("goals", {}).items():
        log(f"  goal {name}: {goal['goal']}, measured {goal['measured']}: {'met' if goal['met'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
