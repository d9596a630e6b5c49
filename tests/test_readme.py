"""The README's commands, run as written (only ports, paths and the photo substituted)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time

from PIL import Image

from conftest import REPO, SAMPLE, free_ports, serve_config_copy

README = (REPO / "README.md").read_text()
PHOTO = sorted((SAMPLE / "hot_dog").glob("*.jpg"))[0]


def readme_commands(prefix: str) -> list[str]:
    """Lines of the README's ```bash blocks that start with `prefix`, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith(prefix)]


def bash(script: str, cwd, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_every_make_command_in_the_readme_is_a_real_target():
    commands = readme_commands("make ")
    assert {"make serve", "make test", "make stop", "make eval", "make export"} <= set(commands)
    for command in set(commands):
        dry = bash(f"make -n -C {REPO} {command.removeprefix('make ')}", REPO)
        assert dry.returncode == 0, f"{command!r} is not a working make target: {dry.stderr}"


def test_readme_curl_and_make_predict_commands_answer(torchserve, tmp_path):
    """The key line and the three curl forms, against the session's server instead of port 8080:
    each answers, and all three carry the same answer for the same photo, a phone-sized one: as base64
    it is past the 128 KiB Linux allows a single command-line argument."""
    photo = tmp_path / "photo.jpg"
    with Image.open(PHOTO) as img:
        img.resize((img.width * 4, img.height * 4)).save(photo, quality=95)
    assert photo.stat().st_size * 4 / 3 > 128 * 1024
    key_line, = readme_commands("KEY=")
    curls = [line for line in readme_commands("") if "curl " in line]
    assert len(curls) == 3
    answers = []
    for curl in curls:
        script = "\n".join([key_line, curl.replace("http://127.0.0.1:8080", torchserve.cfg.inference_url)
                            .replace("photo.jpg", str(photo)) + " --fail-with-body -sS"])
        done = bash(script, torchserve.workdir)
        assert done.returncode == 0, f"{curl}\n{done.stdout}{done.stderr}"
        answers.append(json.loads(done.stdout))
    assert answers[0]["label"] in ("hot_dog", "not_hot_dog") and answers[0]["model_version"]
    assert answers[1] == answers[0] and answers[2] == answers[0]

    where = f"SERVE_CONFIG={torchserve.cfg.path} SERVE_WORKDIR={torchserve.workdir}"
    for command in ("make predict IMG=photo.jpg", "make predict-grpc IMG=photo.jpg"):
        assert command in readme_commands("make predict")
        done = bash(f"{command.replace('photo.jpg', str(photo))} -s {where}", REPO)
        assert done.returncode == 0, f"{command}\n{done.stdout}{done.stderr}"
        assert json.dumps(answers[0]["probabilities"]) in done.stdout, done.stdout


def test_readme_plain_torchserve_command_serves_the_model_and_make_knows_it(tmp_path):
    """`.venv/bin/torchserve --start ...` without make, as written (a free-port copy of the config, its
    own directories, the venv's absolute path): the model gets READY; `make serve` from the same
    directory says it is already up and answers; `make stop` stops it, found by its working directory."""
    from serving import server
    from serving.config import MAR, MODEL_NAME

    command, = readme_commands(".venv/bin/torchserve --start")
    cfg = serve_config_copy(tmp_path)
    workdir, tmpdir = tmp_path / "work", tmp_path / "tmp"
    workdir.mkdir()
    tmpdir.mkdir()
    script = (command.replace(".venv/bin/torchserve", f"{REPO}/.venv/bin/torchserve")
              .replace("serve_config/config.properties", str(cfg.path))
              .replace("serve_config/log4j2.xml", str(REPO / "serve_config" / "log4j2.xml"))
              .replace("--model-store model_store", f"--model-store {MAR.parent}"))
    # A user's shell: TorchServe's pid file goes to $TMPDIR, its logs beside the shell's working directory.
    env = {**os.environ, "TMPDIR": str(tmpdir), "TEMP": str(tmpdir), "LOG_LOCATION": f"{workdir}/logs",
           "METRICS_LOCATION": f"{workdir}/logs"}
    where = [f"SERVE_CONFIG={cfg.path}", f"SERVE_WORKDIR={workdir}", f"SERVE_TMPDIR={tmp_path / 'make-tmp'}"]
    pid = None
    try:
        # The launcher's children inherit its stdout: send it to a file, or waiting for EOF never ends.
        started = subprocess.run(["bash", "-c", f"{script} > {workdir}/torchserve.out 2>&1"], cwd=workdir,
                                 env=env, timeout=60)
        assert started.returncode == 0, (workdir / "torchserve.out").read_text()
        pid = int((tmpdir / server.PID_FILE).read_text())
        deadline = time.monotonic() + 180
        states: list[str] | None = []
        while "READY" not in (states or []) and time.monotonic() < deadline:
            time.sleep(1)
            try:
                states = server.worker_states(cfg, workdir, MODEL_NAME)
            except Exception:  # frontend not listening or key file not written yet
                states = []
        assert "READY" in (states or []), f"model not READY: {states}"

        again = make("serve", *where, env=env)
        assert again.returncode == 0, again.stderr
        assert f"TorchServe is already up (pid {pid})" in again.stdout and '"label": ' in again.stdout
    finally:
        stopped = make("stop", *where, env=env)
        if pid and server._pid_alive(pid):
            server.stop(workdir, tmpdir)
    assert stopped.returncode == 0 and "TorchServe stopped." in stopped.stdout, stopped.stdout + stopped.stderr
    assert not server._pid_alive(pid)
    assert not (tmpdir / server.PID_FILE).exists() and not (workdir / "key_file.json").exists()
    assert "not running" in make("stop", *where, env=env).stdout


def make(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "--no-print-directory", "-C", str(REPO), *args], capture_output=True,
                          text=True, timeout=300, env=env)


def test_readme_answer_example_has_the_served_shape(torchserve):
    """The README's example answer: the served keys, probabilities to 4 decimals summing to 1, the
    confidence the top one, and the shipped model's version."""
    example = json.loads(re.search(r"```json\n(.*?)\n```", README, flags=re.S).group(1))
    status, served = predict(torchserve, PHOTO)
    assert status == 200
    for answer in (example, served):
        assert list(answer) == ["label", "is_hotdog", "confidence", "probabilities", "model_version"]
        probs = answer["probabilities"]
        assert all(round(p, 4) == p for p in probs.values()) and abs(sum(probs.values()) - 1) < 1e-9, answer
        assert answer["confidence"] == max(probs.values()) == probs[answer["label"]]
        assert answer["is_hotdog"] == (answer["label"] == "hot_dog")
    assert example["model_version"] == served["model_version"]
    assert len(json.dumps(served)) <= len(json.dumps(example)) + 4  # no 16-digit floats


def predict(server, photo) -> tuple[int, dict]:
    from serving.http_client import predict_bytes

    return predict_bytes(photo.read_bytes(), server.cfg.inference_url, server.keys["inference"])


def test_make_help_lists_every_target_once():
    """`make help`: one line per target the Makefile defines, each with a description."""
    defined = set(re.findall(r"^([a-z][a-z0-9-]*):(?!=)", (REPO / "Makefile").read_text(), flags=re.M))
    done = make("help")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    named = [line.split()[0] for line in lines if line.strip()]
    assert sorted(named) == sorted(defined), set(named) ^ defined
    assert all(len(line.split(None, 1)) == 2 for line in lines), lines


def test_first_install_shows_progress():
    """The first `make serve` installs gigabytes: pip must show its progress (no -q on that install),
    and the README says what it costs."""
    done = make("-n", "-B", ".venv/.installed")
    installs = [line for line in done.stdout.splitlines() if "pip install" in line and " -e ." in line]
    assert installs and not any(" -q" in line for line in installs), done.stdout
    assert re.search(r"\*\*First run:\*\*.* GB on disk.* minutes", README.replace("\n", " "))


def test_readme_make_web_serves_the_page(torchserve, tmp_path):
    """`make web` as written, pointed at the session's server: the page and a prediction through it."""
    import signal
    import urllib.request

    assert "make web" in readme_commands("make web")
    (port,) = free_ports(1)
    where = f"SERVE_CONFIG={torchserve.cfg.path} SERVE_WORKDIR={torchserve.workdir} WEB_PORT={port}"
    with open(tmp_path / "web.log", "wb") as log:
        proc = subprocess.Popen(["bash", "-c", f"exec make web -s -C {REPO} {where}"], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, config = time.monotonic() + 60, None
        while config is None and proc.poll() is None and time.monotonic() < deadline:
            try:
                config = json.load(urllib.request.urlopen(f"{url}/api/config", timeout=5))
            except OSError:
                time.sleep(0.5)
        assert config and config["model"] == "hotdog", (tmp_path / "web.log").read_text()
        request = urllib.request.Request(f"{url}/api/predict", data=PHOTO.read_bytes(),
                                         headers={"Content-Type": "image/jpeg"})
        answer = json.load(urllib.request.urlopen(request, timeout=60))
        assert answer == predict(torchserve, PHOTO)[1]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_readme_eager_serve_line_serves_plain_pytorch(tmp_path):
    """`make serve SERVE_MAR=model_store/eager/hotdog.mar` as written (own ports and directories): it
    builds the eager archive, serves it with the eager runtime and answers; `make stop` stops it."""
    command, = readme_commands("make serve SERVE_MAR=")
    cfg = serve_config_copy(tmp_path)
    (tmp_path / "work").mkdir()
    where = [f"SERVE_CONFIG={cfg.path}", f"SERVE_WORKDIR={tmp_path / 'work'}", f"SERVE_TMPDIR={tmp_path / 'tmp'}"]
    try:
        done = make(*command.split()[1:], *where)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "READY" in done.stdout and '"label": ' in done.stdout
        assert "(runtime eager," in (tmp_path / "work" / "logs" / "model_log.log").read_text()
    finally:
        stopped = make("stop", *where)
    assert "TorchServe stopped." in stopped.stdout
