"""The web page's server: static files plus one prediction endpoint in front of TorchServe.

    python -m web.proxy                # http://127.0.0.1:8090, next to a running `make serve`
    python -m web.proxy --lan          # listen on every interface, so a phone on the same Wi-Fi can open it

Why a proxy: TorchServe enforces token authorization, and a token in the page would be a token in
every browser that opens it. The browser talks only to this server, which

* serves exactly three static files (index.html, app.js, style.css) and `GET /api/config`;
* forwards `POST /api/predict` to TorchServe's `/predictions/<model>` (nothing else of TorchServe's
  inference, management or metrics APIs is reachable) in any body TorchServe takes: raw image bytes,
  a multipart form (`curl -F file=@photo.jpg`) or JSON with the image in base64; adding `Authorization: Bearer <inference key>`
  read from TorchServe's key_file.json, and renewing that key with the API key when it expires
  (serving.config.InferenceKey, which the command-line clients share); over TLS when TorchServe's
  address is https://;
* caps the upload size, and turns "TorchServe is down" and TorchServe's own errors into JSON
  `{"error": "<words>", "status": <code>}` that the page can show;
* answers only to loopback host names unless started with --lan (defeats DNS rebinding), sends a
  strict Content-Security-Policy, and never logs bodies or headers.

Standard library only (plus serving.config, which reads TorchServe's addresses from
serve_config/config.properties, the one place they are defined, and keeps its key current).
"""
from __future__ import annotations

import argparse
import errno
import http.client
import http.server
import json
import logging
import socket
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from serving.config import CONFIG as DEFAULT_TS_CONFIG
from serving.config import (KEY_FILE, MODEL_NAME, REPO, InferenceKey, ServeConfig, ServeError, TokenError,
                            http_connection, http_key_refused)

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_WEIGHTS = REPO / "weights"
DEFAULT_PORT = 8090
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}
# Uploads are shrunk by the page to ~30 KB; the cap is for files the browser cannot shrink.
DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
# An oversized body is read and dropped (so the browser sees the 413, not a reset connection)
# only up to this much; beyond it the connection is closed unread.
DRAIN_LIMIT = 64 * 1024 * 1024
# The page uploads the shorter side at this multiple of the model's resize_size: the server's
# antialiased resize still does the last step, and more pixels than this change nothing.
UPLOAD_SCALE = 2

# path -> (file, content type); nothing else under web/ is ever served.
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

log = logging.getLogger("hotdog.web")


# ---- Configuration ------------------------------------------------------------------------------


def _loopback_url(address: str) -> str:
    """TorchServe may bind 0.0.0.0; the proxy connects to it over loopback."""
    parts = urllib.parse.urlsplit(address)
    host = parts.hostname or "127.0.0.1"  # urlsplit drops an IPv6 literal's brackets
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"  # without them the address's colons would read as the port's
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme or 'http'}://{host}:{port}"


@dataclass
class Settings:
    inference_url: str
    management_url: str | None
    key_file: Path
    model: str = MODEL_NAME
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    timeout_s: float = 30.0
    lan: bool = False
    page_config: dict = field(default_factory=dict)


def page_config(weights: Path, model: str, max_upload_bytes: int, timeout_s: float) -> dict:
    """What the page needs to know (GET /api/config): labels and sizes from the shipped spec."""
    spec = json.loads((weights / "preprocess.json").read_text())
    labels = list(spec["labels"])
    return {
        "model": model,
        "labels": labels,
        "input_size": int(spec["input_size"]),
        "resize_size": int(spec["resize_size"]),
        "upload_short_side": UPLOAD_SCALE * int(spec["resize_size"]),
        "jpeg_quality": 0.9,
        "max_upload_bytes": max_upload_bytes,
        "timeout_s": timeout_s,
    }


# ---- Forwarding ---------------------------------------------------------------------------------


class Upstream:
    """POSTs an image to TorchServe's predictions endpoint and returns (status, JSON body) for the page."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.path = f"/predictions/{urllib.parse.quote(settings.model, safe='')}"
        self.token = InferenceKey(settings.key_file, settings.management_url)

    def _post(self, body: bytes, key: str, content_type: str) -> tuple[int, bytes]:
        # TLS when TorchServe's address is https:// (README "Running exposed").
        conn = http_connection(self.settings.inference_url, self.settings.timeout_s)
        try:
            conn.request("POST", self.path, body=body, headers={
                "Content-Type": upstream_content_type(content_type),
                "Authorization": f"Bearer {key}",
            })
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def predict(self, body: bytes, content_type: str = "application/octet-stream") -> tuple[int, dict]:
        down = ("The hot dog model server is not running on the computer behind this page. "
                "Start it there, then try again.")
        try:
            # An expired (or replaced) key is renewed and the photo sent once more.
            status, raw = self.token.call(lambda key: self._post(body, key, content_type), http_key_refused)
        except TokenError as e:
            log.error("token: %s", e)
            if not self.token.key_file.exists():
                return 503, _error(503, down)
            return 502, _error(502, "This page lost its access to the model server (it was restarted). "
                                    "Restart the page on the computer, then try again.")
        except (ConnectionRefusedError, ConnectionResetError, socket.gaierror) as e:
            log.warning("TorchServe unreachable at %s: %s", self.settings.inference_url, e)
            return 503, _error(503, down)
        except TimeoutError:
            return 504, _error(504, f"The model server did not answer within {self.settings.timeout_s:g} seconds.")
        except (OSError, http.client.HTTPException) as e:
            log.warning("TorchServe request failed: %s", e)
            return 502, _error(502, "The model server broke off the answer. Try again.")
        return _translate(status, raw, self.settings.model)


def upstream_content_type(content_type: str) -> str:
    """The Content-Type sent on to TorchServe. Multipart forms and JSON go as they came: TorchServe
    takes the image out of the field, or the handler decodes the base64. Anything else goes as bytes
    (octet-stream), so a photo sent with curl's default form encoding still reaches the handler whole."""
    if content_type.split(";")[0].strip().lower() in ("multipart/form-data", "application/json"):
        return content_type
    return "application/octet-stream"


def _error(status: int, message: str) -> dict:
    return {"error": message, "status": status}


def _translate(status: int, raw: bytes, model: str) -> tuple[int, dict]:
    """TorchServe's answer -> (status, body) for the page: predictions and handler errors pass through,
    TorchServe's own errors ({"code", "type", "message"}) become {"error", "status"} in words."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if status == 200:
        if isinstance(body, dict) and isinstance(body.get("label"), str):
            return 200, body
        log.error("TorchServe answered 200 without a prediction: %.200r", raw)
        return 502, _error(502, "The model server's answer was not a prediction.")
    if isinstance(body, dict) and "error" in body:  # the handler's own per-item error
        return status, {"error": str(body["error"]), "status": status}
    kind = body.get("type", "") if isinstance(body, dict) else ""
    message = body.get("message", "") if isinstance(body, dict) else ""
    if status == 404 and kind == "ModelNotFoundException":
        return 503, _error(503, f"The model server is running but the {model!r} model is not loaded. "
                                "Restart the model server on the computer, then try again.")
    if status == 413:
        return 413, _error(413, "The image is larger than the model server accepts.")
    if status in (500, 503, 507) or kind in ("ServiceUnavailableException",):
        return 503, _error(503, f"The model server is busy or has no worker ready ({message or status}). Try again.")
    if 400 <= status < 500:
        return status, _error(status, message or f"The model server refused the image (HTTP {status}).")
    return 502, _error(502, f"The model server failed (HTTP {status}{': ' + message if message else ''}).")


# ---- HTTP ---------------------------------------------------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "hotdog-web"
    protocol_version = "HTTP/1.1"
    timeout = 60  # a client that stops sending frees its thread

    settings: Settings
    upstream: Upstream

    # -- plumbing

    def handle(self) -> None:
        try:
            super().handle()
        except ConnectionError:  # the client hung up; nothing left to answer
            self.close_connection = True

    def handle_expect_100(self) -> bool:
        # A client that asks first (Expect: 100-continue) learns about the size cap before sending the body.
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = 0
        if self.command == "POST" and length > self.settings.max_upload_bytes:
            self.close_connection = True
            self._too_large(length)
            return False
        return super().handle_expect_100()

    def _too_large(self, length: int) -> None:
        limit = self.settings.max_upload_bytes
        self._json(413, _error(413, f"The image is {length / 2**20:.1f} MB; the limit is {limit / 2**20:.0f} MB."))

    def version_string(self) -> str:
        return self.server_version  # no Python version in the Server header

    def log_message(self, format, *args):  # noqa: A002 - BaseHTTPRequestHandler's signature
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None,
              cache: str = "no-store") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        for name, value in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: dict, extra: dict | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", extra)

    def _host_ok(self) -> bool:
        """Loopback mode answers only to loopback host names, so a web page on another origin
        cannot reach it by pointing its own DNS name at 127.0.0.1 (DNS rebinding)."""
        if self.settings.lan:
            return True
        host = self.headers.get("Host", "")
        name = urllib.parse.urlsplit(f"//{host}").hostname or ""
        if name in LOOPBACK_HOSTS:
            return True
        log.warning("refused a request for Host %r (loopback mode)", host)
        self.close_connection = True
        self._json(403, _error(403, f"This server answers only on localhost (got Host {host!r}); "
                                    "start it with --lan to open it from another device."))
        return False

    def _path(self) -> str:
        return urllib.parse.urlsplit(self.path).path

    def _not_found(self) -> None:
        self._json(404, _error(404, "Not found. This server exposes only the page and POST /api/predict."))

    # -- methods

    def do_GET(self):  # noqa: N802
        started = time.monotonic()
        if not self._host_ok():
            return
        path = self._path()
        if path in STATIC_FILES:
            name, content_type = STATIC_FILES[path]
            self._send(200, (STATIC_DIR / name).read_bytes(), content_type, cache="no-cache")
        elif path == "/api/config":
            self._json(200, self.settings.page_config)
        elif path == "/api/predict":
            self._json(405, _error(405, "Send the photo with POST."), {"Allow": "POST"})
        else:
            self._not_found()
        self._access(started, 0)

    do_HEAD = do_GET

    def do_POST(self):  # noqa: N802
        started = time.monotonic()
        if not self._host_ok():
            return
        if self._path() != "/api/predict":
            self.close_connection = True  # its body is not read
            self._not_found()
            return self._access(started, 0)
        length = self._content_length()
        if length is None:
            return self._access(started, 0)
        if length > self.settings.max_upload_bytes:
            self._discard(length)
            self._too_large(length)
            return self._access(started, length)
        if length == 0:
            self._json(400, _error(400, "No image received (the upload was empty)."))
            return self._access(started, 0)
        try:
            body = self.rfile.read(length)
        except OSError:  # the client went away mid-upload
            body = b""
        if len(body) != length:
            self.close_connection = True
            return self._access(started, len(body), "upload cut short")
        status, answer = self.upstream.predict(body, self.headers.get("Content-Type", ""))
        self._json(status, answer)
        self._access(started, length, answer.get("label") or answer.get("error"))

    def _content_length(self) -> int | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._json(411, _error(411, "Send the image with a Content-Length."))
            return None
        try:
            length = int(self.headers.get("Content-Length", ""))
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            self._json(411, _error(411, "Send the image with a Content-Length."))
            return None
        return length

    def _discard(self, length: int) -> None:
        if length > DRAIN_LIMIT:
            self.close_connection = True
            return
        remaining = length
        try:
            while remaining:
                chunk = self.rfile.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                remaining -= len(chunk)
        except OSError:  # the client gave up (reset or timeout)
            pass
        if remaining:
            self.close_connection = True

    def _refuse_method(self):
        if not self._host_ok():
            return
        self.close_connection = True
        if self._path() == "/api/predict":
            self._json(405, _error(405, "Send the photo with POST."), {"Allow": "POST"})
        else:
            self._not_found()

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method

    def _access(self, started: float, nbytes: int, outcome: str | None = None) -> None:
        # One line per request; never bodies, never headers (the Authorization header lives upstream only).
        log.info('%s "%s %s" %d in=%dB %.0fms%s', self.client_address[0], self.command, self._path(),
                 getattr(self, "_status", 0), nbytes, (time.monotonic() - started) * 1000,
                 f" {outcome}" if outcome else "")

    def send_response(self, code, message=None):
        self._status = code
        super().send_response(code, message)


class WebServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], settings: Settings):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        handler = type("BoundHandler", (Handler,), {"settings": settings, "upstream": Upstream(settings)})
        super().__init__(address, handler)


# ---- CLI ----------------------------------------------------------------------------------------


def lan_addresses() -> list[str]:
    """This machine's address on the LAN (the one its default route uses); no packet is sent."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            return [s.getsockname()[0]]
        except OSError:
            return []


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m web.proxy", description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group()
    where.add_argument("--lan", action="store_true",
                       help="listen on all interfaces so a phone on the same network can open the page")
    where.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT}; 0 = any free port)")
    p.add_argument("--config", type=Path, default=DEFAULT_TS_CONFIG,
                   help="TorchServe's config.properties, to read its addresses from (as for make serve)")
    p.add_argument("--workdir", type=Path, default=REPO,
                   help="the directory TorchServe was started in, where it wrote key_file.json (as for make serve)")
    p.add_argument("--key-file", type=Path, help="TorchServe's key file (default: WORKDIR/key_file.json)")
    p.add_argument("--inference-url", help="TorchServe inference address (default: from --config)")
    p.add_argument("--management-url", help="TorchServe management address, to renew an expired key (default: from --config)")
    p.add_argument("--model", default=MODEL_NAME, help="the model name TorchServe serves")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="folder with preprocess.json (labels, sizes)")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_BYTES / 2**20, help="largest upload accepted")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for TorchServe")
    p.add_argument("--check", action="store_true",
                   help="only check whether TorchServe answers (exit 0) or not (exit 1), then exit")
    p.add_argument("--ready-file", type=Path, help="write 'host port' here once listening (for scripts and tests)")
    return p.parse_args(argv)


def build_settings(args: argparse.Namespace) -> Settings:
    ts = ServeConfig.load(args.config)
    inference = args.inference_url or _loopback_url(ts.inference_url)
    management = args.management_url or _loopback_url(ts.management_url)
    max_bytes = int(args.max_upload_mb * 2**20)
    return Settings(
        inference_url=inference.rstrip("/"),
        management_url=management.rstrip("/"),
        key_file=(args.key_file or args.workdir / KEY_FILE).resolve(),
        model=args.model,
        max_upload_bytes=max_bytes,
        timeout_s=args.timeout,
        lan=args.lan or (args.host not in (None, "127.0.0.1", "localhost", "::1")),
        page_config=page_config(args.weights, args.model, max_bytes, args.timeout),
    )


def torchserve_listening(settings: Settings) -> bool:
    parts = urllib.parse.urlsplit(settings.inference_url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=2).close()
        return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    try:
        settings = build_settings(args)
    except (ServeError, OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.check:
        return 0 if torchserve_listening(settings) else 1
    host = "0.0.0.0" if args.lan else (args.host or "127.0.0.1")
    try:
        server = WebServer((host, args.port), settings)
    except OSError as e:
        # `make web` takes the port as WEB_PORT (PORT is not read).
        taken = (" (another program uses the port; pick another with `make web WEB_PORT=...` or --port)"
                 if e.errno == errno.EADDRINUSE else "")
        print(f"error: cannot listen on {host}:{args.port}: {e.strerror or e}{taken}", file=sys.stderr)
        return 2
    port = server.server_address[1]
    if not torchserve_listening(settings):
        log.warning("TorchServe is not answering at %s; the page will say the server is down "
                    "until it is (start it with `make serve`).", settings.inference_url)
    urls = [f"http://127.0.0.1:{port}/"] if host in ("127.0.0.1", "0.0.0.0") else [f"http://{host}:{port}/"]
    if settings.lan:
        urls += [f"http://{ip}:{port}/" for ip in lan_addresses() if host in ("0.0.0.0", ip)]
        log.warning("listening on the network: anyone who can reach this machine can use the page "
                    "(only the page and predictions; TorchServe and its token stay private)")
    log.info("hotdog web page on %s -> TorchServe %s/predictions/%s", "  ".join(urls),
             settings.inference_url, settings.model)
    if args.ready_file:
        args.ready_file.write_text(f"{server.server_address[0]} {port}\n")
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
