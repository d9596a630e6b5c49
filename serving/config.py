"""Where the server listens and where its files live: read from serve_config/config.properties.

config.properties is the one definition of addresses and ports; `make serve`, the clients and the
tests all read it here. Tests (and anyone running a second server) write a copy with other ports.
InferenceKey is the one place the clients and the web proxy get (and renew) TorchServe's inference key.
"""
from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar
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

log = logging.getLogger("hotdog.serving")
T = TypeVar("T")


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


def _no_key_file(path: Path) -> str:
    return (f"{path} not found: is TorchServe running from {path.parent}? "
            "(it writes its access keys there when token authorization is on)")


def _parse_keys(text: str) -> dict[str, str]:
    """key_file.json's text -> {'inference': key, 'management': key, 'API': key}."""
    data = json.loads(text)
    return {name: entry["key"] for name, entry in data.items() if isinstance(entry, dict) and "key" in entry}


def read_keys(workdir: str | Path) -> dict[str, str]:
    """{'inference': key, 'management': key, 'API': key} from key_file.json in the server's directory."""
    path = Path(workdir) / KEY_FILE
    if not path.exists():
        raise ServeError(_no_key_file(path))
    return _parse_keys(path.read_text())


# ---- Calling TorchServe with a key that expires ----------------------------------------------------
# Standard library only: web/proxy.py uses this too.


class TokenError(ServeError):
    """TorchServe's inference key could not be read or renewed."""


def http_connection(url: str, timeout: float) -> http.client.HTTPConnection:
    """A standard-library connection to `url`'s host, over TLS for an https:// address.

    The certificate is verified: against REQUESTS_CA_BUNDLE when set (the variable the requests-based
    clients honour, so one setting trusts a private CA everywhere), otherwise the system's CAs.
    """
    parts = urlsplit(url)
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=os.environ.get("REQUESTS_CA_BUNDLE") or None)
        return http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=context)
    return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)


def http_key_refused(answer: object) -> bool:
    """For InferenceKey.call: is an HTTP answer, (status, JSON body or its bytes), TorchServe refusing the key?

    TorchServe 0.12 answers a missing, wrong, expired or replaced key with 400 InvalidKeyException
    (401 in later versions). Anything else (another answer, an exception) is not about the key.
    """
    if not isinstance(answer, tuple):
        return False
    status, body = answer
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except ValueError:
            return False
    return status in (400, 401) and isinstance(body, dict) and body.get("type") == "InvalidKeyException"


class InferenceKey:
    """TorchServe's inference key for every client (web proxy, make predict / predict-grpc / serve-parity).

    Keys expire (token_expiration_min, 60 min by default), and TorchServe never rewrites key_file.json
    on its own: only a call to the management API's `GET /token?type=inference` with the API key (which
    does not expire) issues a new inference key and rewrites the file. So a refused key is renewed here,
    by whichever client meets the refusal first; the others find the new key in the file. The keys go
    to TorchServe only.
    """

    def __init__(self, key_file: Path, management_url: str | None, timeout_s: float = 10.0):
        self.key_file = Path(key_file)
        self.management_url = management_url
        self.timeout_s = timeout_s
        self._lock = threading.Lock()  # one renewal at a time (parity and the proxy call from threads)
        self._stamp: tuple[int, int] | None = None
        self._keys: dict = {}

    @classmethod
    def of_server(cls, cfg: ServeConfig, workdir: str | Path) -> "InferenceKey":
        """The key of the server running with `cfg` from `workdir` (where it wrote key_file.json)."""
        return cls(Path(workdir) / KEY_FILE, cfg.management_url)

    def _load(self) -> dict:
        """The key file's keys by name, re-read only when the file changed."""
        try:
            st = self.key_file.stat()
        except FileNotFoundError:
            raise TokenError(_no_key_file(self.key_file)) from None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                self._keys = _parse_keys(self.key_file.read_text())
            except (OSError, ValueError) as e:
                raise TokenError(f"cannot read TorchServe's key file {self.key_file}: {e}") from None
            self._stamp = stamp
        return self._keys

    def _inference(self) -> str:
        key = self._load().get("inference")
        if not key:
            raise TokenError(f"no inference key in {self.key_file}")
        return key

    def get(self) -> str:
        with self._lock:
            return self._inference()

    def renew(self, rejected: str) -> str:
        """TorchServe refused `rejected`: take a newer key from the file, or ask TorchServe for one."""
        with self._lock:
            self._stamp = None  # a rewrite within the clock's resolution keeps mtime and size
            key = self._inference()
            return key if key != rejected else self._renew_locked(key)

    def _renew_locked(self, old: str) -> str:
        api_key = self._load().get("API")
        if not (api_key and self.management_url):
            raise TokenError("the inference key expired and no API key/management address is available to renew it")
        conn = http_connection(self.management_url, self.timeout_s)
        try:
            conn.request("GET", "/token?type=inference", headers={"Authorization": f"Bearer {api_key}"})
            resp = conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise TokenError(f"renewing the inference key at {self.management_url} failed: {e}") from None
        finally:
            conn.close()
        if resp.status != 200:
            raise TokenError(f"renewing the inference key failed: management API answered HTTP {resp.status}")
        self._stamp = None  # TorchServe rewrote the file
        key = self._inference()
        if key == old:
            raise TokenError("TorchServe did not issue a new inference key")
        log.info("renewed TorchServe's inference key")
        return key

    def call(self, attempt: Callable[[str], T], refused: Callable[[object], bool]) -> T:
        """attempt(key), and once more with a renewed key if TorchServe refused that one.

        `refused` is asked about attempt's answer, or about the exception it raised (over gRPC a
        refused key is an error); exceptions it does not recognise propagate unchanged.
        """
        key = self.get()
        try:
            answer = attempt(key)
        except Exception as e:  # noqa: BLE001 - only to ask `refused`; re-raised otherwise
            if not refused(e):
                raise
        else:
            if not refused(answer):
                return answer
        return attempt(self.renew(key))


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
