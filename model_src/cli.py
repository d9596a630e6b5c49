"""The exit-code convention every command shares (train, evaluate, export, parity, bench).

A user's mistake (bad data, missing weights, a test/ calibration folder) is one line on stderr and
exit code 2, not a traceback; a check that ran and failed is exit code 1.
"""
from __future__ import annotations

import sys
from typing import Any, Callable


def run_cli(main: Callable[[list[str] | None], Any], argv: list[str] | None,
            user_errors: tuple[type[Exception], ...], passed: Callable[[Any], bool] = lambda _: True) -> int:
    try:
        result = main(argv)
    except user_errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0 if passed(result) else 1
