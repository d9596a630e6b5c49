"""Ask the running server about one photo over HTTP: `python -m serving.http_client IMG` (make predict).

The inference key is read from key_file.json in the directory TorchServe was started in (the repo
root for `make serve`), and renewed through the management API when TorchServe refuses it (expired).
"""
from __future__ import annotations

import json
import mimetypes
import sys
from pathlib import Path

import requests

from serving.config import (MODEL_NAME, REPO, InferenceKey, ServeConfig, ServeError, http_key_refused,
                            parse_client_args)


def predict_bytes(image: bytes, url: str, key: str, model: str = MODEL_NAME,
                  content_type: str = "application/octet-stream", timeout: float = 60.0,
                  session: requests.Session | None = None) -> tuple[int, dict]:
    """POST the raw image bytes; returns (HTTP status, JSON answer)."""
    # An explicit binary content type: without one, clients default to form encoding, which
    # TorchServe tries to parse as form fields.
    r = (session or requests).post(f"{url}/predictions/{model}", data=image, timeout=timeout,
                                   headers={"Authorization": f"Bearer {key}", "Content-Type": content_type})
    try:
        body = r.json()
    except ValueError:
        body = {"error": r.text, "status": r.status_code}
    return r.status_code, body


def predict_file(path: str | Path, cfg: ServeConfig, workdir: str | Path = REPO) -> tuple[int, dict]:
    path = Path(path)
    # Only an image type is passed on: TorchServe hands text/* and JSON bodies to the handler decoded.
    guessed = mimetypes.guess_type(path.name)[0] or ""
    content_type = guessed if guessed.startswith("image/") else "application/octet-stream"
    image = path.read_bytes()
    return InferenceKey.of_server(cfg, workdir).call(
        lambda key: predict_bytes(image, cfg.inference_url, key, content_type=content_type), http_key_refused)


def main(argv: list[str] | None = None) -> int:
    args = parse_client_args(__doc__, argv)
    try:
        status, body = predict_file(args.image, ServeConfig.load(args.config), args.workdir)
    except ServeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except requests.ConnectionError:
        print("error: TorchServe is not answering: start it with `make serve`", file=sys.stderr)
        return 2
    print(f"{args.image}: {json.dumps(body)}")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
