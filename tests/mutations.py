"""Deliberate breakages, one at a time, each against the tests that must catch it: `make test-mutations`.

Each mutation replaces one small, unique snippet of the code in a scratch copy of the working tree (never
in the tree itself), runs only the tests named for it, and records whether they failed (caught), passed
(survived), or could not run (error). A snippet that is no longer in its file is reported as such, not as
caught: the code moved and the mutation needs updating. The selected tests run once unmutated first, so a
test that fails anyway cannot pass for a catch. Writes reports/mutations.json; exit 1 unless all are caught.

    .venv/bin/python tests/mutations.py [--only NAME ...] [--report PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    snippet: str
    replacement: str
    tests: tuple[str, ...]


LEARNING = "tests/test_learning.py::test_plain_recipe_lowers_the_loss_and_beats_chance_on_held_out_photos"
EVAL_REPORT = "tests/test_evaluate.py::test_make_eval_report_agrees_with_its_own_per_photo_predictions"
INT8_SAMPLE = "tests/test_artifacts.py::test_shipped_int8_program_agrees_with_eager_on_the_sample_photos"

MUTATIONS = [
    Mutation("no_optimizer_step", "training/train.py",
             "            optimizer.step()\n", "            pass\n", (LEARNING,)),
    Mutation("teacher_ignored", "training/train.py",
             "cfg.distill_weight * soft", "cfg.distill_weight * F.one_hot(y, soft.shape[1]).float()",
             ("tests/test_learning.py::test_distilled_student_follows_its_teacher_over_the_labels[fixed_views]",)),
    Mutation("resume_forgets_the_optimizer", "training/train.py",
             'optimizer.load_state_dict(ckpt["optimizer"])', "pass",
             ("tests/test_learning.py::test_resumed_run_reproduces_the_stored_expectation",)),
    Mutation("ema_not_evaluated", "training/train.py",
             "eval_model = ema.module if ema is not None else model", "eval_model = model",
             ("tests/test_training_paths.py::test_ema_weights_are_what_is_evaluated_and_shipped",)),
    Mutation("schedule_ignores_the_time_budget", "training/train.py",
             'state["train_seconds"] / (cfg.time_budget_min * 60) if cfg.time_budget_min else 0', "0",
             ("tests/test_training_paths.py::test_time_budget_ends_the_run_and_drives_the_schedule",)),
    Mutation("decode_cache_ignores_changed_files", "training/data.py",
             r'key.update(f"{s.path}\t{st.st_size}\t{st.st_mtime_ns}\t{s.label}\n".encode())',
             r'key.update(f"{s.path}\t{s.label}\n".encode())',
             ("tests/test_training_paths.py::test_decode_cache_is_reused_and_invalidated_by_a_changed_file",)),
    Mutation("evaluate_flips_every_label", "training/evaluate.py",
             "y_true = torch.tensor([samples[i].label for i in kept])",
             "y_true = 1 - torch.tensor([samples[i].label for i in kept])", (EVAL_REPORT,)),
    Mutation("confusion_matrix_transposed", "training/evaluate.py",
             "confusion[t, p] += 1", "confusion[p, t] += 1", ("tests/test_evaluate.py",)),
    Mutation("auc_of_the_wrong_class", "training/evaluate.py",
             "roc_auc(probs[:, positive], y_true == positive)", "roc_auc(probs[:, 1 - positive], y_true == positive)",
             ("tests/test_evaluate.py",)),
    Mutation("cmyk_inverted", "model_src/preprocess.py",
             'img = img.convert("RGB")  # grayscale, CMYK, palette',
             'img = ImageOps.invert(img.convert("RGB")) if img.mode == "CMYK" else img.convert("RGB")',
             ("tests/test_decoding.py::test_cmyk_jpeg_decodes_to_the_photos_colours",)),
    Mutation("exif_orientation_ignored", "model_src/preprocess.py",
             "img = ImageOps.exif_transpose(img)", "img = img", ("tests/test_decoding.py",)),
    Mutation("alpha_on_black", "model_src/preprocess.py",
             'Image.new("RGB", rgba.size, (255, 255, 255))', 'Image.new("RGB", rgba.size, (0, 0, 0))',
             ("tests/test_decoding.py::test_alpha_is_composited_on_white",)),
    Mutation("gif_last_frame", "model_src/preprocess.py",
             "img.seek(0)", "img.seek(getattr(img, 'n_frames', 1) - 1)",
             ("tests/test_decoding.py::test_palette_png_and_gif_first_frame",)),
    Mutation("normalization_without_255_scale", "model_src/preprocess.py",
             "    mean = torch.tensor(spec.mean).view(3, 1, 1) * 255.0\n    std = torch.tensor(spec.std).view(3, 1, 1) * 255.0\n",
             "    mean = torch.tensor(spec.mean).view(3, 1, 1)\n    std = torch.tensor(spec.std).view(3, 1, 1)\n",
             (INT8_SAMPLE,)),
    Mutation("label_order_swapped", "model_src/preprocess.py",
             "                d[key] = tuple(d[key])\n",
             "                d[key] = tuple(d[key])[::-1] if key == 'labels' else tuple(d[key])\n",
             (EVAL_REPORT, INT8_SAMPLE)),
    Mutation("proxy_model_not_loaded_untranslated", "web/proxy.py",
             'if status == 404 and kind == "ModelNotFoundException":', "if False:",
             ("tests/test_proxy_errors.py",)),
    Mutation("proxy_timeout_as_bad_gateway", "web/proxy.py",
             "return 504, _error(504,", "return 502, _error(502,", ("tests/test_proxy_errors.py",)),
]


def scratch_copy(dest: Path) -> None:
    """Tracked and untracked-but-not-ignored files of the working tree, as they are now."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def run_tests(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(copy)}  # the copy's modules, not the editable install's
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                              cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, f"timeout after {timeout:.0f} s"
    return proc.returncode, proc.stdout[-1500:]


def apply(copy: Path, m: Mutation) -> str | None:
    """Mutate the copy's file; the original text, or None when the snippet is not there exactly once."""
    path = copy / m.file
    text = path.read_text()
    if text.count(m.snippet) != 1:
        return None
    path.write_text(text.replace(m.snippet, m.replacement))
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="run only these mutations (names)")
    parser.add_argument("--report", default=str(REPO / "reports" / "mutations.json"))
    parser.add_argument("--timeout", type=float, default=900, help="seconds per test run")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="do not run the selected tests unmutated first (only right after they passed)")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    unknown = set(args.only or ()) - {m.name for m in MUTATIONS}
    if unknown:
        parser.error(f"unknown mutation(s): {', '.join(sorted(unknown))}")
    results = []
    with tempfile.TemporaryDirectory(prefix="hotdog-mutations-") as tmp:
        copy = Path(tmp)
        scratch_copy(copy)
        baseline_tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        start = time.monotonic()
        code, output = (0, "") if args.skip_baseline else run_tests(copy, baseline_tests, args.timeout * 2)
        if code != 0:
            print(f"error: the tests fail without any mutation; fix them first:\n{output}", file=sys.stderr)
            return 2
        print(f"baseline: {len(baseline_tests)} test selections pass unmutated ({time.monotonic() - start:.0f} s)"
              if not args.skip_baseline else "baseline: skipped (--skip-baseline)")
        for m in chosen:
            start = time.monotonic()
            original = apply(copy, m)
            if original is None:
                outcome, detail = "snippet not found", f"{m.snippet!r} is not in {m.file} exactly once"
            else:
                code, detail = run_tests(copy, m.tests, args.timeout)
                (copy / m.file).write_text(original)
                outcome = {0: "survived", 1: "caught"}.get(code, "error")
            # What failed and why (pytest's FAILED line), so a catch by an unrelated crash shows.
            failed = [line for line in detail.splitlines() if line.startswith(("FAILED", "ERROR"))]
            results.append({"name": m.name, "file": m.file, "tests": list(m.tests), "outcome": outcome,
                            "seconds": round(time.monotonic() - start, 1),
                            "detail": (failed or detail.strip().splitlines() or [""])[-1][:300]})
            print(f"{m.name:40s} {outcome} ({results[-1]['seconds']:.0f} s)", flush=True)
            report = write_report(args.report, results, len(chosen), not args.skip_baseline)  # progress, each one
    not_caught = report["not_caught"]
    print(f"{report['caught']}/{report['total']} caught" + (f"; not caught: {', '.join(not_caught)}" if not_caught
                                                              else "") + f" -> {args.report}")
    return 0 if not not_caught else 1


def write_report(path: str, results: list[dict], planned: int, baseline_run: bool) -> dict:
    not_caught = [r["name"] for r in results if r["outcome"] != "caught"]
    report = {"baseline_run": baseline_run, "mutations": results, "caught": len(results) - len(not_caught), "total": len(results),
              "planned": planned, "not_caught": not_caught, "all_caught": not not_caught and len(results) == planned}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    sys.exit(main())
