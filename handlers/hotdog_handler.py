"""TorchServe handler for hotdog.mar: one image per request, a whole batch in one forward.

Each request carries one image as raw bytes in the body, as a multipart form field, or as base64
in JSON (`{"data": "<b64>"}` or `{"image": "<b64>"}`, a `data:image/...;base64,` URL works too).
Decoding and preprocessing come from model_src.preprocess, the same code evaluation uses, and the
model is loaded through model_src.bundle (sha256-checked, weights_only). A request whose image
cannot be used gets its own 4xx status and a JSON error; the rest of the batch is answered normally.

The runtime behind it is chosen in model-config.yaml (`handler: {runtime: ..., threads: N}`):
  eager           the fp32 PyTorch model (serve_config/model-config.eager.yaml; the key's default);
  compile         the same model through torch.compile (inductor), compiled and warmed at load;
  executorch      the XNNPACK fp32 .pte the phone runs (exported/), by the ExecuTorch runtime;
  executorch_int8 the XNNPACK int8 .pte (PT2E static quantization): the shipped default archive.
serving.archive packs a .pte runtime's program and its hotdog.json; at load the handler checks both
against the weights (sha256) and refuses a mismatch in one line. The .pte programs take uint8 NCHW
images and do normalization and softmax in the graph. `threads` sets
torch.set_num_threads (and the ExecuTorch threadpool) per worker. `jpeg_draft: true` decodes JPEGs at a
reduced DCT scale that still covers the resize (model_src.preprocess.decode_image): about half the decode
time, with slightly different pixels, so it is off unless a config turns it on.

This module defines exactly one class: TorchServe's loader instantiates the only class it finds.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import time

import torch
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

import model_src
from model_src import LOAD_REFUSED
from model_src.bundle import PROGRAMS_FILE, PTE_PROGRAMS, BundleError, check_programs, load_bundle
from model_src.preprocess import HOTDOG_LABEL, ImageError, decode_image, image_to_tensor, image_to_uint8

logger = logging.getLogger(__name__)

# Field names tried first for the image; any other single field (multipart) is accepted as well.
IMAGE_FIELDS = ("data", "body", "image", "file")
BATCH_HEADER = "X-Batch-Size"
PROB_DECIMALS = 4  # what a caller can use; float32's 16 printed digits are noise
RUNTIMES = ("eager", "compile", "executorch", "executorch_int8")
# The `handler:` keys of model-config.yaml read here. Any other key stops the model loading, so a
# misspelt option cannot silently leave its default in place.
HANDLER_OPTIONS = ("runtime", "threads", "jpeg_draft")
# Every metric value and INFO line a worker logs is a line the Java frontend parses, and Prometheus keeps
# only a gauge's last value: so gauges go out at most once a second per worker and the per-batch
# "Backend received" line not at all (about 5% of server CPU per request; docs/serving-performance.md).
GAUGE_INTERVAL_S = 1.0
_BACKEND_RECEIVED = "Backend received inference at: %d"  # ts/protocol/otf_message_handler.py
_gauge_due: dict[str, float] = {}


def _fewer_per_batch_lines(record: logging.LogRecord) -> bool:
    """Logging filter (a function: this module holds one class): drop the per-batch log lines above."""
    msg = record.msg
    if not isinstance(msg, str):
        return True
    if msg == _BACKEND_RECEIVED:
        return False
    if msg.startswith("[METRICS]") and "|#type:GAUGE|" in msg:  # ts.metrics.caching_metric's format
        name, now = msg[len("[METRICS]"):msg.find(":")], time.monotonic()
        if now < _gauge_due.get(name, 0.0):
            return False
        _gauge_due[name] = now + GAUGE_INTERVAL_S
    return True


def _payload(row: dict):
    """The one image-carrying value of a request row, as TorchServe's backend decoded it."""
    for name in IMAGE_FIELDS:
        if name in row:
            return row[name]
    if len(row) == 1:
        return next(iter(row.values()))
    if not row:
        raise ImageError("empty input: no image received")
    raise ImageError(f"expected one image field (one of {', '.join(IMAGE_FIELDS)}), got {sorted(row)}")


def _b64(text: str) -> bytes:
    if text.startswith("data:"):  # data URL straight from a browser's FileReader
        text = text.partition(",")[2]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("invalid base64 in the request: a text or JSON body must be the image base64-encoded; "
                         "send raw image bytes with an image/* or application/octet-stream Content-Type") from None


def request_bytes(row: dict) -> bytes:
    """Image bytes of one request: raw body / multipart field, or base64 inside JSON or text."""
    value = _payload(row)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):  # text/plain body: base64
        return _b64(value)
    if isinstance(value, dict):  # application/json, already parsed by TorchServe
        for key in ("data", "image"):
            if isinstance(value.get(key), str):
                return _b64(value[key])
        raise ImageError('JSON body must be {"data": "<base64 image>"} or {"image": "<base64 image>"}')
    raise ImageError(f"unsupported request body ({type(value).__name__}): send image bytes, "
                     "a multipart file field or JSON with base64")


class HotdogHandler(BaseHandler):
    def initialize(self, context):
        try:
            self._initialize(context)
        except (BundleError, ValueError, RuntimeError) as e:
            # One line the server start-up reports (serving.server), instead of retrying until its timeout.
            raise RuntimeError(f"{LOAD_REFUSED} {e}") from None

    def _initialize(self, context):
        props = context.system_properties
        gpu_id = props.get("gpu_id")
        if torch.cuda.is_available() and gpu_id is not None:
            self.device = torch.device(f"cuda:{gpu_id}")
        else:
            self.device = torch.device("cpu")
        self.manifest = context.manifest
        model_dir = props.get("model_dir")
        # The archive holds the same weights folder layout as weights/: model.pt, preprocess.json,
        # manifest.json, so the server loads exactly what evaluation loads (and checks its sha256).
        self.model, self.spec, self.bundle_manifest = load_bundle(model_dir, self.device)
        self.labels = list(self.spec.labels)
        self.model_version = self.bundle_manifest["weights_sha256"][:12]
        if HOTDOG_LABEL not in self.labels:
            raise RuntimeError(f"model labels {self.labels} have no {HOTDOG_LABEL!r} class")
        self._init_runtime(context, model_dir)
        # The root logger carries the "Backend received" line, TorchServe's metrics logger the values.
        for name in ("", "ts.metrics.caching_metric"):
            logging.getLogger(name).addFilter(_fewer_per_batch_lines)
        self.initialized = True
        # Where model_src came from: the unpacked archive, unless something shadows it on sys.path.
        logger.info("hotdog model %s loaded on %s (runtime %s, %d threads, jpeg_draft %s), input %d px, labels %s, "
                    "code from %s", self.model_version, self.device, self.runtime, torch.get_num_threads(),
                    self.draft_min_side is not None,
                    self.spec.input_size, self.labels,
                    os.path.dirname(os.path.dirname(model_src.__file__)))

    def _init_runtime(self, context, model_dir: str) -> None:
        options = (getattr(context, "model_yaml_config", None) or {}).get("handler") or {}
        unknown = sorted(map(str, set(options) - set(HANDLER_OPTIONS)))
        if unknown:
            raise RuntimeError(f"unknown handler option(s) {', '.join(unknown)} in model-config.yaml: "
                               f"expected {', '.join(HANDLER_OPTIONS)}")
        self.runtime = str(options.get("runtime", "eager"))
        if self.runtime not in RUNTIMES:
            raise RuntimeError(f"handler.runtime {self.runtime!r} in model-config.yaml: expected one of {RUNTIMES}")
        threads = options.get("threads")
        if threads:
            torch.set_num_threads(int(threads))
        jpeg_draft = options.get("jpeg_draft", False)
        if not isinstance(jpeg_draft, bool):
            raise RuntimeError(f"handler.jpeg_draft {jpeg_draft!r} in model-config.yaml: expected true or false")
        self.draft_min_side = self.spec.resize_size if jpeg_draft else None
        self.method = None
        self.max_batch = None
        if self.runtime == "compile":
            self.model = torch.compile(self.model, dynamic=True)
            with torch.inference_mode():  # compile now, not in the first request's time
                for n in (1, 2):  # on the model's device (a CPU tensor would fail on a CUDA model)
                    self.model(torch.zeros(n, 3, self.spec.input_size, self.spec.input_size, device=self.device))
        elif self.runtime.startswith("executorch"):
            self.method, self.max_batch = self._load_pte(model_dir, PTE_PROGRAMS[self.runtime], threads)

    def _load_pte(self, model_dir: str, key: str, threads):
        """The packed .pte's forward, after checking it is the program hotdog.json names, from these weights."""
        from executorch.runtime import Runtime

        if not os.path.exists(os.path.join(model_dir, PROGRAMS_FILE)):
            raise RuntimeError(f"runtime {self.runtime} needs {PROGRAMS_FILE} and the .pte in the archive "
                               "(serving.archive packs them for an executorch runtime)")
        meta = check_programs(model_dir, self.bundle_manifest["weights_sha256"], [key])
        entry = meta["programs"][key]
        path = os.path.join(model_dir, entry["file"])
        if threads:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(int(threads))
        method = Runtime.get().load_program(path).load_method("forward")
        return method, int(entry.get("batch", meta["input"]["batch"])["max"])

    # Metric names, types and dimensions (ModelName, Level; TorchServe adds them) match the
    # declarations in serve_config/metrics.yaml: the Prometheus endpoint shows only declared metrics.
    def _add_ms(self, name: str, start: float) -> None:
        self.context.metrics.add_metric(name, round((time.perf_counter() - start) * 1000, 3), "ms",
                                        metric_type=MetricTypes.GAUGE)

    def preprocess(self, data):
        """Per request: a normalized tensor, or the ImageError that request will be answered with."""
        self.context.metrics.add_metric("HotdogBatchSize", len(data), "count",
                                        metric_type=MetricTypes.HISTOGRAM)
        start = time.perf_counter()
        images = []
        for row in data:
            try:
                images.append(decode_image(request_bytes(row), self.spec.max_pixels, self.draft_min_side))
            except ImageError as e:
                images.append(e)
            except Exception as e:  # noqa: BLE001 - one odd input must never take the batch down
                logger.exception("unexpected error decoding a request")
                images.append(ImageError(f"unreadable image: {e}"))
        self._add_ms("HotdogDecodeMs", start)

        start = time.perf_counter()
        items = []
        for img in images:
            if isinstance(img, ImageError):
                items.append(img)
                continue
            try:
                items.append(image_to_uint8(img, self.spec) if self.method is not None
                             else image_to_tensor(img, self.spec))
            except Exception as e:  # noqa: BLE001 - e.g. a corrupt tail that PIL reads only now
                logger.exception("unexpected error preprocessing a request")
                items.append(ImageError(f"corrupt image: {e}"))
        self._add_ms("HotdogPreprocessMs", start)
        return items

    @torch.inference_mode()
    def inference(self, data, *args, **kwargs):
        """One forward for every good item of the batch; bad items pass through untouched."""
        start = time.perf_counter()
        good = [i for i, item in enumerate(data) if isinstance(item, torch.Tensor)]
        results = list(data)
        if good:
            batch = torch.stack([data[i] for i in good])
            if self.method is not None:  # uint8 in, probabilities out (normalize + softmax in the graph)
                probs = torch.cat([self.method.execute([batch[i:i + self.max_batch].contiguous()])[0]
                                   for i in range(0, len(batch), self.max_batch)])
            else:
                probs = torch.softmax(self.model(batch.to(self.device)).float(), dim=1).cpu()
            for row, i in enumerate(good):
                results[i] = probs[row]
        self._add_ms("HotdogInferenceMs", start)
        return results

    def postprocess(self, data):
        answers = []
        for idx, item in enumerate(data):
            self.context.set_response_content_type(idx, "application/json")
            # How many requests shared this forward: shows a client (and the tests) that batching works.
            self.context.set_response_header(idx, BATCH_HEADER, str(len(data)))
            if isinstance(item, ImageError):
                message = str(item)
                self.context.set_response_status(item.status, message, idx=idx)
                answers.append(json.dumps({"error": message, "status": item.status}))
                continue
            p = item.tolist()
            best = max(range(len(p)), key=p.__getitem__)
            # The best one takes the remainder, so the rounded probabilities still sum to 1.
            p = [round(x, PROB_DECIMALS) for x in p]
            p[best] = round(1 - sum(x for i, x in enumerate(p) if i != best), PROB_DECIMALS)
            answers.append(json.dumps({
                "label": self.labels[best],
                "is_hotdog": self.labels[best] == HOTDOG_LABEL,
                "confidence": p[best],
                "probabilities": dict(zip(self.labels, p)),
                "model_version": self.model_version,
            }))
        return answers
