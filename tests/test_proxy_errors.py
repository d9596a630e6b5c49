"""web/proxy.py's error translation: what the page is told for each way TorchServe (or the client) fails.

The real proxy (web.proxy.WebServer) runs in a thread in front of an upstream that answers the way
TorchServe's frontend does in its failure modes (the real server cannot be made to answer 507 or hang on
cue); test_web.py covers the proxy in front of a real TorchServe.
"""
import contextlib
import http.client
import http.server
import json
import socket
import threading
import time

import pytest

from bench.harness import free_ports
from conftest import REPO
from web import proxy

PREDICTION = {"label": "hot_dog", "is_hotdog": True, "confidence": 0.9,
              "probabilities": {"hot_dog": 0.9, "not_hot_dog": 0.1}, "model_version": "abc"}


class FakeTorchServe(http.server.ThreadingHTTPServer):
    """Answers every POST with `answer` (status, body bytes), after `delay` seconds; `garbled` sends a
    broken status line instead, as a frontend dying mid-answer can."""
    daemon_threads = True

    def __init__(self):
        self.answer, self.delay, self.garbled, self.seen = (200, json.dumps(PREDICTION).encode()), 0.0, False, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.seen.append((self.path, dict(self.headers), body))
                time.sleep(outer.delay)
                if outer.garbled:
                    self.close_connection = True
                    self.wfile.write(b"HTTP/1.1 2\x00\r\n\r\n")
                    return
                status, raw = outer.answer
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@contextlib.contextmanager
def serving(server):
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def key_file(folder):
    path = folder / "key_file.json"
    path.write_text(json.dumps({name: {"key": f"{name}-key", "expiration time": "never"}
                                for name in ("management", "inference", "API")}))
    return path


@pytest.fixture
def upstream():
    with serving(FakeTorchServe()) as server:
        yield server


def start_page(tmp_path, inference_url: str, **settings):
    settings = {"inference_url": inference_url, "management_url": inference_url, "key_file": key_file(tmp_path),
                "timeout_s": 2.0, "max_upload_bytes": 1000, **settings}
    return serving(proxy.WebServer(("127.0.0.1", 0), proxy.Settings(**settings)))


@pytest.fixture
def page(tmp_path, upstream):
    with start_page(tmp_path, f"http://127.0.0.1:{upstream.server_address[1]}") as server:
        yield f"127.0.0.1:{server.server_address[1]}"


def post(page: str, body: bytes = b"\xff\xd8 a photo", headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(page, timeout=30)
    try:
        conn.request("POST", "/api/predict", body=body, headers={"Content-Type": "image/jpeg", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def torchserve_error(status: int, kind: str, message: str) -> tuple[int, bytes]:
    return status, json.dumps({"code": status, "type": kind, "message": message}).encode()


@pytest.mark.parametrize("answer,status,words", [
    (torchserve_error(404, "ModelNotFoundException", "Model not found: hotdog"), 503, "model is not loaded"),
    (torchserve_error(503, "ServiceUnavailableException", "No worker is available"), 503, "busy"),
    (torchserve_error(500, "InternalServerException", "Worker died"), 503, "Worker died"),
    (torchserve_error(507, "InsufficientStorage", "Out of memory"), 503, "busy"),
    ((413, b""), 413, "larger than the model server accepts"),
    ((415, json.dumps({"error": "not an image: a PDF document", "status": 415}).encode()), 415, "a PDF document"),
    (torchserve_error(400, "BadRequestException", "Parameter data is required"), 400, "Parameter data is required"),
    (torchserve_error(505, "HttpVersionNotSupported", "no"), 502, "HTTP 505"),
    ((200, b"<html>not json</html>"), 502, "not a prediction"),
    ((200, json.dumps({"probabilities": [0.1, 0.9]}).encode()), 502, "not a prediction"),
], ids=["model_not_loaded", "no_worker", "worker_died", "507", "413", "handler_error", "400", "505",
        "200_not_json", "200_not_a_prediction"])
def test_torchserve_errors_become_words_and_a_status(page, upstream, answer, status, words):
    upstream.answer = answer
    got, body = post(page)
    assert (got, body["status"]) == (status, status) and words in body["error"], body
    assert set(body) == {"error", "status"}


def test_a_prediction_passes_through_with_the_key_and_the_image(page, upstream):
    assert post(page) == (200, PREDICTION)
    path, headers, body = upstream.seen[-1]
    assert path == "/predictions/hotdog" and headers["Authorization"] == "Bearer inference-key"
    assert body == b"\xff\xd8 a photo" and headers["Content-Type"] == "application/octet-stream"


def test_a_slow_torchserve_is_a_504_and_a_broken_answer_a_502(page, upstream):
    upstream.delay = 3.0  # the page waits timeout_s = 2
    status, body = post(page)
    assert status == 504 and "did not answer within 2 seconds" in body["error"]
    upstream.delay, upstream.garbled = 0.0, True
    status, body = post(page)
    assert status == 502 and "broke off" in body["error"]


def test_torchserve_not_running_or_without_its_key_file_is_a_503(tmp_path):
    [port] = free_ports(1)  # nothing listens there
    with start_page(tmp_path, f"http://127.0.0.1:{port}") as server:
        status, body = post(f"127.0.0.1:{server.server_address[1]}")
    assert status == 503 and "not running" in body["error"]
    with serving(FakeTorchServe()) as up, start_page(tmp_path, f"http://127.0.0.1:{up.server_address[1]}",
                                                     key_file=tmp_path / "missing.json") as server:
        status, body = post(f"127.0.0.1:{server.server_address[1]}")
    assert status == 503 and "not running" in body["error"] and not up.seen


def raw_request(page: str, head: str, body: bytes = b"", wait_for_continue: bool = False) -> tuple[bytes, bytes]:
    """Send request headers (and body) on a bare socket: (what came back before the body, the final answer)."""
    host, port = page.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        interim = b""
        if wait_for_continue:
            interim = s.recv(65536)
            if not interim.startswith(b"HTTP/1.1 100"):  # a final answer instead: read it to the close
                while chunk := s.recv(65536):
                    interim += chunk
                return interim, interim
        s.sendall(body)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        return interim, answer


def test_length_problems_are_411_and_400(page, upstream):
    chunked = "POST /api/predict HTTP/1.1\nHost: 127.0.0.1\nTransfer-Encoding: chunked\n\n"
    assert raw_request(page, chunked, b"5\r\nhello\r\n0\r\n\r\n")[1].startswith(b"HTTP/1.1 411")
    no_length = "POST /api/predict HTTP/1.1\nHost: 127.0.0.1\nConnection: close\n\n"
    assert raw_request(page, no_length)[1].startswith(b"HTTP/1.1 411")
    status, body = post(page, b"")
    assert status == 400 and "empty" in body["error"]
    assert not upstream.seen  # none of these reached TorchServe


def test_expect_100_continue_refuses_an_oversized_upload_before_its_body(page, upstream):
    head = "POST /api/predict HTTP/1.1\nHost: 127.0.0.1\nContent-Type: image/jpeg\nExpect: 100-continue\n"
    interim, answer = raw_request(page, head + "Content-Length: 5000\n", b"x" * 5000, wait_for_continue=True)
    assert interim.startswith(b"HTTP/1.1 413") and b"the limit is" in answer  # max_upload_bytes = 1000
    interim, answer = raw_request(page, head + "Content-Length: 10\nConnection: close\n", b"0123456789",
                                  wait_for_continue=True)
    assert interim.startswith(b"HTTP/1.1 100") and answer.split(b"\r\n")[0] == b"HTTP/1.1 200 OK"
    assert upstream.seen[-1][2] == b"0123456789"
    assert len(upstream.seen) == 1  # the refused one never went on


def test_check_says_whether_torchserve_listens(tmp_path, upstream):
    url = f"http://127.0.0.1:{upstream.server_address[1]}"
    args = ["--check", "--inference-url", url, "--management-url", url, "--key-file", str(key_file(tmp_path)),
            "--weights", str(REPO / "weights")]
    assert proxy.main(args) == 0
    [port] = free_ports(1)
    down = f"http://127.0.0.1:{port}"
    assert proxy.main(["--check", "--inference-url", down, "--management-url", down, *args[5:]]) == 1
