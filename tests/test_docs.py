"""Facts the docs state that a file in the repo can check."""
from __future__ import annotations

import json
import re
import subprocess

from conftest import REPO

MOBILE_DOC = (REPO / "docs" / "mobile-export.md").read_text()


def test_ios_build_starts_from_the_committed_pte_files():
    """A fresh clone can build the iOS sample: its steps run no export, and every file the Xcode project
    bundles from the repo is committed."""
    steps = MOBILE_DOC.split("To build it on a Mac", 1)[1].split("###", 1)[0]
    commands = re.search(r"```bash\n(.*?)```", steps, flags=re.S).group(1)
    assert "make" not in commands and "xcodegen generate" in commands
    project = (REPO / "mobile_export" / "ios" / "project.yml").read_text()
    bundled = [(REPO / "mobile_export" / "ios" / p).resolve().relative_to(REPO)
               for p in re.findall(r"path: (\.\./\.\./\S+)", project)]
    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout.split())
    assert len(bundled) >= 4 and all(str(p) in tracked for p in bundled), bundled


def test_mobile_results_name_the_cpu_of_the_latency_report():
    """One run, one CPU: the results paragraph names the CPU reports/bench_mobile.json was measured on."""
    cpu = json.loads((REPO / "reports" / "bench_mobile.json").read_text())["cpu"]
    vendor = "Intel Xeon" if "Xeon" in cpu else "AMD EPYC" if "EPYC" in cpu else cpu
    results = MOBILE_DOC.split("### Results", 1)[1].split("|", 1)[0]  # the paragraph above the table
    assert vendor in results and not [v for v in ("Intel Xeon", "AMD EPYC") if v != vendor and v in results]
