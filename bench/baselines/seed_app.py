"""The single-file app people write to serve a model like the seed's, as a baseline for `make bench-serve`.

FastAPI + uvicorn, an `async def` endpoint taking an `UploadFile`, PIL decode, torchvision.transforms
Resize to 192x192 + ToTensor + Normalize, and the seed's own ResNN (SEED_WIDTHS) at 192 px, eager
fp32, one image per request. Its weights are random (seeded): it measures the common way of serving,
not an accuracy, so `make bench-serve` needs no training for it. Only the mean/std and the label
names come from the spec, so it has no second copy of them.

    python -m bench.baselines.seed_app --port 8201
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import torch
from fastapi import FastAPI, File, UploadFile
from PIL import Image
from torchvision import transforms

from model_src.preprocess import PreprocessSpec
from model_src.resnn import SEED_WIDTHS, ResNN

REPO = Path(__file__).resolve().parents[2]
SEED_INPUT_SIZE = 192


def create_app(spec: PreprocessSpec) -> FastAPI:
    torch.manual_seed(0)
    model = ResNN(num_classes=len(spec.labels), widths=SEED_WIDTHS).eval()
    transform = transforms.Compose([
        transforms.Resize((SEED_INPUT_SIZE, SEED_INPUT_SIZE)),
        transforms.ToTensor(),
        transforms.Normalize(mean=spec.mean, std=spec.std),
    ])
    app = FastAPI(title="hotdog seed-style baseline")

    @app.get("/ping")
    async def ping():
        return {"status": "Healthy"}

    @app.post("/predict")
    async def predict(file: UploadFile = File(...)):
        image = Image.open(io.BytesIO(await file.read())).convert("RGB")
        x = transform(image).unsqueeze(0)
        with torch.no_grad():
            probs = torch.softmax(model(x), dim=1)[0]
        best = int(probs.argmax())
        return {"label": spec.labels[best], "confidence": float(probs[best])}

    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(REPO / "weights"), help="only its preprocess.json is read")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8201)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(PreprocessSpec.load(args.weights)), host=args.host, port=args.port,
                log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
