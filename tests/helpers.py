"""Helpers several test files share (the images they send are in imagegen.py)."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Callable

from conftest import REPO

MAR = REPO / "model_store" / "hotdog.mar"


def flip_byte(data: bytes, at: int = -100) -> bytes:
    """`data` with one byte inverted: a tampered file of the same size."""
    out = bytearray(data)
    out[at] ^= 0xFF
    return bytes(out)


def rewritten_mar(dst: Path, member: str, change: Callable[[bytes], bytes], src: Path = MAR) -> Path:
    """A copy of the archive `src` at `dst` with `member` passed through `change`, everything else as it was."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            zout.writestr(item, change(data) if item.filename == member else data)
    return dst
