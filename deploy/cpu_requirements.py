"""Install the image's Python stack: the serving packages at pyproject.toml's pins, CPU only (Dockerfile).

PyPI's torch wheel is the CUDA build: its libraries link most nvidia-* libraries (libcudnn, libcublasLt,
libnccl, ...), so `import torch` fails without them and those stay (about 3 GB). The packages it only loads
on a GPU are left out: triton (0.9 GB), cuSOLVER and the CUDA Python bindings. pip resolves the pins first
(--dry-run --report), then installs the resolution minus those with --no-deps.
Usage: python3 cpu_requirements.py pins pyproject.toml > serving.txt    (the serving packages' pins)
       python3 cpu_requirements.py install serving.txt                  (into the running Python's environment)
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

# What the server and the archive build import (handlers/, model_src/, serving/archive.py, mobile_export/export.py).
SERVING = ("torch", "executorch", "torchao", "torchserve", "torch-model-archiver", "pillow", "numpy", "pyyaml",
           "psutil", "requests")
GPU_ONLY = {"triton", "nvidia-cusolver", "cuda-bindings", "cuda-pathfinder", "cuda-toolkit"}
PIP = "pip==26.3"  # resolves from PyPI's metadata files without downloading the CUDA wheels


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(pyproject: Path, names=SERVING) -> list[str]:
    pins = {canonical(re.split(r"[=<>!~ ;\[]", d, maxsplit=1)[0]): d
            for d in tomllib.loads(pyproject.read_text())["project"]["dependencies"]}
    missing = [n for n in names if n not in pins]
    if missing:
        sys.exit(f"error: {pyproject} pins no {', '.join(missing)}")
    return [pins[n] for n in names]


def pip(*args: str) -> None:
    # An unset build ARG arrives as an empty PIP_* variable, which pip would read as a value.
    env = {k: v for k, v in os.environ.items() if v or not k.startswith("PIP_")}
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], env=env, check=True)


def install(requirements: Path) -> None:
    pip("install", "--quiet", PIP)
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        pip("install", "--quiet", "--dry-run", "--ignore-installed", "--report", str(report), "-r", str(requirements))
        resolved = [(item["metadata"]["name"], item["metadata"]["version"])
                    for item in json.loads(report.read_text())["install"]]
    keep = [f"{name}=={version}" for name, version in resolved if canonical(name) not in GPU_ONLY]
    print(f"cpu_requirements: {len(keep)} packages, left out: "
          f"{', '.join(sorted(n for n, _ in resolved if canonical(n) in GPU_ONLY)) or 'none'}")
    pip("install", "--quiet", "--no-deps", *keep)


if __name__ == "__main__":
    command, path = sys.argv[1:]
    if command == "pins":
        print("\n".join(pinned(Path(path))))
    else:
        install(Path(path))
