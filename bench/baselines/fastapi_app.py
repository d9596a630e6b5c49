"""The common way to serve this model, as a baseline for `make bench-serve`: FastAPI + uvicorn.

One uploaded image per request (multipart field `file`, or raw bytes in the body), decoded with
model_src.preprocess and run through one eager fp32 ResNN forward: no batching, no quantization,
the same weights (model_src.bundle) and the same preprocessing as the TorchServe handler. The
endpoint is an `async def` that runs the forward inline, the pattern most tutorials show; torch keeps
its default thread count (`--threads N` sets torch.set_num_threads, for a tuned comparison).
`--threadpool` runs decode + forward in Starlette's thread pool instead, what a plain `def` endpoint
does, so requests overlap. Answers the handler's JSON.

    python -m bench.baselines.fastapi_app --weights weights --port 8200
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from model_src.bundle import load_bundle
from model_src.preprocess import ImageError, decode_image, image_to_tensor

REPO = Path(__file__).resolve().parents[2]


def create_app(weights: str | Path, threadpool: bool = False) -> FastAPI:
    model, spec, manifest = load_bundle(weights, "cpu")
    labels = list(spec.labels)
    version = manifest["weights_sha256"][:12]
    app = FastAPI(title="hotdog baseline")

    @app.get("/ping")
    async def ping():
        return {"status": "Healthy"}

    @app.post("/predict")
    async def predict(request: Request):
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("file") or form.get("data")
            data = await upload.read() if upload is not None and hasattr(upload, "read") else b""
        else:
            data = await request.body()
        return await run_in_threadpool(answer, data) if threadpool else answer(data)

    def answer(data: bytes):
        try:
            x = image_to_tensor(decode_image(data, spec.max_pixels), spec)
        except ImageError as e:
            return JSONResponse({"error": str(e), "status": e.status}, status_code=e.status)
        with torch.inference_mode():
            p = torch.softmax(model(x.unsqueeze(0)), dim=1)[0].tolist()
        best = max(range(len(p)), key=p.__getitem__)
        return {"label": labels[best], "is_hotdog": labels[best] == "hot_dog", "confidence": p[best],
                "probabilities": dict(zip(labels, p)), "model_version": version}

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(REPO / "weights"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--threadpool", action="store_true",
                        help="decode + forward in the thread pool (a `def` endpoint) instead of inline")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    uvicorn.run(create_app(args.weights, args.threadpool), host=args.host, port=args.port, log_level="warning",
                access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
