"""The bad-input matrix: every odd thing a phone, a script or an attacker sends, against a real TorchServe.

`CASES` is the one table: what is sent, over which transport, and what must come back. `run_case`
sends a case together with two good photos at the same moment (so they share a batch), then checks
the answer, that the good photos are still answered correctly, and that the worker's pid did not
change. `python -m bench.bad_inputs` (make bad-input-report) runs every case over HTTP and gRPC on
a private server and writes reports/bad_inputs.json and reports/bad_inputs.md; tests/test_bad_inputs.py
runs the same table against the test session's server.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import re
import struct
import sys
import threading
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import requests
from PIL import Image

from bench.parity import TOLERANCE  # served vs eager probabilities on the same bytes
from model_src.bundle import read_manifest
from serving.config import MODEL_NAME, REPO

SAMPLE = REPO / "tests" / "data" / "sample"
MAX_REQUEST_SIZE = 20 * 1024 * 1024  # serve_config/config.properties: max_request_size
UPRIGHT_TOLERANCE = 0.03  # EXIF-rotated JPEG vs the upright JPEG: re-encoding moves p a little


# --- inputs --------------------------------------------------------------------------------------

def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def good_jpeg() -> bytes:
    """The good photo sent beside every case (a real hot dog JPEG)."""
    return sorted(SAMPLE.glob("hot_dog/*.jpg"))[0].read_bytes()


@lru_cache(maxsize=1)
def photo() -> Image.Image:
    """A real photo (not the companion one), upright RGB landscape, small enough to encode fast."""
    img = Image.open(sorted(SAMPLE.glob("not_hot_dog/*.jpg"))[0]).convert("RGB")
    img.thumbnail((320, 320))
    return img.crop((0, 0, img.width, img.width * 3 // 4))


def exif_rotated(fmt: str) -> bytes:
    """Stored sideways with EXIF Orientation=6, as phones save portrait shots."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(photo().transpose(Image.Transpose.ROTATE_90), fmt, exif=exif)


def png_alpha() -> bytes:
    rgba = photo().convert("RGBA")
    alpha = Image.new("L", rgba.size, 255)
    alpha.paste(0, (0, 0, rgba.width // 2, rgba.height))
    rgba.putalpha(alpha)
    return encode(rgba, "PNG")


def png16() -> bytes:
    """16-bit grayscale PNG (values spread over 0..65535, so a clipping conversion would show)."""
    gray = photo().convert("L")
    return encode(gray.point(lambda v: v * 257, "I").convert("I;16"), "PNG")


def gif() -> bytes:
    img = photo()
    return encode(img.quantize(256), "GIF", save_all=True,
                  append_images=[Image.eval(img, lambda v: 255 - v).quantize(256)], duration=100)


def resized(size: tuple[int, int]) -> Image.Image:
    return photo().resize(size, Image.BILINEAR)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@lru_cache(maxsize=None)
def png_bomb(side: int = 30000) -> bytes:
    """A side x side 1-bit PNG of zeros: ~100 kB on the wire, `side`² pixels once decoded."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))


def mpo() -> bytes:
    return encode(photo(), "MPO", save_all=True, append_images=[Image.new("RGB", photo().size)], quality=92)


def heic_header() -> bytes:
    """The start of an iPhone HEIC file (ISO-BMFF `ftyp` box, brand heic); no HEIC encoder is installed."""
    ftyp = b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heicmiaf"
    return struct.pack(">I", 4 + len(ftyp)) + ftyp + random.Random(1).randbytes(2000)


def zip_file() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("photo.jpg", good_jpeg())
    return buf.getvalue()


PDF = (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n2 0 obj << /Type /Pages /Kids [] "
       b"/Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")
SVG = (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="100" height="50">'
       b'<rect width="100" height="50" fill="red"/></svg>\n')
HTML = b"<!DOCTYPE html><html><body><img src='hotdog.jpg'></body></html>\n"


# --- the table -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    expect: str  # "answer": a prediction (200); "refuse": a 4xx whose JSON error matches `error`
    make: Callable[[], bytes]
    content_type: str | None = "application/octet-stream"  # None: no Content-Type header at all
    status: int = 200  # HTTP status that must come back
    error: str = ""  # regex the error text must match (refusals)
    grpc: tuple[int | str, str] | None = None  # gRPC: (handler status, error regex) or (RPC code, regex);
    #                                          None: same as HTTP; () below: not applicable over gRPC
    method: str = "POST"
    model: str = MODEL_NAME
    upright: Callable[[], bytes] | None = None  # the answer must match this upright image's answer
    reaches_handler: bool = True  # False: the frontend answers on its own (no batch to share)
    known_limit: str = ""  # an answer TorchServe's Java frontend gives that the handler cannot change
    note: str = ""


NOT_IMAGE = r"not an image"
CASES: list[Case] = [
    # Images that must get an answer.
    Case("jpeg", "answer", good_jpeg, "image/jpeg"),
    Case("grayscale_jpeg", "answer", lambda: encode(photo().convert("L"), "JPEG")),
    Case("cmyk_jpeg", "answer", lambda: encode(photo().convert("CMYK"), "JPEG")),
    Case("png_alpha", "answer", png_alpha, "image/png", note="transparency composited on white"),
    Case("palette_png", "answer", lambda: encode(photo().quantize(64), "PNG"), "image/png"),
    Case("png_16bit", "answer", png16, "image/png"),
    Case("exif_rotated_jpeg", "answer", lambda: exif_rotated("JPEG"), "image/jpeg",
         upright=lambda: encode(photo(), "JPEG"), note=f"upright answer within {UPRIGHT_TOLERANCE}"),
    Case("exif_rotated_png", "answer", lambda: exif_rotated("PNG"), "image/png",
         upright=lambda: encode(photo(), "PNG"), note="lossless: exactly the upright answer"),
    Case("gif_animated", "answer", gif, "image/gif", note="first frame"),
    Case("bmp", "answer", lambda: encode(photo(), "BMP"), "image/bmp"),
    Case("webp", "answer", lambda: encode(photo(), "WEBP", quality=90), "image/webp"),
    Case("1x1", "answer", lambda: encode(resized((1, 1)), "PNG"), "image/png"),
    Case("mpo_jpeg", "answer", mpo, "image/jpeg", note="a JPEG with a second frame, as many iPhones write"),
    Case("panorama_4000x200", "answer", lambda: encode(resized((4000, 200)), "JPEG", quality=90), "image/jpeg"),
    Case("photo_12mp", "answer", lambda: encode(resized((4000, 3000)), "JPEG", quality=92), "image/jpeg"),
    Case("jpeg_as_image_png", "answer", good_jpeg, "image/png", grpc=(), note="wrong image type"),
    Case("jpeg_as_text_plain", "answer", good_jpeg, "text/plain", grpc=()),
    Case("jpeg_as_json", "answer", good_jpeg, "application/json", grpc=()),
    Case("jpeg_no_content_type", "answer", good_jpeg, None, grpc=()),
    Case("jpeg_as_form_urlencoded", "answer", good_jpeg, "application/x-www-form-urlencoded", grpc=(),
         reaches_handler=False,
         known_limit="TorchServe's frontend parses the body as form fields and answers 500 "
                     "ErrorDataDecoderException before the handler sees it (curl's default without -H)"),
    # Inputs that must be refused.
    Case("empty", "refuse", lambda: b"", status=400, error=r"empty"),
    Case("plain_text", "refuse", lambda: b"is this a hot dog?", "text/plain", status=400,
         error=r"base64", grpc=(415, NOT_IMAGE)),
    Case("html", "refuse", lambda: HTML, "text/html", status=400, error=r"base64", grpc=(415, NOT_IMAGE)),
    Case("json_without_image", "refuse", lambda: b'{"url": "https://example.com/hotdog.jpg"}',
         "application/json", status=400, error=r"JSON body must be", grpc=(415, NOT_IMAGE)),
    Case("truncated_jpeg", "refuse", lambda: good_jpeg()[: len(good_jpeg()) // 2], "image/jpeg",
         status=400, error=r"truncated"),
    Case("random_bytes", "refuse", lambda: random.Random(0).randbytes(4096), status=415, error=NOT_IMAGE),
    Case("pdf", "refuse", lambda: PDF, "application/pdf", status=415, error=r"PDF"),
    Case("svg", "refuse", lambda: SVG, "image/svg+xml", status=415, error=r"SVG"),
    Case("zip", "refuse", zip_file, "application/zip", status=415, error=r"ZIP"),
    Case("heic", "refuse", heic_header, "image/heic", status=415, error=r"HEIC",
         note="pillow-heif is not installed: refused with a hint to send JPEG"),
    Case("png_strip_1x3000", "refuse", lambda: encode(Image.new("L", (1, 3000)), "PNG"), "image/png", status=400,
         error=r"not a photo", note="~100 bytes that the resize to the model size would blow up to 0.5 GB"),
    Case("png_bomb_30000x30000", "refuse", png_bomb, "image/png", status=413, error=r"too large",
         note=f"{len(png_bomb()) // 1024} kB file, 900 MP decoded; refused before any pixel is decoded"),
    Case("over_max_request_size", "refuse", lambda: good_jpeg() + b"\0" * MAX_REQUEST_SIZE, "image/jpeg",
         status=413, error=r"too large", reaches_handler=False, grpc=("CANCELLED", r""),
         note="frontend: 413 with an empty body (the status line says it); gRPC: the stream is reset"),
    Case("wrong_model_name", "refuse", good_jpeg, "image/jpeg", status=404, error=r"Model not found",
         model="hot_dog_v2", reaches_handler=False, grpc=("INTERNAL", r"Model not found")),
    Case("wrong_method_get", "refuse", lambda: b"", None, status=400, error=r"empty.*POST", method="GET",
         grpc=(), note="TorchServe routes every method on /predictions to the model; no body: 400"),
    Case("wrong_method_delete", "refuse", lambda: b"", None, status=400, error=r"empty.*POST", method="DELETE",
         grpc=()),
]
CASE_NAMES = [c.name for c in CASES]
BY_NAME = {c.name: c for c in CASES}


def transports(case: Case) -> list[str]:
    return ["http"] if case.grpc == () else ["http", "grpc"]


# --- running a case ------------------------------------------------------------------------------

class Reference:
    """Probabilities for any bytes as the default archive serves them (its runtime and decode, run
    offline by bench.parity.offline_predictor)."""

    def __init__(self, weights: Path = REPO / "weights"):
        from bench.parity import offline_predictor

        self.manifest = read_manifest(weights)
        self.version = self.manifest["weights_sha256"][:12]
        self.spec, self._decode, self._forward = offline_predictor(weights)

    @lru_cache(maxsize=64)
    def probs(self, data: bytes) -> dict[str, float]:
        return dict(zip(self.spec.labels, self._forward([self._decode(data)])[0].tolist()))


def _together(fns: list[Callable]) -> list:
    """Call every fn at the same moment (threads released by a barrier), results in order."""
    barrier = threading.Barrier(len(fns))

    def run(fn):
        barrier.wait()
        return fn()

    with ThreadPoolExecutor(len(fns)) as pool:
        return list(pool.map(run, fns))


def http_send(srv, data: bytes, content_type: str | None, method: str = "POST", model: str = MODEL_NAME,
              timeout: float = 60.0) -> dict:
    headers = dict(srv.inference_headers())
    # requests adds no Content-Type for raw bytes; an explicit None keeps it that way.
    if content_type is not None:
        headers["Content-Type"] = content_type
    start = time.perf_counter()
    r = requests.request(method, f"{srv.cfg.inference_url}/predictions/{model}", data=data or None,
                         headers=headers, timeout=timeout)
    try:
        body = r.json()
    except ValueError:
        body = {"raw": r.text[:200]}
    return {"status": r.status_code, "reason": r.reason, "body": body, "batch": r.headers.get("X-Batch-Size"),
            "ms": round((time.perf_counter() - start) * 1000, 1)}


def grpc_send(srv, data: bytes, model: str = MODEL_NAME, timeout: float = 60.0) -> dict:
    import grpc

    from serving.grpc_stubs import import_stubs

    inference_pb2, inference_pb2_grpc, _, _ = import_stubs()
    start = time.perf_counter()
    options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(srv.cfg.grpc_inference_target, options=options) as channel:
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        try:
            response = stub.Predictions(inference_pb2.PredictionsRequest(model_name=model, input={"data": data}),
                                        timeout=timeout, metadata=[("authorization", f"Bearer {srv.keys['inference']}")])
        except grpc.RpcError as e:
            return {"rpc": e.code().name, "details": (e.details() or "")[:200],
                    "ms": round((time.perf_counter() - start) * 1000, 1)}
    body = json.loads(response.prediction)
    return {"rpc": "OK", "status": body.get("status", 200), "body": body,
            "ms": round((time.perf_counter() - start) * 1000, 1)}


def _problems_with_prediction(body: dict, expected: dict, ref: Reference, tol: float) -> list[str]:
    if "probabilities" not in body:
        return [f"no prediction: {str(body)[:150]}"]
    out = []
    delta = max(abs(body["probabilities"][k] - v) for k, v in expected.items())
    if delta > tol:
        out.append(f"probabilities differ by {delta:.2g} (limit {tol})")
    if body["label"] != max(expected, key=expected.get):
        out.append(f"label {body['label']} != {max(expected, key=expected.get)}")
    if body.get("model_version") != ref.version:
        out.append(f"model_version {body.get('model_version')} != {ref.version}")
    return out


def run_case(srv, case: Case, transport: str, ref: Reference, pids: Callable[[], list[int]],
             attempts: int = 10) -> dict:
    """Send `case` between two good photos at once; return what was observed and every problem found."""
    data, good = case.make(), good_jpeg()
    good_probs = ref.probs(good)
    before = pids()
    for attempt in range(attempts):
        if transport == "http":
            send_good = lambda: http_send(srv, good, "image/jpeg")  # noqa: E731
            send_case = lambda: http_send(srv, data, case.content_type, case.method, case.model)  # noqa: E731
        else:
            send_good = lambda: grpc_send(srv, good)  # noqa: E731
            send_case = lambda: grpc_send(srv, data, case.model)  # noqa: E731
        first, answer, last = _together([send_good, send_case, send_good])
        # HTTP says how many requests shared the forward; retry a burst that did not share one.
        shared = int(answer["batch"]) > 1 if transport == "http" and answer.get("batch") else None
        if shared is not False:
            break
    after = pids()
    problems = []
    for i, companion in enumerate((first, last)):
        if companion.get("status") != 200 or companion.get("rpc") not in (None, "OK"):
            problems.append(f"good photo {i} not answered: {companion}")
        else:
            problems += [f"good photo {i}: {p}" for p in
                         _problems_with_prediction(companion["body"], good_probs, ref, TOLERANCE)]
    if before != after or not after:
        problems.append(f"worker pid changed: {before} -> {after}")

    status, error = answer.get("status"), ""
    body = answer.get("body") or {}
    if isinstance(body, dict):
        error = str(body.get("error") or body.get("message") or "")
        if "type" in body:  # TorchServe frontend's own error JSON: {"code", "type", "message"}
            error = f"{body['type']}: {error}"
    if not error and transport == "http" and status != 200:
        error = f"(empty body) {answer['reason']}"  # the frontend's own 413 carries only its status line
    error = "".join(ch if ch.isprintable() else "?" for ch in error)
    expect_status, expect_error = case.status, case.error
    if transport == "grpc" and case.grpc:
        expect_status, expect_error = case.grpc
    observed = {"status": status, "error": error[:200]} if transport == "http" else \
        {"rpc": answer["rpc"], "status": status, "error": (error or answer.get("details", ""))[:200]}
    if case.known_limit:
        pass  # recorded as observed; the test pins the observed behaviour
    elif isinstance(expect_status, str):  # an RPC code: the frontend refused it
        if answer["rpc"] != expect_status or not re.search(expect_error, answer.get("details", ""), re.I):
            problems.append(f"expected RPC {expect_status} /{expect_error}/, got {observed}")
    elif status != expect_status:
        problems.append(f"expected status {expect_status}, got {observed}")
    elif case.expect == "answer":
        problems += _problems_with_prediction(body, ref.probs(data), ref, TOLERANCE)
        if case.upright:
            tol = TOLERANCE if case.name.endswith("png") else UPRIGHT_TOLERANCE
            problems += [f"vs upright: {p}" for p in _problems_with_prediction(body, ref.probs(case.upright()), ref, tol)]
    else:
        if not error or not re.search(expect_error, error, re.I):
            problems.append(f"error text {error!r} does not match /{expect_error}/")
        if case.reaches_handler and body.get("status") != status:
            problems.append(f"JSON status {body.get('status')} != HTTP status {status}")
    return {"case": case.name, "transport": transport, "expect": case.expect,
            "expected": expect_status if case.expect == "refuse" or isinstance(expect_status, str) else 200,
            "observed": observed, "label": body.get("label") if isinstance(body, dict) else None,
            "bytes": len(data), "content_type": case.content_type if transport == "http" else None,
            "method": case.method if transport == "http" else "Predictions",
            "shared_batch": shared, "worker_pid_unchanged": before == after,
            "good_items_ok": not any(p.startswith("good photo") for p in problems),
            "known_limit": case.known_limit, "note": case.note,
            "ok": not problems, "problems": problems, "ms": answer["ms"]}


# --- report --------------------------------------------------------------------------------------

def markdown(results: list[dict]) -> str:
    lines = ["# Bad-input matrix", "",
             "Each case was sent to a real TorchServe at the same moment as two good photos. "
             "`ok`: the expected answer came back, the good photos were answered correctly and the "
             "worker's pid did not change.", "",
             "| case | transport | expect | observed | error / label | batch shared | pid kept | ok | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        o = r["observed"]
        seen = (f"{o.get('rpc')} " if r["transport"] == "grpc" else "") + str(o.get("status") or "")
        what = (o.get("error") or r.get("label") or "").replace("|", "\\|").replace("\n", " ")[:90]
        ok = "known limit" if r["known_limit"] else ("yes" if r["ok"] else "**NO**: " + "; ".join(r["problems"]))
        note = (r["known_limit"] or r["note"]).replace("|", "\\|")
        shared = {True: "yes", False: "no", None: "n/a"}[r["shared_batch"]]
        lines.append(f"| {r['case']} | {r['transport']} | {r['expect']} {r['expected']} | {seen.strip()} | {what} "
                     f"| {shared} | {'yes' if r['worker_pid_unchanged'] else '**no**'} | {ok} | {note} |")
    return "\n".join(lines) + "\n"


def run_all(srv, ref: Reference) -> list[dict]:
    from bench.harness import worker_pids

    return [run_case(srv, case, t, ref, lambda: worker_pids(srv)) for case in CASES for t in transports(case)]


def main(argv: list[str] | None = None) -> int:
    from bench.harness import private_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "reports" / "bad_inputs.json"))
    args = parser.parse_args(argv)
    ref = Reference()
    start = time.time()
    with private_server() as srv:
        pids = sorted(w for w in __import__("bench.harness").harness.worker_pids(srv))
        results = run_all(srv, ref)
        pids_after = sorted(__import__("bench.harness").harness.worker_pids(srv))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"cases": len(CASES), "runs": len(results), "ok": sum(r["ok"] for r in results),
               "known_limits": sum(bool(r["known_limit"]) for r in results),
               "failed": [f"{r['case']}/{r['transport']}" for r in results if not r["ok"]],
               "worker_pids_start": pids, "worker_pids_end": pids_after,
               "seconds": round(time.time() - start, 1), "model_version": ref.version}
    out.write_text(json.dumps({"summary": summary, "results": results}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(results) + f"\n{json.dumps(summary)}\n")
    print(json.dumps(summary))
    return 0 if not summary["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
