"""Security of the served model, on the session's real TorchServe (and one private server for a tampered .mar).

test_serving.py already checks: inference over HTTP refused without / with a wrong / with the management
key, the management API refused without a token, a wrong gRPC key refused, HTTP model registration off.
Here: the rest of the surface (gRPC without any token, gRPC management, the management API with the
inference key), where every socket listens, a tampered .mar refused by the real server, and no key in
any log TorchServe wrote.
"""
import re
import time
from pathlib import Path

import grpc
import pytest
import requests

from conftest import SAMPLE, logs_of_a_failed_load
from helpers import flip_byte, rewritten_mar
from serving import server
from serving.config import KEY_FILE, MAR, ServeConfig
from serving.grpc_stubs import import_stubs

JPEG = sorted(SAMPLE.glob("hot_dog/*.jpg"))[0].read_bytes()


def grpc_call(target, method, request, key=None):
    metadata = [("authorization", f"Bearer {key}")] if key else None
    with grpc.insecure_channel(target) as channel:
        return method(channel)(request, timeout=30, metadata=metadata)


def test_grpc_without_a_token_is_refused(torchserve):
    inference_pb2, inference_pb2_grpc, management_pb2, management_pb2_grpc = import_stubs()
    keys, cfg = torchserve.keys, torchserve.cfg
    predict = lambda ch: inference_pb2_grpc.InferenceAPIsServiceStub(ch).Predictions  # noqa: E731
    request = inference_pb2.PredictionsRequest(model_name="hotdog", input={"data": JPEG})
    for key in (None, "", keys["management"], keys["API"]):
        with pytest.raises(grpc.RpcError) as refused:
            grpc_call(cfg.grpc_inference_target, predict, request, key)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, key
    assert "label" in grpc_call(cfg.grpc_inference_target, predict, request, keys["inference"]).prediction.decode()

    list_models = lambda ch: management_pb2_grpc.ManagementAPIsServiceStub(ch).ListModels  # noqa: E731
    for key in (None, keys["inference"]):
        with pytest.raises(grpc.RpcError) as refused:
            grpc_call(cfg.grpc_management_target, list_models, management_pb2.ListModelsRequest(), key)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    listed = grpc_call(cfg.grpc_management_target, list_models, management_pb2.ListModelsRequest(limit=10),
                       keys["management"])
    assert '"hotdog"' in listed.msg


def test_grpc_model_registration_is_off(torchserve):
    _, _, management_pb2, management_pb2_grpc = import_stubs()
    register = lambda ch: management_pb2_grpc.ManagementAPIsServiceStub(ch).RegisterModel  # noqa: E731
    request = management_pb2.RegisterModelRequest(url="hotdog.mar", model_name="other", initial_workers=1)
    with pytest.raises(grpc.RpcError) as refused:
        grpc_call(torchserve.cfg.grpc_management_target, register, request, torchserve.keys["management"])
    # Refused because the model API is off, not for the key or a connection problem.
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "Model API disabled" in refused.value.details()
    assert "other" not in requests.get(f"{torchserve.cfg.management_url}/models",
                                       headers=torchserve.management_headers(), timeout=30).text


def test_management_refuses_the_inference_key(torchserve):
    for path in ("/models", "/models/hotdog"):
        r = requests.get(f"{torchserve.cfg.management_url}{path}",
                         headers={"Authorization": f"Bearer {torchserve.keys['inference']}"}, timeout=30)
        assert r.status_code in (400, 401) and "Token Authorization failed" in r.json()["message"]


def listening_sockets() -> dict[int, set[str]]:
    """port -> local addresses of every listening TCP socket (IPv4 and IPv6), from /proc/net."""
    out = {}
    for name in ("tcp", "tcp6"):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":  # LISTEN
                addr, port = local.split(":")
                out.setdefault(int(port, 16), set()).add(addr)
    return out


def test_every_socket_listens_on_loopback_only(torchserve):
    shipped = ServeConfig.load()
    for name, (host, _) in shipped.listen_ports().items():
        assert host == "127.0.0.1", f"shipped config binds {name} to {host}"
    assert shipped.props.get("enable_model_api", "false") == "false"
    listening = listening_sockets()
    # 127.0.0.1, ::1 and ::ffff:127.0.0.1 (Java's IPv4 socket on a dual-stack host) as /proc writes them
    loopback = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}
    for name, (_, port) in torchserve.cfg.listen_ports().items():
        assert port in listening, f"{name} port {port} is not listening"
        assert listening[port] <= loopback, f"{name} port {port} listens on {listening[port]}, not loopback only"


def test_real_server_refuses_tampered_weights(tmp_path):
    # One byte of model.pt flipped, manifest.json (with its sha256) untouched.
    mar = rewritten_mar(tmp_path / "store" / "hotdog.mar", "model.pt", flip_byte)
    logs = logs_of_a_failed_load(tmp_path, mar)
    assert not server._read_pid(tmp_path / "tmp")  # start() stopped it
    assert re.search(r"sha256 \w+… does not match the manifest .*refusing to load", logs), logs[-2000:]


def test_no_key_in_any_log(torchserve):
    # Some traffic first, refused and accepted, so request logging has happened.
    url = f"{torchserve.cfg.inference_url}/predictions/hotdog"
    requests.post(url, data=JPEG, headers={**torchserve.inference_headers(), "Content-Type": "image/jpeg"}, timeout=60)
    requests.post(url, data=JPEG, headers={"Authorization": f"Bearer {torchserve.keys['management']}"}, timeout=60)
    requests.get(f"{torchserve.cfg.management_url}/models", headers=torchserve.management_headers(), timeout=30)
    time.sleep(1)  # log appenders flush
    logs = list((torchserve.workdir / "logs").rglob("*"))
    texts = {p.name: p.read_text(errors="replace") for p in logs if p.is_file()}
    assert "ts_log.log" in texts and "access_log.log" in texts
    assert any("/predictions/hotdog" in t for t in texts.values())  # requests are logged, just not keys
    for kind, key in torchserve.keys.items():
        leaks = [name for name, text in texts.items() if key in text]
        assert not leaks, f"the {kind} key appears in {leaks}"


def test_tls_settings_serve_https_and_grpc_over_tls(tmp_path, monkeypatch):
    """The README's TLS recipe (private_key_file / certificate_file, enable_grpc_ssl) on a real server."""
    import shutil
    import subprocess

    from serving.config import ServeConfig
    from serving.grpc_stubs import import_stubs
    from bench.harness import free_ports

    if not shutil.which("openssl"):
        pytest.fail("openssl not installed (needed to make a test certificate; .ci/run.d/web-deps.sh installs it)")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    p = free_ports(5)
    cfg = ServeConfig.load().write_copy(
        tmp_path / "config.properties", {"gRPC inference": p[3], "gRPC management": p[4]},
        inference_address=f"https://127.0.0.1:{p[0]}", management_address=f"https://127.0.0.1:{p[1]}",
        metrics_address=f"https://127.0.0.1:{p[2]}", private_key_file=str(key), certificate_file=str(cert),
        enable_grpc_ssl="true")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))  # server.start's readiness checks trust it too
    (tmp_path / "work").mkdir()
    srv = server.start(cfg, tmp_path / "work", tmp_path / "tmp", MAR, timeout=120)
    try:
        url = f"{cfg.inference_url}/predictions/hotdog"
        headers = {**srv.inference_headers(), "Content-Type": "image/jpeg"}
        assert requests.post(url, data=JPEG, headers=headers, timeout=60).json()["label"]
        plain = requests.post(url.replace("https://", "http://"), data=JPEG, headers=headers, timeout=30)
        assert plain.status_code != 200 and "only accepts HTTPS" in plain.text
        inference_pb2, inference_pb2_grpc, _, _ = import_stubs()
        creds = grpc.ssl_channel_credentials(cert.read_bytes())
        with grpc.secure_channel(cfg.grpc_inference_target, creds) as channel:
            answer = inference_pb2_grpc.InferenceAPIsServiceStub(channel).Predictions(
                inference_pb2.PredictionsRequest(model_name="hotdog", input={"data": JPEG}), timeout=60,
                metadata=[("authorization", f"Bearer {srv.keys['inference']}")])
        assert b'"label"' in answer.prediction

        # The web proxy speaks TLS to an https:// TorchServe, and renews its key over TLS too.
        from web.proxy import Settings, Upstream

        key_file = tmp_path / "work" / KEY_FILE
        upstream = Upstream(Settings(cfg.inference_url, cfg.management_url, key_file))
        status, body = upstream.predict(JPEG)
        assert status == 200 and body["label"], body
        before, old = key_file.read_text(), srv.keys["inference"]
        renew = requests.get(f"{cfg.management_url}/token?type=inference",
                             headers={"Authorization": f"Bearer {srv.keys['API']}"}, timeout=30)
        assert renew.status_code == 200
        key_file.write_text(before)  # the proxy's key is refused, and the file still holds it
        status, body = upstream.predict(JPEG)
        assert status == 200 and body["label"], body
        assert srv.keys["inference"] != old
    finally:
        server.stop(tmp_path / "work", tmp_path / "tmp")
