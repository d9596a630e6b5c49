"""The image's HEALTHCHECK and the Kubernetes probes: exit 0 when TorchServe answers /ping Healthy.

TorchServe 0.12 asks the inference key even on /ping, so this runs inside the container and reads the key
from $HOTDOG_KEYS/key_file.json; the port comes from the container's properties.
"""
import json
import os
import sys
import urllib.request
from urllib.parse import urlsplit

sys.path.insert(0, "/opt/hotdog")
from deploy.container_config import CONTAINER_CONFIG  # noqa: E402
from serving.config import ServeConfig, ServeError, read_keys  # noqa: E402

try:
    port = urlsplit(ServeConfig.load(CONTAINER_CONFIG).inference_url).port
    key = read_keys(os.environ["HOTDOG_KEYS"])["inference"]
    ping = urllib.request.Request(f"http://127.0.0.1:{port}/ping", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(ping, timeout=5) as r:
        sys.exit(0 if json.load(r).get("status") == "Healthy" else 1)
except (OSError, ValueError, KeyError, ServeError) as e:
    sys.exit(f"unhealthy: {e}")
