"""A real TorchServe serving model_store/hotdog.mar (session fixture `torchserve` in conftest.py).

Answers are compared with bench.parity.offline_predictor: what the default archive's model-config
serves (its runtime, the int8 .pte by the ExecuTorch runtime, and its decode), computed in this process."""
import base64
import json
import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import requests
import torch

import imagegen
from conftest import REPO, SAMPLE, serve_config_copy
from model_src.bundle import load_bundle
from bench import parity
from bench.reports import repo_relative
from serving import grpc_client, server
from serving.config import MAR, read_keys
from training.evaluate import predict_files

SAMPLES = sorted(SAMPLE.glob("*/*.jpg"))


@pytest.fixture(scope="module")
def eager():
    model, spec, manifest = load_bundle(REPO / "weights")
    return model, spec, manifest


@pytest.fixture(scope="module")
def offline():
    """(decode, forward) of the default archive's runtime, without TorchServe."""
    _, decode, forward = parity.offline_predictor(REPO / "weights")
    return decode, forward


def post(ts, data=None, content_type="application/octet-stream", headers=None, **kw):
    headers = {**ts.inference_headers(), "Content-Type": content_type, **(headers or {})}
    if "files" in kw or "json" in kw:
        headers.pop("Content-Type")
    return requests.post(f"{ts.cfg.inference_url}/predictions/hotdog", data=data, headers=headers,
                         timeout=60, **kw)


def expected_probs(eager, offline, data: bytes) -> dict:
    decode, forward = offline
    return dict(zip(eager[1].labels, forward([decode(data)])[0].tolist()))


def assert_prediction(body, probs: dict, eager):
    assert body["probabilities"] == pytest.approx(probs, abs=1e-4)  # answers carry 4 decimals
    label = max(probs, key=probs.get)
    assert body["label"] == label and body["is_hotdog"] == (label == "hot_dog")
    assert body["confidence"] == pytest.approx(probs[label], abs=1e-4)
    assert body["model_version"] == eager[2]["weights_sha256"][:12]


def concurrently(fn, items):
    """Call fn on every item at the same moment (threads released together), in order."""
    barrier = threading.Barrier(len(items))

    def run(item):
        barrier.wait()
        return fn(item)

    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(run, items))


def worker_pids(ts):
    r = requests.get(f"{ts.cfg.management_url}/models/hotdog", headers=ts.management_headers(), timeout=10)
    r.raise_for_status()
    return [w["pid"] for w in r.json()[0]["workers"]]


@pytest.mark.parametrize("fmt", list(imagegen.format_variants()))
def test_http_predicts_every_format(torchserve, eager, offline, fmt):
    data = imagegen.format_variants()[fmt]
    r = post(torchserve, data)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert_prediction(r.json(), expected_probs(eager, offline, data), eager)


def test_multipart_and_base64_json(torchserve, eager, offline):
    jpeg = SAMPLES[0].read_bytes()
    b64 = base64.b64encode(jpeg).decode()
    probs = expected_probs(eager, offline, jpeg)
    for r in (post(torchserve, files={"file": ("photo.jpg", jpeg, "image/jpeg")}),
              post(torchserve, json={"data": b64}),
              post(torchserve, json={"image": "data:image/jpeg;base64," + b64})):
        assert r.status_code == 200, r.text
        assert_prediction(r.json(), probs, eager)


def test_concurrent_batch_with_bad_items(torchserve, eager, offline):
    bad = imagegen.bad_inputs(eager[1].max_pixels)
    good = [p.read_bytes() for p in SAMPLES[:8]] * 3
    # Bad items in the middle of a burst large enough that, with the workers busy on its first requests
    # (a 1 ms batch window), the rest queue up and fill batches with good and bad items together.
    items = good[:12] + [data for data, _ in bad.values()] + good[12:]
    statuses = {data: status for data, status in bad.values()}
    pids = worker_pids(torchserve)
    for _attempt in range(5):
        responses = concurrently(lambda data: post(torchserve, data), items)
        mixed = False
        for data, r in zip(items, responses):
            body = r.json()
            if data in statuses:
                assert r.status_code == statuses[data], body
                assert body["status"] == statuses[data] and body["error"]
                # A batch with more requests than there are bad ones must have held good ones too.
                mixed |= int(r.headers["X-Batch-Size"]) > len(bad)
            else:
                assert r.status_code == 200, body
                assert_prediction(body, expected_probs(eager, offline, data), eager)
        if mixed:
            break
    assert mixed, "no bad item shared a batch with good ones in 5 concurrent bursts"
    # The worker survived and still answers.
    r = post(torchserve, good[0])
    assert r.status_code == 200 and worker_pids(torchserve) == pids


def test_served_equals_offline_evaluation(torchserve, eager, offline):
    """Served in batches (concurrent requests) == the same runtime offline, photo by photo; and the int8
    runtime's labels mostly agree with the eager fp32 model's (the accuracy gap: make bench-serve)."""
    model, spec, _ = eager
    probs_offline, kept, skipped = parity.offline_files(*offline, SAMPLES, spec.labels)
    assert kept == list(range(len(SAMPLES))) and not skipped
    fp32, _, _ = predict_files(model, spec, SAMPLES)
    assert (fp32.argmax(1) == probs_offline.argmax(1)).float().mean() >= 0.8
    responses = concurrently(lambda p: post(torchserve, p.read_bytes(), "image/jpeg"), SAMPLES)
    for path, r, probs in zip(SAMPLES, responses, probs_offline.tolist()):
        assert r.status_code == 200, (path, r.text)
        body = r.json()
        assert body["label"] == spec.labels[max(range(len(probs)), key=probs.__getitem__)]
        assert [body["probabilities"][c] for c in spec.labels] == pytest.approx(probs, abs=1e-4), path


def test_grpc_predict(torchserve, eager, offline):
    key = torchserve.keys["inference"]
    target = torchserve.cfg.grpc_inference_target
    jpeg = SAMPLES[-1].read_bytes()
    assert_prediction(grpc_client.predict_bytes(jpeg, target, key), expected_probs(eager, offline, jpeg), eager)
    # The gRPC API has no per-request status: the handler's error JSON is the answer.
    answer = grpc_client.predict_bytes(b"not an image", target, key)
    assert answer["status"] == 415 and "not an image" in answer["error"]
    with pytest.raises(grpc.RpcError) as no_key:
        grpc_client.predict_bytes(jpeg, target, "wrong-key")
    assert "Token Authorization failed" in no_key.value.details()


def test_parity_report_when_no_photo_is_served(torchserve, eager, tmp_path):
    """Not one image served (here none is readable) still writes the report: failed, with each reason."""
    _, spec, _ = eager
    for label in spec.labels:
        (tmp_path / "data" / label).mkdir(parents=True)
        (tmp_path / "data" / label / "broken.jpg").write_bytes(b"not a photo")
    out = tmp_path / "parity.json"
    done = parity.main(["--data", str(tmp_path / "data"), "--weights", str(REPO / "weights"), "--out", str(out),
                        "--config", str(torchserve.cfg.path), "--workdir", str(torchserve.workdir)])
    report = json.loads(out.read_text())
    assert done == 1 and report["pass"] is False and report["compared"] == 0
    assert report["max_abs_prob_diff"] is None and len(report["offline_skipped"]) == len(spec.labels)
    assert sorted(report["served_errors"]) == sorted(repo_relative(tmp_path / "data" / c / "broken.jpg") for c in spec.labels)
    assert all(error.startswith("HTTP 4") for error in report["served_errors"].values()), report["served_errors"]


def test_requests_without_the_token_are_refused(torchserve):
    jpeg = SAMPLES[0].read_bytes()
    url = f"{torchserve.cfg.inference_url}/predictions/hotdog"
    for headers in ({}, {"Authorization": "Bearer not-the-key"},
                    {"Authorization": f"Bearer {torchserve.keys['management']}"}):
        r = requests.post(url, data=jpeg, headers={"Content-Type": "image/jpeg", **headers}, timeout=30)
        # TorchServe 0.12 answers a failed token check with 400 (InvalidKeyException).
        assert r.status_code in (400, 401) and "Token Authorization failed" in r.json()["message"]
    r = requests.get(f"{torchserve.cfg.management_url}/models", timeout=30)
    assert r.status_code in (400, 401)


def test_model_registration_api_is_off(torchserve):
    mgmt, headers = torchserve.cfg.management_url, torchserve.management_headers()
    assert requests.post(f"{mgmt}/models", params={"url": "hotdog.mar", "model_name": "other"},
                         headers=headers, timeout=30).status_code == 405
    assert requests.delete(f"{mgmt}/models/hotdog", headers=headers, timeout=30).status_code == 405
    models = requests.get(f"{mgmt}/models", headers=headers, timeout=30).json()["models"]
    assert [m["modelName"] for m in models] == ["hotdog"]


def test_prometheus_shows_handler_metrics_and_batches(torchserve):
    concurrently(lambda p: post(torchserve, p.read_bytes()), SAMPLES[:8])
    text = requests.get(f"{torchserve.cfg.metrics_url}/metrics", timeout=30).text
    for name in ("HotdogDecodeMs", "HotdogPreprocessMs", "HotdogInferenceMs"):
        assert re.search(rf'^{name}{{ModelName="hotdog",.*}} [0-9.]+$', text, re.M), name

    def value(pattern):
        return float(re.search(rf'^HotdogBatchSize_{pattern}{{ModelName="hotdog".*}} ([0-9.]+)$', text, re.M)[1])

    count, total = value("count"), value("sum")
    single = float(re.search(r'^HotdogBatchSize_bucket{ModelName="hotdog".*le="1.0",} ([0-9.]+)$', text, re.M)[1])
    assert count > 0 and single < count and total > count  # some batches held more than one request


def metric_lines(ts, name: str) -> list[tuple[str, float]]:
    """(worker, seconds) of every `name` value the frontend read from a worker, from logs/ts_log.log."""
    lines = []
    for line in (ts.workdir / "logs" / "ts_log.log").read_text().splitlines():
        match = re.match(rf"\d{{4}}-\d\d-\d\dT(\d\d):(\d\d):(\d\d),(\d{{3}}) \[\w+ *\] (W-\d+)-\S*-stdout .*"
                         rf"\[METRICS\]{name}\.", line)
        if match:
            h, m, sec, ms, worker = match.groups()
            lines.append((worker, int(h) * 3600 + int(m) * 60 + int(sec) + int(ms) / 1000))
    return lines


def test_per_batch_log_lines_are_cut_to_the_batch_histogram(torchserve):
    """Gauges (ours and TorchServe's HandlerTime/PredictionTime) go out at most once a second per worker,
    TorchServe's per-batch "Backend received inference" line not at all; every batch is still counted."""
    gauges = ("HotdogDecodeMs", "HotdogInferenceMs", "HandlerTime", "PredictionTime")
    time.sleep(1.1)  # past every worker's gauge interval, so each worker's next batch logs its gauges
    before = {name: len(metric_lines(torchserve, name)) for name in (*gauges, "HotdogBatchSize")}
    for path in SAMPLES * 2:  # one request after the other: a batch each
        assert post(torchserve, path.read_bytes()).status_code == 200
    assert len(metric_lines(torchserve, "HotdogBatchSize")) - before["HotdogBatchSize"] == 2 * len(SAMPLES)
    for name in gauges:
        new = metric_lines(torchserve, name)[before[name]:]
        assert new, name
        for worker in {w for w, _ in new}:
            times = [t for w, t in new if w == worker]
            # 1 s apart in the worker; these are the frontend's read times, which a busy machine can
            # delay line by line, so the bound is loose (unthrottled gauges are ~0.03 s apart)
            assert all(b - a > 0.5 for a, b in zip(times, times[1:])), (name, times)
    model_log = (torchserve.workdir / "logs" / "model_log.log").read_text()
    assert "hotdog model" in model_log and "Backend received inference" not in model_log


def test_frontend_logs_each_line_once_and_no_debug(torchserve):
    """serve_config/log4j2.xml: TorchServe's built-in config wrote every frontend line to ts_log.log twice
    (and DEBUG lines for every request); ours writes each once, at INFO and above."""
    concurrently(lambda p: post(torchserve, p.read_bytes()), SAMPLES[:4])
    lines = (torchserve.workdir / "logs" / "ts_log.log").read_text().splitlines()
    answered = [line for line in lines if "Sending response for jobId" in line]
    assert answered and len(answered) == len(set(answered))  # job ids are unique: a repeat is a duplicate
    assert not [line for line in lines if " [DEBUG] " in line]
    access = (torchserve.workdir / "logs" / "access_log.log").read_text()
    assert access.count('"POST /predictions/hotdog HTTP/1.1" 200') >= 4
    assert "ACCESS_LOG" not in "\n".join(lines)  # the access log has its own file


def run_make(*args, env=None):
    return subprocess.run(["make", "-s", "-C", str(REPO), *args], capture_output=True, text=True, timeout=300,
                          env=env)


def test_make_serve_and_stop(tmp_path):
    cfg = serve_config_copy(tmp_path)
    where = [f"SERVE_CONFIG={cfg.path}", f"SERVE_WORKDIR={tmp_path / 'work'}", f"SERVE_TMPDIR={tmp_path / 'tmp'}"]
    (tmp_path / "work").mkdir()
    host, port = cfg.listen_ports()["gRPC inference"]
    import socket

    try:  # from the first `make serve` on: a regression that starts a server must not leak it
        with socket.socket() as squatter:
            squatter.bind((host, port))
            squatter.listen()
            done = run_make("serve", *where)
            assert done.returncode != 0
            assert f"port already in use: {port} (gRPC inference" in done.stderr
            assert not (tmp_path / "tmp" / server.PID_FILE).exists()
        done = run_make("serve", *where)
        assert done.returncode == 0, done.stderr
        assert "READY" in done.stdout and '"label": ' in done.stdout
        pid = int((tmp_path / "tmp" / server.PID_FILE).read_text())
        assert read_keys(tmp_path / "work")["inference"]
        again = run_make("serve", *where)  # ours is up and healthy: said so, answered, exit 0
        assert again.returncode == 0, again.stderr
        assert "already up" in again.stdout and '"label": ' in again.stdout
        assert int((tmp_path / "tmp" / server.PID_FILE).read_text()) == pid
    finally:
        stopped = run_make("stop", *where)
    assert stopped.returncode == 0 and "TorchServe stopped." in stopped.stdout
    assert not server._pid_alive(pid) and not (tmp_path / "work" / "key_file.json").exists()
    assert "not running" in run_make("stop", *where).stdout


def test_missing_java_is_a_clear_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = str(tmp_path)  # no java on it
    cfg = serve_config_copy(tmp_path)
    done = subprocess.run([sys.executable, "-m", "serving.server", "start", "--config", str(cfg.path),
                           "--workdir", str(tmp_path), "--tmpdir", str(tmp_path / "tmp"), "--mar", str(MAR)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Java not found" in done.stderr and "Java 17" in done.stderr
    env["JAVA_HOME"] = str(tmp_path / "no-such-jdk")
    done = subprocess.run([sys.executable, "-m", "serving.server", "start", "--config", str(cfg.path),
                           "--workdir", str(tmp_path), "--tmpdir", str(tmp_path / "tmp")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "JAVA_HOME" in done.stderr
