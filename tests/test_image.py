"""The container image (Dockerfile, built by `make image`) run the way a container runtime runs it, with buildah.

The image's own ENTRYPOINT starts TorchServe in a container (`buildah run --isolation chroot`, the host network,
free ports in a copy of the image's own properties); real JPEGs get the same answers as `make serve`'s TorchServe
on the host (the `torchserve` fixture), sent with the key read inside the container; SIGTERM stops it. Also the
refusals: no writable key directory, and a stale .pte in the build context. `make test-image` builds the image
first; CI runs it after `make test`.
"""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import requests
import yaml

from conftest import REPO, SAMPLE
from deploy.container_config import CONTAINER_CONFIG, PUBLIC
from serving.config import KEY_FILE, ServeConfig
from bench.harness import free_ports

IMAGE = os.environ.get("HOTDOG_IMAGE", "hotdog:latest")
APP = Path("/opt/hotdog")  # the Dockerfile's WORKDIR for the code
IMAGE_CONFIG = APP / CONTAINER_CONFIG.relative_to(REPO)
SAMPLES = sorted(SAMPLE.glob("*/*.jpg"))


def buildah(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        pytest.fail(f"buildah {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done


def run_cmd(ctr: str, *cmd: str, volumes: tuple[str, ...] = ()) -> list[str]:
    """`buildah run` of cmd in ctr as the image configures it (user, working directory, env), host network."""
    mounts = [arg for v in volumes for arg in ("--volume", v)]
    return ["buildah", "run", "--isolation", "chroot", "--network", "host", *mounts, ctr, "--", *cmd]


@pytest.fixture(scope="module")
def image_config() -> dict:
    if shutil.which("buildah") is None:
        pytest.fail("buildah is missing: apt-get install buildah debootstrap (.ci/run.d/image-deps.sh)")
    done = buildah("inspect", "--type", "image", IMAGE, check=False)
    if done.returncode != 0:
        pytest.fail(f"image {IMAGE} is not built: run `make image` (or `make test-image`)")
    return json.loads(done.stdout)["Docker"]["config"]


@pytest.fixture(scope="module")
def container(image_config, tmp_path_factory):
    ctr = buildah("from", "--pull-never", "--name", f"hotdog-test-{os.getpid()}", IMAGE).stdout.strip()
    try:
        yield ctr
    finally:
        buildah("rm", ctr, check=False)


@pytest.fixture(scope="module")
def served(image_config, container, tmp_path_factory):
    """TorchServe started by the image's ENTRYPOINT, on free ports; yields (Popen, ServeConfig, log path)."""
    base = tmp_path_factory.mktemp("image")
    src = image_properties(container, base / "image.properties")
    cfg = src.write_copy(base / "config.properties", dict(zip(src.listen_ports(), free_ports(5))))
    log = base / "container.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(run_cmd(container, *image_config["Entrypoint"],
                                        volumes=(f"{cfg.path}:{IMAGE_CONFIG}:ro",)),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    ping = f"http://127.0.0.1:{urlsplit(cfg.inference_url).port}/ping"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the container exited ({proc.returncode}) while starting:\n{log.read_text()[-3000:]}")
            try:  # TorchServe 0.12 asks the inference key even on /ping
                key = container_keys(container)["inference"]["key"]
                if requests.get(ping, headers={"Authorization": f"Bearer {key}"}, timeout=2).json().get(
                        "status") == "Healthy":
                    break
            except (AssertionError, requests.RequestException, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"no Healthy /ping from the container in 240 s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield proc, cfg, log
    finally:
        if proc.poll() is None:  # a failed test: end the container's processes as well as buildah
            for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            proc.wait()


def image_properties(container: str, into: Path) -> ServeConfig:
    """The image's own TorchServe properties, copied out of the container to `into`."""
    into.write_text(subprocess.run(run_cmd(container, "cat", str(IMAGE_CONFIG)), capture_output=True, text=True,
                                   check=True).stdout)
    return ServeConfig.load(into)


def keys_dir(image_config: dict) -> str:
    return next(e.split("=", 1)[1] for e in image_config["Env"] if e.startswith("HOTDOG_KEYS="))


def host_answer(torchserve, data: bytes) -> requests.Response:
    """The answer of `make serve`'s server (the session's TorchServe on the host) to a raw JPEG."""
    return requests.post(f"{torchserve.cfg.inference_url}/predictions/hotdog", data=data,
                         headers={**torchserve.inference_headers(), "Content-Type": "image/jpeg"}, timeout=60)


def container_keys(container: str) -> dict:
    """key_file.json, read inside the container (where the image says TorchServe writes it)."""
    done = subprocess.run(run_cmd(container, "sh", "-c", f'cat "$HOTDOG_KEYS/{KEY_FILE}"'),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_image_is_configured_as_the_issue_asks(image_config, container):
    assert image_config["User"] == "hotdog"
    assert image_config["Entrypoint"][0] == "tini" and "torchserve" in subprocess.run(
        run_cmd(container, "cat", image_config["Entrypoint"][-1]), capture_output=True, text=True).stdout
    assert set(image_config["ExposedPorts"]) == {"8080/tcp", "7070/tcp", "8082/tcp"}
    assert keys_dir(image_config) in image_config["Volumes"] and image_config["WorkingDir"] == keys_dir(image_config)
    assert "/opt/hotdog/deploy/healthcheck.py" in image_config["Healthcheck"]["Test"]
    # No key is baked in, and the CUDA packages torch only loads on a GPU are not installed.
    found = subprocess.run(run_cmd(container, "sh", "-c", f"find / -xdev -name {KEY_FILE}; "
                                   "python -c 'import importlib.util as u; print(u.find_spec(\"triton\"))'"),
                           capture_output=True, text=True, timeout=120)
    assert found.stdout.split() == ["None"], found.stdout


def test_image_properties_open_only_the_exposed_sockets_and_keep_authorization(container, tmp_path):
    cfg = image_properties(container, tmp_path / "image.properties")
    hosts = {name: host for name, (host, _) in cfg.listen_ports().items()}
    assert hosts == {"inference": PUBLIC, "metrics": PUBLIC, "gRPC inference": PUBLIC,
                     "management": "127.0.0.1", "gRPC management": "127.0.0.1"}
    assert "disable_token_authorization" not in cfg.props and cfg.props["enable_model_api"] == "false"
    # The checkout's file stays local-only.
    assert {h for h, _ in ServeConfig.load(REPO / "serve_config" / "config.properties").listen_ports().values()} \
        == {"127.0.0.1"}


def test_container_answers_real_jpegs_as_make_serve_does(served, container, torchserve):
    proc, cfg, log = served
    key = container_keys(container)["inference"]["key"]
    url = f"http://127.0.0.1:{urlsplit(cfg.inference_url).port}/predictions/hotdog"
    for path in SAMPLES:
        data = path.read_bytes()
        ours = requests.post(url, data=data, headers={"Authorization": f"Bearer {key}",
                                                      "Content-Type": "image/jpeg"}, timeout=60)
        host = host_answer(torchserve, data)
        assert ours.status_code == host.status_code == 200, (path, ours.text)
        assert ours.json() == host.json(), path
    # Without the key the container refuses, as the host's server does (TorchServe 0.12 answers 400).
    bare = {"data": SAMPLES[0].read_bytes(), "headers": {"Content-Type": "image/jpeg"}, "timeout": 60}
    refused = requests.post(url, **bare)
    host_refused = requests.post(f"{torchserve.cfg.inference_url}/predictions/hotdog", **bare)
    assert refused.status_code == host_refused.status_code != 200 and "Token" in refused.json()["message"]


def test_container_runs_torchserve_as_the_image_user_with_a_private_key_file(served, container):
    proc, cfg, log = served
    tree = psutil.Process(proc.pid).children(recursive=True)
    java = [p for p in tree if p.name() == "java"]
    assert java and all(p.uids().real == 10001 for p in java)  # the Dockerfile's hotdog user, not root
    done = subprocess.run(run_cmd(container, "sh", "-c", f'stat -c "%U %a" "$HOTDOG_KEYS/{KEY_FILE}"'),
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["hotdog", "600"], done.stdout + done.stderr
    assert "key_file.json" in log.read_text()  # the entry point tells `docker logs` where the key is


def test_image_healthcheck_passes_on_the_running_container(served, container, image_config):
    proc, cfg, log = served
    cmd = image_config["Healthcheck"]["Test"][1:]  # ["CMD", ...] runs without a shell
    done = subprocess.run(run_cmd(container, *cmd, volumes=(f"{cfg.path}:{IMAGE_CONFIG}:ro",)),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_kubernetes_proxy_sidecar_serves_from_the_image(served, container, torchserve):
    """deploy/kubernetes/deployment.yaml's proxy command (on a free port), run in the image beside the server:
    the page's POST /api/predict answers as the host's server, with the key it reads from the shared volume."""
    proc, cfg, log = served
    pod = yaml.safe_load((REPO / "deploy" / "kubernetes" / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    command = next(c for c in pod["containers"] if c["name"] == "proxy")["command"]
    (port,) = free_ports(1)
    command = [str(port) if prev == "--port" else arg for prev, arg in zip([None, *command], command)]
    sidecar = subprocess.Popen(run_cmd(container, "sh", "-c", f'cd {APP} && exec "$@"', "sh", *command,
                                       volumes=(f"{cfg.path}:{IMAGE_CONFIG}:ro",)),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert sidecar.poll() is None, sidecar.stdout.read().decode(errors="replace")
            try:
                requests.get(f"http://127.0.0.1:{port}/api/config", timeout=2).raise_for_status()
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, "the proxy did not answer in 60 s"
                time.sleep(0.5)
        for path in SAMPLES[:4]:
            data = path.read_bytes()
            ours = requests.post(f"http://127.0.0.1:{port}/api/predict", data=data,
                                 headers={"Content-Type": "image/jpeg"}, timeout=60)
            assert ours.status_code == 200 and ours.json() == host_answer(torchserve, data).json(), (path, ours.text)
    finally:
        for child in psutil.Process(sidecar.pid).children(recursive=True):
            if child.name().startswith("python"):
                child.terminate()
        sidecar.wait(timeout=30)


def test_container_stops_cleanly_on_sigterm(served):
    proc, cfg, log = served
    tree = psutil.Process(proc.pid).children(recursive=True)
    # `docker stop` sends SIGTERM to the container's first process, here tini (buildah itself would SIGKILL).
    (init,) = [p for p in tree if p.name() == "tini"]
    init.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=90)
    # tini exits with TorchServe's status: 143 is "ended by SIGTERM", what a stopped JVM reports.
    assert code in (0, 143), log.read_text()[-3000:]
    gone, alive = psutil.wait_procs([psutil.Process(p.pid) for p in tree if psutil.pid_exists(p.pid)], timeout=30)
    assert not alive, f"left running: {[p.pid for p in alive]}"
    ports = {port for _, port in cfg.listen_ports().values()}
    assert not [c for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN and c.laddr.port in ports]


def test_container_without_a_writable_key_directory_refuses_to_start(image_config, container, tmp_path):
    readonly = tmp_path / "keys"
    readonly.mkdir()
    where = keys_dir(image_config)
    done = subprocess.run(run_cmd(container, *image_config["Entrypoint"], volumes=(f"{readonly}:{where}:ro",)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    said = [line for line in (done.stderr + done.stdout).splitlines() if line.startswith("hotdog:")]
    assert len(said) == 1 and f"{where} is not writable" in said[0] and "Model server started" not in done.stdout


def test_a_stale_pte_in_the_build_context_fails_the_build_with_make_mars_error(image_config, tmp_path):
    """hotdog.json saying the programs came from other weights: the host's `make mar` line, in the build log."""
    ctx = tmp_path / "context"
    ctx.mkdir()
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml"):
        shutil.copy2(REPO / name, ctx / name)
    for folder in ("model_src", "training", "mobile_export", "serving", "handlers", "serve_config", "weights",
                   "exported", "deploy", "web"):
        shutil.copytree(REPO / folder, ctx / folder, ignore=shutil.ignore_patterns("__pycache__", "ios", "configs"))
    meta_path = ctx / "exported" / "hotdog.json"
    meta = json.loads(meta_path.read_text())
    meta["source_weights"]["sha256"] = "0" * 64
    meta_path.write_text(json.dumps(meta, indent=2))
    host = subprocess.run([sys.executable, "-m", "serving.archive", "--weights", "weights",
                           "--store", str(tmp_path / "store")], cwd=ctx, capture_output=True, text=True)
    assert host.returncode != 0 and len(host.stderr.strip().splitlines()) == 1, host.stderr
    expected = host.stderr.strip().replace(str(ctx), str(APP))
    build = subprocess.run(["bash", str(REPO / "deploy" / "build_image.sh"), f"hotdog-stale-test:{os.getpid()}",
                            str(ctx)], capture_output=True, text=True, timeout=1800)
    assert build.returncode != 0
    assert expected in build.stdout + build.stderr, (expected, (build.stdout + build.stderr)[-3000:])


@pytest.mark.parametrize("missing", ["buildah", "debootstrap"])
def test_make_image_without_a_tool_names_the_package_in_one_line(missing, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in {"buildah", "debootstrap"} - {missing}:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    done = subprocess.run(["/bin/bash", str(REPO / "deploy" / "build_image.sh")], env={"PATH": str(bin_dir)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert f"install the Debian package {missing}" in line
