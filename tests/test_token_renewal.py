"""TorchServe's keys expire, and every client renews its inference key (serving.config.InferenceKey).

A real TorchServe whose keys live 6 s (token_expiration_min=0.1; 60 min by default). Once the key in
key_file.json has expired TorchServe refuses it, so a client that only reads the file would fail;
`make predict`, `make predict-grpc`, `make serve-parity` and the web proxy still get their answers.
"""
import datetime as dt
import json
import threading
import time

import pytest
import requests

from conftest import SAMPLE, serve_config_copy
from bench import parity
from serving import grpc_client, http_client, server
from serving.config import KEY_FILE, MAR, REPO, ServeError, http_key_refused, read_keys

LIFETIME_MIN = "0.1"  # TorchServe reads token_expiration_min as a double: 6 s
PHOTO = sorted((SAMPLE / "hot_dog").glob("*.jpg"))[0]


def keep_management_key_fresh(srv_cfg, workdir, done: threading.Event) -> None:
    """server.start polls readiness with the management key, which expires as fast as the inference
    key: renew it (with the API key, which never expires) until the server is READY."""
    while not done.wait(1.0):
        try:
            api_key = read_keys(workdir)["API"]
            requests.get(f"{srv_cfg.management_url}/token?type=management",
                         headers={"Authorization": f"Bearer {api_key}"}, timeout=5)
        except (ServeError, requests.RequestException, ValueError, KeyError):
            pass  # not listening, or the key file not (fully) written yet


@pytest.fixture(scope="module")
def short_lived(torchserve, tmp_path_factory):
    """A private TorchServe with 6-second keys. (`torchserve` first: its fixture checks hotdog.mar is current.)"""
    base = tmp_path_factory.mktemp("short-keys")
    workdir, tmpdir = base / "work", base / "tmp"
    workdir.mkdir()
    cfg = serve_config_copy(base, token_expiration_min=LIFETIME_MIN)
    ready = threading.Event()
    renewer = threading.Thread(target=keep_management_key_fresh, args=(cfg, workdir, ready), daemon=True)
    renewer.start()
    try:
        srv = server.start(cfg, workdir, tmpdir, MAR, timeout=180)
    finally:
        ready.set()
        renewer.join()
    try:
        yield srv
    finally:
        server.stop(workdir, tmpdir)


def expired_inference_key(srv) -> str:
    """Wait until the inference key in key_file.json has expired; return it, checked refused by TorchServe."""
    entry = json.loads((srv.workdir / KEY_FILE).read_text())["inference"]
    expires = dt.datetime.fromisoformat(entry["expiration time"]).timestamp()
    time.sleep(max(0.0, expires - time.time()) + 0.5)
    refused = http_client.predict_bytes(PHOTO.read_bytes(), srv.cfg.inference_url, entry["key"])
    # What a client reads from the file is now refused: without renewal each call below would fail.
    assert http_key_refused(refused), refused
    assert read_keys(srv.workdir)["inference"] == entry["key"]  # TorchServe did not replace it by itself
    return entry["key"]


def test_clients_renew_an_expired_inference_key(short_lived, tmp_path, capsys):
    srv = short_lived
    where = ["--config", str(srv.cfg.path), "--workdir", str(srv.workdir)]

    expired = expired_inference_key(srv)
    assert http_client.main([str(PHOTO), *where]) == 0, capsys.readouterr().err
    assert '"label": ' in capsys.readouterr().out
    assert read_keys(srv.workdir)["inference"] != expired  # renewed, and the file rewritten for the others

    expired_inference_key(srv)
    assert grpc_client.main([str(PHOTO), *where]) == 0, capsys.readouterr().err
    assert '"label": ' in capsys.readouterr().out

    from web.proxy import Settings, Upstream

    expired_inference_key(srv)
    upstream = Upstream(Settings(srv.cfg.inference_url, srv.cfg.management_url, srv.workdir / KEY_FILE))
    status, answer = upstream.predict(PHOTO.read_bytes())
    assert status == 200 and answer["label"] in ("hot_dog", "not_hot_dog"), answer

    # Eight requests in flight meet the refusal together: every one must still be answered.
    expired_inference_key(srv)
    out = tmp_path / "parity.json"
    parity.main(["--data", str(SAMPLE), "--weights", str(REPO / "weights"), "--out", str(out), *where])
    report = json.loads(out.read_text())
    assert report["served_errors"] == {} and report["compared"] == report["images"] > 0, report
