"""The image's HEALTHCHECK: exit 0 when TorchServe answers /ping Healthy on the container's inference port."""
import json
import sys
import urllib.request
from urllib.parse import urlsplit

sys.path.insert(0, "/opt/hotdog")
from deploy.container_config import CONTAINER_CONFIG  # noqa: E402
from serving.config import ServeConfig  # noqa: E402

port = urlsplit(ServeConfig.load(CONTAINER_CONFIG).inference_url).port
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as r:
        sys.exit(0 if json.load(r).get("status") == "Healthy" else 1)
except (OSError, ValueError) as e:
    sys.exit(f"unhealthy: {e}")
