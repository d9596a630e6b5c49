"""The handler's runtimes (model-config.yaml `handler: {runtime, threads}`) on a real TorchServe, and the
side-by-side load generator in --quick mode. No timing is asserted: speed is measured by `make bench-serve`.

Each runtime test builds an archive with that runtime (the shipped .pte files of exported/), serves the
sample photos to it, several at once so they share a batch, and compares every answer with the eager
fp32 model offline. The stale-program tests change a copy of exported/ or of hotdog.mar, never the
shipped files.
"""
import hashlib
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch
import yaml

from conftest import REPO, SAMPLE, logs_of_a_failed_load, serve_config_copy
from helpers import rewritten_mar
from bench import serve_load
from bench.harness import private_server
from model_src.bundle import load_bundle, sha256_file
from model_src.preprocess import bytes_to_tensor, decode_image, image_to_tensor
from serving import server
from serving.archive import MODEL_CONFIG

SAMPLES = sorted(SAMPLE.glob("*/*.jpg"))
SHIPPED_STARTUP_S = yaml.safe_load(MODEL_CONFIG.read_text())["startupTimeout"]


@pytest.fixture(scope="module")
def eager_probs():
    model, spec, manifest = load_bundle(REPO / "weights")
    out = {}
    with torch.no_grad():
        for path in SAMPLES:
            out[path.name + path.parent.name] = torch.softmax(model(bytes_to_tensor(path.read_bytes(), spec)[None]),
                                                              dim=1)[0].tolist()
    return spec.labels, out


def serve_all(tmp_path, overrides: dict, timeout: float = 180):
    """Answers of a TorchServe running an archive with these model-config overrides, and its model log."""
    store = tmp_path / "store"
    mar = serve_load.build_variant_mar(REPO / "weights", store, overrides)
    with private_server(mar, base=tmp_path, timeout=timeout) as srv:
        url = f"{srv.cfg.inference_url}/predictions/hotdog"

        def ask(path):
            r = requests.post(url, data=path.read_bytes(), timeout=60,
                              headers={**srv.inference_headers(), "Content-Type": "image/jpeg"})
            assert r.status_code == 200, r.text
            return path.name + path.parent.name, r.json(), int(r.headers["X-Batch-Size"])

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(ask, SAMPLES))
        log = "\n".join(p.read_text(errors="replace") for p in (srv.workdir / "logs").glob("model_log*.log"))
    return answers, log


@pytest.mark.parametrize("runtime,max_diff,min_agreement,startup_s", [
    # the phone's fp32 program: the same computation up to float rounding
    ("executorch", 1e-4, 1.0, SHIPPED_STARTUP_S),
    # PT2E int8: test-split accuracy equal to fp32 (reports/mobile_parity.json)
    ("executorch_int8", 0.1, 0.8, SHIPPED_STARTUP_S),
    # inductor: the same computation; the worker compiles before it reports ready (minutes on 2 cores)
    ("compile", 1e-4, 1.0, 900),
])
def test_runtime_agrees_with_eager(tmp_path, eager_probs, runtime, max_diff, min_agreement, startup_s):
    labels, expected = eager_probs
    answers, log = serve_all(tmp_path, {"runtime": runtime, "threads": 1, "maxBatchDelay": 20,
                                        "startupTimeout": startup_s}, timeout=startup_s + 60)
    # Really that runtime, not a silent eager fallback.
    assert f"(runtime {runtime}, 1 threads, jpeg_draft False)" in log
    agree, worst = 0, 0.0
    for key, body, _ in answers:
        p = expected[key]
        got = [body["probabilities"][label] for label in labels]
        worst = max(worst, max(abs(a - b) for a, b in zip(got, p)))
        agree += body["label"] == labels[max(range(len(p)), key=p.__getitem__)]
        assert body["confidence"] == max(got) and sum(got) == pytest.approx(1, abs=1e-5)
    assert worst <= max_diff
    assert agree / len(answers) >= min_agreement
    assert max(batch for *_, batch in answers) > 1  # batched: several requests shared one execute()


def test_jpeg_draft_serves_what_a_draft_decode_gives(tmp_path):
    """`handler: {jpeg_draft: true}` decodes JPEGs at a reduced DCT scale: the served answers are those of
    the eager model on model_src's draft decode, and differ from the full decode's on the 512 px photos."""
    model, spec, _ = load_bundle(REPO / "weights")
    answers, log = serve_all(tmp_path, {"jpeg_draft": True, "maxBatchDelay": 20})
    assert "jpeg_draft True" in log
    by_key = {key: body for key, body, _ in answers}
    moved = 0
    with torch.no_grad():
        for path in SAMPLES:
            data = path.read_bytes()
            draft = image_to_tensor(decode_image(data, spec.max_pixels, draft_min_side=spec.resize_size), spec)
            expected = torch.softmax(model(draft[None]), dim=1)[0]
            got = torch.tensor([by_key[path.name + path.parent.name]["probabilities"][label] for label in spec.labels])
            assert torch.allclose(got, expected, atol=1e-4)
            moved += not torch.equal(draft, bytes_to_tensor(data, spec))
    assert moved >= 3  # the Kaggle photos (>= 2x resize_size) really took the reduced decode


@pytest.mark.parametrize("handler, message", [
    ({"jpeg_draft": "yes"}, "handler.jpeg_draft 'yes' in model-config.yaml: expected true or false"),
    ({"jpeg_drafts": True}, "unknown handler option(s) jpeg_drafts in model-config.yaml: expected runtime, "),
], ids=["wrong-value", "misspelt-key"])
def test_a_bad_handler_option_stops_the_model_loading(tmp_path, handler, message):
    """A wrong value or a misspelt key in model-config.yaml must fail loudly at load, not serve with a
    silently different decode."""
    cfg = yaml.safe_load(MODEL_CONFIG.read_text())
    cfg["handler"] = {**(cfg.get("handler") or {}), **handler}
    (tmp_path / "model-config.yaml").write_text(yaml.safe_dump(cfg))
    mar = serve_load.build_variant_mar(REPO / "weights", tmp_path / "store", tmp_path / "model-config.yaml")
    assert message in logs_of_a_failed_load(tmp_path, mar)


def test_bench_variants_named_after_the_default_config_are_that_config():
    shipped = serve_load.variant_model_config(MODEL_CONFIG)
    assert serve_load.variant_model_config(serve_load.VARIANTS["default"]) == shipped
    for name in ("default-serialgc", "default-quiet"):
        assert serve_load.variant_model_config(serve_load.VARIANTS[name]) == shipped
        assert serve_load.VARIANTS[name]["server"]  # and differ only in config.properties


@pytest.mark.parametrize("request_format", ["multipart", "raw"])
def test_bench_serve_quick(tmp_path, request_format):
    """`make bench-serve` end to end, tiny: the FastAPI baselines and our TorchServe (default and eager),
    with the JPEGs sent as an upload form and as the raw body (the form also to the thread-pool baseline
    and to the seed-style app, which takes uploads only)."""
    out = tmp_path / "bench.json"
    pool = request_format == "multipart"
    # The sample photos, not ../shared: the suite runs on a bare clone.
    done = subprocess.run([sys.executable, "-m", "bench.serve_load", "--quick", "--data", str(SAMPLE),
                           "--request", request_format, "--out", str(out), *(["--baseline-pool"] if pool else [])],
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["request"]["format"] == request_format
    assert set(report["servers"]) == {"baseline", "ts-default", "ts-eager",
                                      *(["baseline-pool", "baseline-seed"] if pool else [])}
    for name, entry in report["servers"].items():
        for c in ("1", "8"):
            level = entry["levels"][c]
            assert level["errors"] == 0 and level["ok"] > 0, (name, level)
            assert level["p50_ms"] <= level["p90_ms"] <= level["p99_ms"]
            assert level["server_cpu_s"] > 0
            assert 0 < level["server_root_cpu_ms_per_req"] <= level["server_cpu_ms_per_req"]
    assert report["servers"]["ts-eager"]["agreement_with_baseline"] == 1.0  # same weights, same eager fp32
    assert report["servers"]["ts-eager"]["ratio_vs_baseline"]["8"]["req_per_s"] > 0
    default = report["servers"]["ts-default"]
    assert default["model_config"]["handler"]["runtime"] == "executorch_int8"
    assert default["agreement_with_baseline"] >= 0.8  # int8 vs fp32 labels on 16 photos
    goals = report["goals"]
    assert goals["req_per_s_at_c8_vs_baseline"]["measured"] == default["ratio_vs_baseline"]["8"]["req_per_s"]
    assert goals["served_accuracy_vs_fp32_eager"]["fp32_eager"] == report["servers"]["baseline"]["served_accuracy"]
    if pool:
        seed = report["servers"]["baseline-seed"]
        assert "random" in seed["weights"] and "served_accuracy" not in seed  # speed only
        assert default["ratio_vs_baseline-seed"]["8"]["req_per_s"] > 0
        assert report["servers"]["baseline-pool"]["agreement_with_baseline"] == 1.0
        assert report["servers"]["ts-eager"]["ratio_vs_baseline-pool"]["8"]["req_per_s"] > 0
    assert out.with_suffix(".png").stat().st_size > 0


def test_bench_handler_times_the_shipped_archive_as_a_worker_loads_it(tmp_path):
    subprocess.run(["make", "-s", "mar"], cwd=REPO, check=True, capture_output=True, timeout=300)
    out = tmp_path / "handler_cost.json"
    done = subprocess.run([sys.executable, "-m", "bench.handler_cost", "--data", str(SAMPLE), "--batches", "1,4",
                           "--rounds", "2", "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["runtime"] == "executorch_int8" and report["worker_threads"] == 1 and report["jpeg_draft"]
    for batch, row in report["cpu_ms_per_request_by_batch"].items():
        assert row["requests"] == len(SAMPLES) - len(SAMPLES) % int(batch) == row["answered"]
        assert min(row["preprocess_ms"], row["inference_ms"], row["postprocess_ms"]) > 0
        steps = row["preprocess_ms"] + row["inference_ms"] + row["postprocess_ms"]
        assert row["total_ms"] == pytest.approx(steps + row["torchserve_python_ms"])


def test_make_mar_packs_the_shipped_int8_program_and_rebuilds_when_it_changes():
    """`make mar` is the int8 archive: serve_config/model-config.yaml runs executorch_int8 and the archive
    carries exported/'s int8 .pte; a new export (or new weights) makes it stale."""
    import zipfile

    assert yaml.safe_load(MODEL_CONFIG.read_text())["handler"]["runtime"] == "executorch_int8"
    database = subprocess.run(["make", "-pn", "-C", str(REPO), "--no-print-directory", "nothing"],
                              capture_output=True, text=True).stdout
    rule, = [line for line in database.splitlines() if line.startswith("model_store/hotdog.mar:")]
    prerequisites = rule.split(":", 1)[1].split("|")[0].split()
    assert {"weights/model.pt", "exported/hotdog.json", "exported/hotdog_xnnpack_int8.pte"} <= set(prerequisites)
    with zipfile.ZipFile(REPO / "model_store" / "hotdog.mar") as z:
        packed = set(z.namelist())
        assert yaml.safe_load(z.read("model-config.yaml"))["handler"]["runtime"] == "executorch_int8"
    assert {"hotdog_xnnpack_int8.pte", "hotdog.json"} <= packed


def _exported_copy(tmp_path):
    copy = tmp_path / "exported"
    shutil.copytree(REPO / "exported", copy)
    return copy, json.loads((copy / "hotdog.json").read_text())


def _build_mar(exported, tmp_path):
    return subprocess.run([sys.executable, "-m", "serving.archive", "--exported", str(exported),
                           "--store", str(tmp_path / "store")], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_make_mar_refuses_programs_from_other_weights_naming_both_hashes(tmp_path):
    exported, meta = _exported_copy(tmp_path)
    weights_sha = json.loads((REPO / "weights" / "manifest.json").read_text())["weights_sha256"]
    meta["source_weights"]["sha256"] = "ab" * 32
    (exported / "hotdog.json").write_text(json.dumps(meta))
    done = _build_mar(exported, tmp_path)
    assert done.returncode != 0 and not (tmp_path / "store" / "hotdog.mar").exists()
    error, = done.stderr.strip().splitlines()  # one line
    assert f"exported from weights sha256 {'ab' * 32}, but the weights are sha256 {weights_sha}" in error
    assert "make export" in error


def test_make_mar_refuses_a_changed_program_or_exporter_naming_both_hashes(tmp_path):
    from mobile_export.export import exporter_settings, settings_fingerprint

    exported, meta = _exported_copy(tmp_path)
    with open(exported / "hotdog_xnnpack_int8.pte", "ab") as f:
        f.write(b"\0")
    done = _build_mar(exported, tmp_path)
    recorded = meta["programs"]["xnnpack_int8"]["sha256"]
    error, = done.stderr.strip().splitlines()
    assert done.returncode != 0 and f"but hotdog.json records {recorded}" in error
    assert sha256_file(exported / "hotdog_xnnpack_int8.pte") in error

    exported, meta = _exported_copy(tmp_path / "again")
    meta["exporter"]["settings"]["max_batch"] = 16  # as if exported by other settings
    meta["exporter"]["fingerprint"] = settings_fingerprint(meta["exporter"]["settings"])
    (exported / "hotdog.json").write_text(json.dumps(meta))
    done = _build_mar(exported, tmp_path / "again")
    error, = done.stderr.strip().splitlines()
    assert done.returncode != 0 and "changed: max_batch" in error
    assert meta["exporter"]["fingerprint"] in error and settings_fingerprint(exporter_settings()) in error


def test_a_stale_program_inside_the_archive_is_refused_at_load_and_make_serve_fails(tmp_path):
    """The handler checks the packed .pte itself: an archive carrying another program never reaches
    READY, and `make serve` says why in one line and exits non-zero, well before the start-up timeout."""
    import time
    import zipfile

    mar = rewritten_mar(tmp_path / "store" / "hotdog.mar", "hotdog_xnnpack_int8.pte", lambda data: data + b"\0")
    with zipfile.ZipFile(mar) as z:
        tampered_sha = hashlib.sha256(z.read("hotdog_xnnpack_int8.pte")).hexdigest()
    recorded = json.loads((REPO / "exported" / "hotdog.json").read_text())["programs"]["xnnpack_int8"]["sha256"]
    cfg = serve_config_copy(tmp_path)
    (tmp_path / "work").mkdir()
    where = [f"SERVE_MAR={mar}", f"SERVE_CONFIG={cfg.path}", f"SERVE_WORKDIR={tmp_path / 'work'}",
             f"SERVE_TMPDIR={tmp_path / 'tmp'}"]
    start = time.monotonic()
    done = subprocess.run(["make", "-s", "-C", str(REPO), "serve", *where], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    assert time.monotonic() - start < SHIPPED_STARTUP_S  # it did not wait for a READY that never comes
    error = [line for line in done.stderr.splitlines() if "hotdog model refused:" in line]
    assert error and f"has sha256 {tampered_sha}, but hotdog.json records {recorded}" in error[0], done.stderr
    assert not server._read_pid(tmp_path / "tmp")  # nothing left running


def test_an_answer_without_a_label_is_an_error_not_a_success():
    """A server answering 200 with junk must not look fast: the load generator counts it once, as an error."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import os
    import threading

    class Junk(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "8")
            self.end_headers()
            self.wfile.write(b"not json")

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Junk)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        target = serve_load.Target()
        target.name, target.host, target.port, target.path = "junk", "127.0.0.1", httpd.server_port, "/"
        target.headers, target.pid = {}, os.getpid()
        images = serve_load.load_images(SAMPLE, limit=2, request="raw")
        level = serve_load.merge_windows(2, [serve_load.run_level(target, images, 2, duration=0.5,
                                                                  max_requests=20, warmup=2, request="raw")])
    finally:
        httpd.shutdown()
    assert level["requests"] > 0 and level["ok"] == 0 and level["errors"] == level["requests"]
    assert level["req_per_s"] == 0 and level["p50_ms"] is None
