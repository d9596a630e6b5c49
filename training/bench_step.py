"""Training-step speed of the CPU options issue 8 asked about: `python -m training.bench_step`.

Each variant (memory format x torch.compile x bf16 autocast or fp32) runs in its own process, so one that
crashes (channels_last backward corrupted the heap here on torch 2.14.1) or runs past --timeout is recorded
as a crash instead of ending the benchmark.
Variants take turns for `--rounds`, so load from other jobs on the shared machine falls on all of them.
Writes reports/bench_train_step.json: img/s per variant and size, and the ratio to eager NCHW.
"""
from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time

from training.data import REPO_ROOT

# name: (channels_last, torch.compile, bf16 autocast). `fp32` is the reference `amp: auto` chooses between.
VARIANTS = {"eager": (False, False, True), "channels_last": (True, False, True), "compile": (False, True, True),
            "compile+channels_last": (True, True, True), "fp32": (False, False, False),
            "fp32+channels_last": (True, False, False), "fp32+compile": (False, True, False)}


def measure(size: int, channels_last: bool, compiled: bool, bf16: bool, widths: list[int], batch: int,
            steps: int) -> float:
    """Images/s of AdamW training steps on random data (the data path is not measured)."""
    import torch
    import torch.nn.functional as F

    from model_src.resnn import ResNN

    torch.manual_seed(0)
    model = ResNN(2, tuple(widths))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    step_model = torch.compile(model) if compiled else model
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (batch,))
    warmup = 3
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(step_model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - start)


def run_variant(name: str, size: int, args) -> dict:
    channels_last, compiled, bf16 = VARIANTS[name]
    cmd = [sys.executable, "-m", "training.bench_step", "--one", json.dumps(
        {"size": size, "channels_last": channels_last, "compiled": compiled, "bf16": bf16, "widths": args.widths,
         "batch": args.batch, "steps": args.steps})]
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:  # a hung variant (run() has killed it) must not lose the others' results
        return {"crashed": True, "returncode": None, "error": f"timeout after {args.timeout:g} s"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        # A signal death's last stderr line is often an unrelated warning; name the signal first.
        died = f"{signal.Signals(-proc.returncode).name}: " if proc.returncode < 0 else ""
        return {"crashed": True, "returncode": proc.returncode, "error": died + last[-300:]}
    return {"crashed": False, "img_per_s": float(proc.stdout.strip().splitlines()[-1])}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="112,144", help="training resolutions, comma-separated")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--widths", type=lambda s: [int(w) for w in s.split(",")], default=[32, 64, 128, 256])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--report", default="reports/bench_train_step.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one variant, print img/s
    args = parser.parse_args(argv)
    if args.one:
        print(measure(**json.loads(args.one)))
        return {}
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for r in range(args.rounds):
            for v in variants[r % len(variants):] + variants[:r % len(variants)]:
                runs[v].append(run_variant(v, size, args))
                print(f"{size}px {v}: {runs[v][-1]}", file=sys.stderr)
        for v in variants:
            speeds = [x["img_per_s"] for x in runs[v] if not x["crashed"]]
            crashes = [x for x in runs[v] if x["crashed"]]
            results.append({"size": size, "variant": v, "runs": len(runs[v]), "crashes": len(crashes),
                            "crash_errors": sorted({c["error"] for c in crashes}),
                            "img_per_s": statistics.median(speeds) if speeds else None})
        base = next((x["img_per_s"] for x in results if x["size"] == size and x["variant"] == variants[0]), None)
        for x in results:
            if x["size"] == size:
                x[f"vs_{variants[0]}"] = (x["img_per_s"] / base) if base and x["img_per_s"] else None
    import torch

    from training.train import cpu_has_native_bf16
    blob = {"torch": torch.__version__, "threads": torch.get_num_threads(), "batch": args.batch,
            "widths": args.widths, "steps": args.steps, "rounds": args.rounds,
            "amp": {v: "bf16" if VARIANTS[v][2] else "fp32" for v in variants},
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_native_bf16": cpu_has_native_bf16(),
            "results": results}
    report = REPO_ROOT / args.report
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(blob, indent=2) + "\n")
    for x in results:
        speed = f"{x['img_per_s']:.1f} img/s" if x["img_per_s"] else "no run finished"
        print(f"{x['size']}px {x['variant']:>22}: {speed}  crashes {x['crashes']}/{x['runs']}")
    return blob


if __name__ == "__main__":
    main()
