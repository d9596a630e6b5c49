"""The handler inside TorchServe's own Python worker code, without the Java frontend.

hotdog.mar is unpacked and loaded with ts.model_loader exactly as a worker loads it, and batches go
through Service.predict, whose binary answer (per-request status, headers, body) is decoded here.
"""
import json
import struct
import sys
import zipfile

import pytest
import torch

from model_src.bundle import load_bundle
from model_src.preprocess import bytes_to_tensor, decode_image, image_to_tensor
import imagegen
from conftest import REPO, SAMPLE
from helpers import flip_byte

MAR = REPO / "model_store" / "hotdog.mar"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    if not MAR.exists():
        pytest.fail(f"{MAR} is missing: run `make mar` (make test builds it)")
    folder = tmp_path_factory.mktemp("hotdog_mar")
    with zipfile.ZipFile(MAR) as z:
        z.extractall(folder)
    return folder


def load_service(model_dir):
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
    from ts.model_loader import TsModelLoader

    metrics = MetricsCacheYamlImpl(config_file_path=str(REPO / "serve_config" / "metrics.yaml"))
    metrics.initialize_cache()
    metrics.model_name = "hotdog"
    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    sys.path.insert(0, str(model_dir))  # the worker's PYTHONPATH holds the unpacked archive
    try:
        service = TsModelLoader().load("hotdog", str(model_dir), manifest["model"]["handler"], None, 8,
                                       metrics_cache=metrics)
        service.set_cl_socket(None)  # the worker's frontend socket; only streaming handlers write to it
        return service
    finally:
        sys.path.remove(str(model_dir))
        sys.modules.pop("hotdog_handler", None)


@pytest.fixture(scope="module")
def service(model_dir):
    threads = torch.get_num_threads()
    try:
        return load_service(model_dir)
    finally:  # the archive's `threads: 1` is for its worker, not for the rest of this test process
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def eager():
    model, spec, _ = load_bundle(REPO / "weights")
    return model, spec


@pytest.fixture(scope="module")
def offline():
    """(decode, forward) of the archive's runtime (bench.parity.offline_predictor), without the handler."""
    from bench import parity

    _, decode, forward = parity.offline_predictor(REPO / "weights")
    return decode, forward


def reference_probs(offline, data: bytes) -> list[float]:
    decode, forward = offline
    return forward([decode(data)])[0].tolist()


class CountingRuntime:
    """Wraps the handler's runtime (the .pte method, or the eager model) and records each call's input shape."""

    def __init__(self, handler):
        self.handler, self.shapes = handler, []
        if handler.method is not None:
            self.inner, self.attr = handler.method, "method"
        else:
            self.inner, self.attr = handler.model, "model"

    def execute(self, inputs):
        self.shapes.append(tuple(inputs[0].shape))
        return self.inner.execute(inputs)

    def __call__(self, x):
        self.shapes.append(tuple(x.shape))
        return self.inner(x)

    def __enter__(self):
        setattr(self.handler, self.attr, self)
        return self

    def __exit__(self, *exc):
        setattr(self.handler, self.attr, self.inner)


def predict(service, rows):
    """rows: per request, {field name: (content type, value)} as the worker's socket reader hands them
    over (JSON bodies already parsed). Returns (batch code, [(status, phrase, headers, body), ...])."""
    batch = [{"requestId": f"req-{i}".encode(),
              "parameters": [{"name": name, "contentType": ctype, "value": value}
                             for name, (ctype, value) in row.items()]}
             for i, row in enumerate(rows)]
    msg = bytes(service.predict(batch))
    pos = 0

    def i32():
        nonlocal pos
        (value,) = struct.unpack_from("!i", msg, pos)
        pos += 4
        return value

    def blob():
        nonlocal pos
        n = i32()
        pos += n
        return msg[pos - n:pos]

    code, _ = i32(), blob()
    out = []
    while (n := i32()) != -1:
        pos += n  # request id
        blob()  # content type
        status, phrase = i32(), blob().decode()
        headers = {}
        for _ in range(i32()):
            key = blob().decode()
            headers[key] = blob().decode()
        out.append((status, phrase, headers, json.loads(blob())))
    return code, out


def raw(data: bytes, field: str = "body", ctype: str = "application/octet-stream") -> dict:
    return {field: (ctype, data)}


def assert_answer(body, probs, labels):
    assert body["probabilities"] == pytest.approx(dict(zip(labels, probs)), abs=1e-4)  # answers carry 4 decimals
    best = max(range(len(probs)), key=probs.__getitem__)
    assert body["label"] == labels[best] and body["is_hotdog"] == (labels[best] == "hot_dog")
    assert body["confidence"] == pytest.approx(probs[best], abs=1e-4)


def test_every_format_and_request_shape_in_one_batch_one_forward(service, eager, offline):
    import base64

    handler = service._entry_point.__self__
    variants = imagegen.format_variants()
    jpeg = variants["jpeg"]
    b64 = base64.b64encode(jpeg).decode()
    rows = [raw(data) for data in variants.values()] + [
        raw(jpeg, field="file", ctype="image/jpeg"),  # multipart form field
        {"body": ("application/json", {"data": b64})},
        {"body": ("application/json", {"image": "data:image/jpeg;base64," + b64})},
        {"body": ("text/plain", b64)},
    ]
    with CountingRuntime(handler) as runtime:
        code, answers = predict(service, rows)
    assert code == 200 and len(answers) == len(rows)
    spec = eager[1]
    assert runtime.shapes == [(len(rows), 3, spec.input_size, spec.input_size)]  # the whole batch, one forward
    expected = [reference_probs(offline, d) for d in variants.values()] + [reference_probs(offline, jpeg)] * 4
    version = load_bundle(REPO / "weights")[2]["weights_sha256"][:12]
    for (status, _, headers, body), probs in zip(answers, expected):
        assert status == 200, body
        assert headers["X-Batch-Size"] == str(len(rows))
        assert body["model_version"] == version
        assert_answer(body, probs, list(spec.labels))


def test_bad_items_get_their_own_status_and_the_rest_is_answered(service, eager, offline):
    spec = eager[1]
    bad = imagegen.bad_inputs(spec.max_pixels)
    jpeg = imagegen.format_variants()["jpeg"]
    malformed = {  # request shapes that carry no usable image
        "bad_base64": ({"body": ("application/json", {"data": "not base64 at all!"})}, 400),
        "json_without_image": ({"body": ("application/json", {"url": "http://example.com/x.jpg"})}, 400),
        "json_list": ({"body": ("application/json", [1, 2, 3])}, 400),
        "two_unknown_fields": ({"a": ("image/jpeg", jpeg), "b": ("image/jpeg", jpeg)}, 400),
    }
    cases = [(raw(data), status) for data, status in bad.values()] + list(malformed.values())
    rows = [raw(jpeg)]
    for row, _ in cases:
        rows += [row, raw(jpeg)]  # bad items between good ones, so index mix-ups show
    code, answers = predict(service, rows)
    assert code == 200
    good = reference_probs(offline, jpeg)
    for i, (status, phrase, headers, body) in enumerate(answers):
        if i % 2 == 0:
            assert status == 200, body
            assert_answer(body, good, list(spec.labels))
        else:
            expected = cases[i // 2][1]
            assert status == expected and body["status"] == expected
            assert body["error"] and phrase == body["error"]  # the message is also the HTTP reason phrase
    # The worker is unharmed: the next batch is answered normally.
    code, [(status, _, _, body)] = predict(service, [raw(jpeg)])
    assert code == 200 and status == 200 and "label" in body


def test_a_batch_above_the_programs_maximum_is_split_and_answered_in_order(service, eager, offline):
    """TorchServe may hand over more requests than the .pte's batch range (model-config batch size, a
    future setting): the handler runs them in chunks of the program's maximum, answers kept in order."""
    handler = service._entry_point.__self__
    if handler.method is None:
        pytest.fail("hotdog.mar is not an ExecuTorch archive: the batch split is the .pte runtime's")
    photos = [p.read_bytes() for p in sorted(SAMPLE.rglob("*.jpg"))]
    rows = [raw(photos[i % len(photos)]) for i in range(handler.max_batch + 3)]
    with CountingRuntime(handler) as runtime:
        code, answers = predict(service, rows)
    size = eager[1].input_size
    assert code == 200 and runtime.shapes == [(handler.max_batch, 3, size, size), (3, 3, size, size)]
    expected = {i: reference_probs(offline, data) for i, data in enumerate(photos)}
    for i, (status, _, headers, body) in enumerate(answers):
        assert status == 200 and headers["X-Batch-Size"] == str(len(rows))
        assert_answer(body, expected[i % len(photos)], list(eager[1].labels))


def test_messages_say_what_is_wrong(service, eager):
    bad = imagegen.bad_inputs(eager[1].max_pixels)
    _, answers = predict(service, [raw(data) for data, _ in bad.values()])
    messages = dict(zip(bad, (body["error"] for _, _, _, body in answers)))
    assert "empty" in messages["empty"]
    assert "not an image" in messages["not_an_image"]
    assert "truncated" in messages["truncated"]
    assert "too large" in messages["over_pixel_limit"] and str(eager[1].max_pixels) in messages["over_pixel_limit"]
    assert "1x3000" in messages["strip"] and "not a photo" in messages["strip"]


def test_exif_orientation_is_applied(eager):
    spec = eager[1]
    upright = image_to_tensor(imagegen.photo(), spec)
    sideways = imagegen.exif_rotated("PNG")  # lossless, so the tensors must match exactly
    assert torch.equal(bytes_to_tensor(sideways, spec), upright)
    # Without the orientation applied the model would see another picture.
    from PIL import Image
    import io
    assert not torch.equal(image_to_tensor(Image.open(io.BytesIO(sideways)).convert("RGB"), spec), upright)
    assert decode_image(imagegen.exif_rotated()).size == imagegen.photo().size


def test_alpha_is_composited_on_white(eager):
    img = decode_image(imagegen.encode(imagegen.with_alpha(), "PNG"))
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 255, 255)
    assert img.getpixel((img.width - 1, 0)) == imagegen.photo().getpixel((img.width - 1, 0))


def test_tampered_weights_are_refused(model_dir, tmp_path):
    import shutil

    copy = tmp_path / "mar"
    shutil.copytree(model_dir, copy)
    (copy / "model.pt").write_bytes(flip_byte((copy / "model.pt").read_bytes()))
    with pytest.raises(RuntimeError, match="hotdog model refused: .*sha256"):
        load_service(copy)
