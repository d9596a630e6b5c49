"""A private TorchServe for reports and benchmarks (bad-input report, faults, soak).

Each run starts its own server on free ports with its own working directory and TMPDIR (like the
tests' `torchserve` fixture), so it never touches `make serve`'s server or the well-known ports, and
stops it (whole process group) whatever happens.
"""
from __future__ import annotations

import contextlib
import socket
import tempfile
from pathlib import Path
from typing import Iterator

import requests

from serving import server
from serving.config import CONFIG, MAR, MODEL_NAME, ServeConfig


def free_ports(n: int) -> list[int]:
    """n distinct ports the OS reports free right now (all held open together, so no repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def config_copy(folder: Path, **overrides: str) -> ServeConfig:
    """serve_config/config.properties with free ports (and any overrides), written to `folder`."""
    cfg = ServeConfig.load(CONFIG)
    return cfg.write_copy(Path(folder) / "config.properties", dict(zip(cfg.listen_ports(), free_ports(5))),
                          **overrides)


@contextlib.contextmanager
def private_server(mar: Path = MAR, base: Path | None = None, timeout: float = 180.0,
                   **overrides: str) -> Iterator[server.Server]:
    """A READY TorchServe on `mar` in a temporary folder; stopped on exit. `base` keeps its logs."""
    with tempfile.TemporaryDirectory(prefix="hotdog-ts-") as tmp:
        base = Path(base or tmp)
        workdir, tmpdir = base / "work", base / "tmp"
        workdir.mkdir(parents=True, exist_ok=True)
        srv = server.start(config_copy(base, **overrides), workdir, tmpdir, Path(mar), timeout=timeout)
        try:
            yield srv
        finally:
            server.stop(workdir, tmpdir)


def workers(srv: server.Server, model: str = MODEL_NAME) -> list[dict]:
    """The model's workers as the management API describes them (id, pid, status, ...)."""
    r = requests.get(f"{srv.cfg.management_url}/models/{model}", headers=srv.management_headers(), timeout=10)
    r.raise_for_status()
    return [w for entry in r.json() for w in entry.get("workers", [])]


def worker_pids(srv: server.Server) -> list[int]:
    return [w["pid"] for w in workers(srv)]


def rss_mb(pid: int) -> float | None:
    """Resident set size of a process in MB (from /proc), None if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
