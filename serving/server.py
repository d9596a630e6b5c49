"""Start, wait for and stop TorchServe serving hotdog.mar: `python -m serving.server start|stop`.

`make serve` / `make stop` and the test fixture use this, so a user and the tests start the server
the same way. Every server gets its own working directory (key_file.json, logs/) and its own TMPDIR:
TorchServe's `--stop` kills whatever pid it finds in $TMPDIR/.model_server.pid, so a private TMPDIR
means stopping one server never stops another. A TorchServe started by hand from the same working
directory (the README's `.venv/bin/torchserve --start` line) is found by that directory: `start` takes
it as already up when its model is READY, and `stop` stops it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests

from model_src import LOAD_REFUSED
from serving.config import (CONFIG, KEY_FILE, LOG_CONFIG, MAR, MODEL_NAME, REPO, RUN_DIR, ServeConfig,
                            ServeError, read_keys)

PID_FILE = ".model_server.pid"  # TorchServe's name, under TMPDIR
FRONTEND_MAIN = "org.pytorch.serve.ModelServer"  # on the frontend's java command line
MIN_JAVA = 11


def java_command() -> str:
    """The java TorchServe's launcher will run ($JAVA_HOME/bin/java or java on PATH), checked."""
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    hint = "TorchServe's frontend needs Java 17 (Debian/Ubuntu: apt install openjdk-17-jre-headless)"
    if not java or not Path(java).exists():
        where = f"JAVA_HOME={java_home}" if java_home else "PATH"
        raise ServeError(f"Java not found on {where}: {hint}")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ServeError(f"cannot run {java}: {e}. {hint}") from None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if out.returncode != 0 or not match:
        raise ServeError(f"{java} -version failed: {(out.stderr or out.stdout).strip()[:200]}. {hint}")
    major = int(match.group(1)) if match.group(1) != "1" else int(match.group(2))
    if major < MIN_JAVA:
        raise ServeError(f"{java} is Java {major}; {hint}")
    return java


def check_ports_free(cfg: ServeConfig) -> None:
    """Fail before starting, naming each taken port and the process that holds it."""
    taken = []
    for name, (host, port) in cfg.listen_ports().items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # Like the server's own sockets: a port in TIME_WAIT is reusable, a listening one is not.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                taken.append(f"{port} ({name}, {host}{_holder(port)})")
    if taken:
        raise ServeError(f"port already in use: {', '.join(taken)}. Stop what is listening there "
                         f"or change the port in {cfg.path}")


def _holder(port: int) -> str:
    """', held by pid N (what it runs)' for the process listening on `port`, '' if it cannot be seen."""
    try:
        pids = {c.pid for c in psutil.net_connections("inet")
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid}
    except psutil.Error:  # another user's sockets need privileges on some systems
        return ""
    for pid in sorted(pids):
        try:
            proc = psutil.Process(pid)
            if FRONTEND_MAIN in proc.cmdline():
                workdir = Path(proc.cwd())
                stop_it = "make stop" + ("" if workdir == REPO else f" SERVE_WORKDIR={workdir}")
                return f", held by pid {pid}: a TorchServe started in {workdir}; `{stop_it}` stops it"
            return f", held by pid {pid}: {' '.join(proc.cmdline())[:80] or proc.name()}"
        except psutil.Error:
            return f", held by pid {pid}"
    return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _is_frontend(pid: int) -> bool:
    """Whether pid runs TorchServe's frontend (the check TorchServe's own launcher makes)."""
    try:
        return FRONTEND_MAIN in psutil.Process(pid).cmdline()
    except psutil.Error:
        return False


def _read_pid(tmpdir: Path) -> int | None:
    """The pid of the TorchServe whose pid file is under tmpdir, None if it is not running.

    A server that died leaves its pid file behind, and the pid may since belong to any process:
    trusting it would make `start` refuse and `stop` kill that process's group. So the pid counts
    only while it is a TorchServe frontend; otherwise the stale file is removed, with a note."""
    path = tmpdir / PID_FILE
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if _pid_alive(pid) and _is_frontend(pid):
        return pid
    path.unlink(missing_ok=True)
    print(f"note: removed stale {path} (pid {pid} is not a running TorchServe)", file=sys.stderr)
    return None


def started_in(workdir: Path) -> list[int]:
    """TorchServe frontends whose working directory is `workdir`, however they were started: by
    `make serve` (pid file under .serve/tmp) or by hand (`.venv/bin/torchserve --start` from the repo
    root, pid file in the system TMPDIR). The working directory is where each wrote key_file.json."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        if FRONTEND_MAIN in (proc.info["cmdline"] or []) and proc.info["cwd"] and Path(proc.info["cwd"]) == workdir:
            if _pid_alive(proc.pid):
                found.append(proc.pid)
    return sorted(found)


def running_pids(workdir: Path, tmpdir: Path) -> list[int]:
    """Every TorchServe this checkout's `make serve`/`make stop` answer for: the pid file's, and any
    other frontend started in workdir."""
    pid = _read_pid(tmpdir)
    return sorted({pid, *started_in(workdir)} - {None})


def _log_tail(workdir: Path, lines: int = 25) -> str:
    for name in ("logs/ts_log.log", "logs/torchserve.out"):
        path = workdir / name
        if path.exists() and path.stat().st_size:
            text = path.read_text(errors="replace").splitlines()[-lines:]
            return f"\n--- last lines of {path} ---\n" + "\n".join(text)
    return ""


def _refusal(model_log: Path, offset: int) -> str | None:
    """The handler's one-line reason for refusing to load (model_src.bundle.LOAD_REFUSED), if the
    worker logged one after `offset`: the worker would only retry the same load until the timeout."""
    try:
        with open(model_log, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return None
    at = text.find(LOAD_REFUSED)
    return text[at:].splitlines()[0].strip() if at >= 0 else None


@dataclass
class Server:
    cfg: ServeConfig
    workdir: Path
    tmpdir: Path
    pid: int
    already_running: bool = False  # start() found it up and READY, and left it as it was

    @property
    def keys(self) -> dict[str, str]:
        return read_keys(self.workdir)

    def inference_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys['inference']}"}

    def management_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys['management']}"}


def _env(workdir: Path, tmpdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    # TMPDIR: the launcher's pid file. TEMP: java.io.tmpdir, where TorchServe unpacks archives.
    env.update(TMPDIR=str(tmpdir), TEMP=str(tmpdir), LOG_LOCATION=str(workdir / "logs"),
               METRICS_LOCATION=str(workdir / "logs"))
    env.pop("TS_CONFIG_FILE", None)  # would silently replace --ts-config
    return env


def worker_states(cfg: ServeConfig, workdir: Path, model: str = MODEL_NAME) -> list[str] | None:
    """Statuses of the model's workers from the management API; None if the model is not registered."""
    key = read_keys(workdir)["management"]
    r = requests.get(f"{cfg.management_url}/models/{model}",
                     headers={"Authorization": f"Bearer {key}"}, timeout=5)
    if r.status_code == 404:
        return None
    r.raise_for_status()
    return [w.get("status", "") for entry in r.json() for w in entry.get("workers", [])]


def _ready(cfg: ServeConfig, workdir: Path, model: str) -> bool:
    try:
        return "READY" in (worker_states(cfg, workdir, model) or [])
    except (ServeError, requests.RequestException, ValueError, KeyError):
        return False


def start(cfg: ServeConfig | None = None, workdir: Path = REPO, tmpdir: Path = RUN_DIR / "tmp",
          mar: Path = MAR, model: str = MODEL_NAME, timeout: float = 180.0) -> Server:
    """Start TorchServe with `mar` registered as `model`, return once a worker is READY.

    A TorchServe already running from workdir with `model` READY is returned as it is (already_running)."""
    cfg = cfg or ServeConfig.load(CONFIG)
    workdir, tmpdir, mar = Path(workdir).resolve(), Path(tmpdir).resolve(), Path(mar).resolve()
    running = running_pids(workdir, tmpdir)
    if running:
        if _ready(cfg, workdir, model):
            return Server(cfg, workdir, tmpdir, running[0], already_running=True)
        raise ServeError(f"TorchServe is already running (pid {', '.join(map(str, running))}, started in "
                         f"{workdir}) but model {model} is not READY at {cfg.management_url}: `make stop` first")
    java_command()
    if not mar.exists():
        raise ServeError(f"{mar} not found: build it with `make mar`")
    check_ports_free(cfg)
    tmpdir.mkdir(parents=True, exist_ok=True)
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    (workdir / KEY_FILE).unlink(missing_ok=True)  # a stale key file would be read as the new keys
    model_log = workdir / "logs" / "model_log.log"
    log_offset = model_log.stat().st_size if model_log.exists() else 0  # earlier runs' lines do not count
    cmd = [str(Path(sys.executable).parent / "torchserve"), "--start", "--ncs",
           "--model-store", str(mar.parent), "--models", f"{model}={mar.name}",
           "--ts-config", str(cfg.path.resolve()), "--log-config", str(LOG_CONFIG)]
    with open(workdir / "logs" / "torchserve.out", "ab") as out:
        # Own session: the server outlives `make serve`, and its whole process group (frontend
        # and Python workers) can be ended together.
        launcher = subprocess.run(cmd, cwd=workdir, env=_env(workdir, tmpdir), stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True, timeout=60)
    pid = _read_pid(tmpdir)
    if launcher.returncode != 0 or pid is None:
        raise ServeError(f"torchserve --start failed (exit {launcher.returncode}){_log_tail(workdir)}")
    server = Server(cfg, workdir, tmpdir, pid)
    deadline = time.monotonic() + timeout
    while True:
        if not _pid_alive(pid):
            raise ServeError(f"TorchServe exited while starting{_log_tail(workdir)}")
        try:
            states = worker_states(cfg, workdir, model)
        except (ServeError, requests.RequestException, json.JSONDecodeError, KeyError):
            states = []  # frontend not listening yet
        if states is None:
            # TorchServe registers --models before it opens its APIs: a 404 means loading failed.
            stop(workdir, tmpdir)
            raise ServeError(f"TorchServe could not load {mar.name} as {model}{_log_tail(workdir, 40)}")
        if "READY" in states:
            return server
        refused = _refusal(model_log, log_offset)
        if refused:
            stop(workdir, tmpdir)
            raise ServeError(f"TorchServe could not load {mar.name}: {refused}")
        if time.monotonic() > deadline:
            stop(workdir, tmpdir)
            raise ServeError(f"model {model} not READY after {timeout:.0f} s (workers: {states or 'none'})"
                             f"{_log_tail(workdir)}")
        time.sleep(0.5)


def stop(workdir: Path = REPO, tmpdir: Path = RUN_DIR / "tmp", timeout: float = 30.0) -> bool:
    """Stop the server whose pid file is under tmpdir and any other TorchServe started in workdir;
    False if none was running."""
    workdir, tmpdir = Path(workdir).resolve(), Path(tmpdir).resolve()
    pid = _read_pid(tmpdir)
    by_hand = [p for p in started_in(workdir) if p != pid]
    if pid is None and not by_hand:
        (tmpdir / PID_FILE).unlink(missing_ok=True)
        return False
    if pid is not None:
        _stop_own(pid, workdir, tmpdir, timeout)
    for other in by_hand:
        _stop_by_hand(other, timeout)
    (tmpdir / PID_FILE).unlink(missing_ok=True)
    (workdir / KEY_FILE).unlink(missing_ok=True)
    return True


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(map(_pid_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.2)


def _stop_own(pid: int, workdir: Path, tmpdir: Path, timeout: float) -> None:
    """A server start() launched: `torchserve --stop` with its TMPDIR, then its whole session's group."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        pgid = None
    subprocess.run([str(Path(sys.executable).parent / "torchserve"), "--stop"], cwd=workdir,
                   env=_env(workdir, tmpdir), capture_output=True, timeout=60)
    _wait_gone([pid], timeout)
    # The frontend stops its workers on SIGTERM; whatever is left of the group (a hung worker, or a
    # frontend that ignored SIGTERM) is killed so no process outlives `stop`.
    if pgid is not None and pgid != os.getpgid(0):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _stop_by_hand(pid: int, timeout: float) -> None:
    """A frontend started without start() (its group may be a shell's): SIGTERM as `torchserve --stop`
    sends, then SIGKILL for it and its workers if they outlive the timeout; its pid file is removed."""
    try:
        frontend = psutil.Process(pid)
        family = [frontend, *frontend.children(recursive=True)]
        frontend.terminate()
    except psutil.NoSuchProcess:
        return
    _wait_gone([p.pid for p in family], timeout)
    for proc in family:
        if _pid_alive(proc.pid):
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
    system_pid_file = Path(tempfile.gettempdir()) / PID_FILE
    try:
        if int(system_pid_file.read_text().split()[0]) == pid:
            system_pid_file.unlink()
    except (OSError, ValueError, IndexError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--workdir", default=str(REPO), help="where key_file.json and logs/ go")
    parser.add_argument("--tmpdir", default=str(RUN_DIR / "tmp"), help="TorchServe's TMPDIR (pid file)")
    parser.add_argument("--mar", default=str(MAR))
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for READY")
    args = parser.parse_args(argv)
    try:
        if args.action == "stop":
            print("TorchServe stopped." if stop(Path(args.workdir), Path(args.tmpdir))
                  else "TorchServe is not running.")
            return 0
        cfg = ServeConfig.load(args.config)
        server = start(cfg, Path(args.workdir), Path(args.tmpdir), Path(args.mar), timeout=args.timeout)
    except ServeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"TorchServe is {'already ' if server.already_running else ''}up (pid {server.pid}): model {MODEL_NAME} READY\n"
          f"  inference  {cfg.inference_url}/predictions/{MODEL_NAME}\n"
          f"  gRPC       {cfg.grpc_inference_target}\n"
          f"  metrics    {cfg.metrics_url}/metrics\n"
          f"  keys       {server.workdir / KEY_FILE}  (Authorization: Bearer <inference key>)\n"
          f"  logs       {server.workdir / 'logs'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
