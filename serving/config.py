"""Where the server listens and where its files live: read from serve_config/config.properties.

config.properties is the one definition of addresses and ports; `make serve`, the clients and the
tests all read it here. Tests (and anyone running a second server) write a copy with other ports.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "serve_config" / "config.properties"
LOG_CONFIG = REPO / "serve_config" / "log4j2.xml"  # the frontend's logging (torchserve --log-config)
MODEL_STORE = REPO / "model_store"
MODEL_NAME = "hotdog"
MAR = MODEL_STORE / f"{MODEL_NAME}.mar"
KEY_FILE = "key_file.json"  # TorchServe writes it into the directory it was started in
# `make serve` state: TorchServe's pid file lives under TMPDIR, so a private TMPDIR means
# `make stop` stops this server and never someone else's.
RUN_DIR = REPO / ".serve"


class ServeError(RuntimeError):
    """A serving problem with a message meant for the user (no traceback needed)."""


def read_properties(path: str | Path) -> dict[str, str]:
    """Java-properties subset TorchServe's own launcher understands: key=value, # comments."""
    props = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


@dataclass(frozen=True)
class ServeConfig:
    path: Path
    props: dict

    @classmethod
    def load(cls, path: str | Path = CONFIG) -> "ServeConfig":
        path = Path(path)
        if not path.exists():
            raise ServeError(f"TorchServe config not found: {path}")
        return cls(path, read_properties(path))

    def _url(self, key: str, default: str) -> str:
        return self.props.get(key, default).rstrip("/")

    @property
    def inference_url(self) -> str:
        return self._url("inference_address", "http://127.0.0.1:8080")

    @property
    def management_url(self) -> str:
        return self._url("management_address", "http://127.0.0.1:8081")

    @property
    def metrics_url(self) -> str:
        return self._url("metrics_address", "http://127.0.0.1:8082")

    @property
    def grpc_inference_target(self) -> str:
        return f"{self.props.get('grpc_inference_address', '127.0.0.1')}:{self.props.get('grpc_inference_port', '7070')}"

    @property
    def grpc_management_target(self) -> str:
        return f"{self.props.get('grpc_management_address', '127.0.0.1')}:{self.props.get('grpc_management_port', '7071')}"

    def listen_ports(self) -> dict[str, tuple[str, int]]:
        """name -> (host, port) of every socket the server binds."""
        out = {}
        for name, url in (("inference", self.inference_url), ("management", self.management_url),
                          ("metrics", self.metrics_url)):
            parts = urlsplit(url)
            out[name] = (parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80))
        for name, target in (("gRPC inference", self.grpc_inference_target),
                             ("gRPC management", self.grpc_management_target)):
            host, port = target.rsplit(":", 1)
            out[name] = (host, int(port))
        return out

    def write_copy(self, path: str | Path, ports: dict[str, int] | None = None, **overrides: str) -> "ServeConfig":
        """Write this config to `path` with other ports (keys as in listen_ports) and settings.

        metrics_config is made absolute (it is relative to the repo root in the shipped file), so
        the copy works from any working directory.
        """
        props = dict(self.props)
        if "metrics_config" in props and not os.path.isabs(props["metrics_config"]):
            props["metrics_config"] = str(REPO / props["metrics_config"])
        for name, port in (ports or {}).items():
            if name in ("inference", "management", "metrics"):
                key = f"{name}_address"
                parts = urlsplit(self._url(key, ""))
                props[key] = f"{parts.scheme}://{parts.hostname}:{port}"
            elif name == "gRPC inference":
                props["grpc_inference_port"] = str(port)
            elif name == "gRPC management":
                props["grpc_management_port"] = str(port)
            else:
                raise KeyError(name)
        props.update(overrides)
        path = Path(path)
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return ServeConfig(path, props)


def read_keys(workdir: str | Path) -> dict[str, str]:
    """{'inference': key, 'management': key, 'API': key} from key_file.json in the server's directory."""
    path = Path(workdir) / KEY_FILE
    if not path.exists():
        raise ServeError(f"{path} not found: is TorchServe running from {workdir}? "
                         "(it writes its access keys there when token authorization is on)")
    data = json.loads(path.read_text())
    return {name: entry["key"] for name, entry in data.items() if isinstance(entry, dict) and "key" in entry}


def parse_client_args(doc: str, argv: list[str] | None) -> argparse.Namespace:
    """The command line both clients share: a photo, the server's config and where its key file is."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("image", help="photo to classify (JPEG, PNG, WebP, BMP, GIF)")
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--workdir", default=str(REPO), help="where the server wrote key_file.json")
    args = parser.parse_args(argv)
    if not Path(args.image).is_file():
        parser.exit(2, f"error: no such image: {args.image}\n")
    return args
