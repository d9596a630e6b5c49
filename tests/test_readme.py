"""The README's commands, run as written (only ports, paths and the photo substituted)."""
from __future__ import annotations

import json
import re
import subprocess
import time

from PIL import Image

from conftest import REPO, SAMPLE, serve_config_copy

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


def test_readme_plain_torchserve_command_serves_the_model(tmp_path):
    """`torchserve --start ...` without make, with a free-port copy of the config and its own dirs."""
    from serving import server
    from serving.config import MAR, MODEL_NAME

    command, = readme_commands("torchserve --start")
    cfg = serve_config_copy(tmp_path)
    workdir, tmpdir = tmp_path / "work", tmp_path / "tmp"
    workdir.mkdir()
    tmpdir.mkdir()
    script = (command.replace("serve_config/config.properties", str(cfg.path))
              .replace("serve_config/log4j2.xml", str(REPO / "serve_config" / "log4j2.xml"))
              .replace("--model-store model_store", f"--model-store {MAR.parent}"))
    env_script = f"export TMPDIR={tmpdir} TEMP={tmpdir} LOG_LOCATION={workdir}/logs METRICS_LOCATION={workdir}/logs\n"
    try:
        # The launcher's children inherit its stdout: send it to a file, or waiting for EOF never ends.
        started = bash(env_script + f"{REPO}/.venv/bin/{script} > {workdir}/torchserve.out 2>&1", workdir, timeout=60)
        assert started.returncode == 0, (workdir / "torchserve.out").read_text()
        deadline = time.monotonic() + 180
        states: list[str] | None = []
        while "READY" not in (states or []) and time.monotonic() < deadline:
            time.sleep(1)
            try:
                states = server.worker_states(cfg, workdir, MODEL_NAME)
            except Exception:  # frontend not listening or key file not written yet
                states = []
        assert "READY" in (states or []), f"model not READY: {states}"
    finally:
        server.stop(workdir, tmpdir)
