"""serve_config/config.properties as the container serves it -> serve_config/config.container.properties.

The shipped file binds every socket to 127.0.0.1. Inside the container the inference, metrics and gRPC inference
sockets listen on 0.0.0.0 (the ports the Dockerfile exposes); the management APIs stay on the container's own
loopback. Everything else (token authorization, request size, ...) is the shipped file's.
Usage: python -m deploy.container_config   (from the repository root; the Dockerfile runs it)
"""
from __future__ import annotations

from urllib.parse import urlsplit

from serving.config import CONFIG, ServeConfig

CONTAINER_CONFIG = CONFIG.with_name("config.container.properties")
PUBLIC = "0.0.0.0"


def container_config(cfg: ServeConfig) -> dict[str, str]:
    overrides = {"grpc_inference_address": PUBLIC}
    for key in ("inference_address", "metrics_address"):
        url = urlsplit(cfg.props[key])
        overrides[key] = url._replace(netloc=f"{PUBLIC}:{url.port}").geturl()
    return overrides


if __name__ == "__main__":
    cfg = ServeConfig.load(CONFIG)
    cfg.write_copy(CONTAINER_CONFIG, **container_config(cfg))
    print(f"wrote {CONTAINER_CONFIG}")
