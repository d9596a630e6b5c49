"""The transfer-learning arm: `python -m training.transfer --config training/configs/distill.yaml --out DIR`.

Pretrained EfficientNet-Lite0 (ImageNet-1k, from the pinned wheel) with a new two-class head fitted on its
frozen features of the same crops and validation split as ResNN's distillation (training.teacher.Teacher).
Writes a folder `training.evaluate` reads like a ResNN run (model.pt, preprocess.json, manifest.json), and
beside it `<out>-zero-shot/`: the untouched ImageNet model's class 934 as the hot dog score.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from model_src.bundle import sha256_file
from model_src.cli import run_cli
from model_src.preprocess import HOTDOG_LABEL, PreprocessSpec
from training.config import parse_config
from training.data import DataError, display_path, file_list_sha256, load_cached
from training.presets import TrainAugment
from training.teacher import TEACHER_SPEC_FIELDS, TEACHERS, Teacher, load_pretrained, teacher_weights_path
from training.train import autocast_for, check_writable, pick_device, scan_recipe_data, split_samples, training_clock


def main(argv: list[str] | None = None) -> Path:
    cfg, _ = parse_config(argv)
    cfg.teacher = cfg.teacher or "lite0"
    teacher_weights_path(cfg.teacher)
    out = Path(cfg.out)
    check_writable(out)
    wall_start = time.perf_counter()
    samples, labels, data_root = scan_recipe_data(cfg)
    train_s, val_s = split_samples(samples, cfg)
    student_spec = PreprocessSpec(labels=labels, input_size=cfg.input_size, resize_size=cfg.resize_size)
    train_x, train_y, _, _ = load_cached(train_s, cfg.cache_size, cfg.cache_size, student_spec.max_pixels,
                                         cfg.decode_workers)
    # The same validation tensors as the distillation run (so both share the teacher's cached features);
    # the saved model is evaluated at the teacher's size, resized in the student's proportion.
    val_x, val_y, val_kept, _ = load_cached(val_s, student_spec.resize_size, student_spec.input_size,
                                            student_spec.max_pixels, cfg.decode_workers)
    spec = PreprocessSpec(labels=labels, input_size=cfg.teacher_size,
                          resize_size=round(cfg.teacher_size * cfg.resize_size / cfg.input_size), **TEACHER_SPEC_FIELDS)
    val_sources = [val_s[i].source for i in val_kept.tolist()]
    augment = TrainAugment(student_spec, scale=(cfg.crop_scale_min, 1.0))
    autocast, _ = autocast_for(cfg, pick_device(cfg))
    teacher = Teacher.build(train_x, train_y, val_x, val_y, val_sources, cfg, augment,
                            file_list_sha256(train_s + val_s, data_root), autocast, training_clock(cfg),
                            labels, log=lambda m: print(m, file=sys.stderr))
    model = load_pretrained(cfg.teacher)
    model.reset_classifier(len(labels))
    model.get_classifier().load_state_dict(teacher.head.state_dict())
    torch.save(model.state_dict(), out / "model.pt")
    spec.save(out)
    manifest = {"arch": {"name": TEACHERS[cfg.teacher][1], "num_classes": len(labels)}, "weights": "model.pt",
                "weights_sha256": sha256_file(out / "model.pt"), "data_root": display_path(data_root),
                "data_files_sha256": file_list_sha256(train_s + val_s, data_root),
                "method": f"linear head on frozen features of {cfg.teacher_views} crops per image",
                "train_minutes": teacher.summary["teacher_seconds"] / 60,
                "wall_minutes_this_process": (time.perf_counter() - wall_start) / 60,
                "parameters": sum(p.numel() for p in model.parameters()), **teacher.summary}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (out / "config.yaml").write_text(cfg.to_yaml())
    zero = out.with_name(out.name + "-zero-shot")
    zero.mkdir(parents=True, exist_ok=True)
    spec.save(zero)
    (zero / "manifest.json").write_text(json.dumps({
        "arch": {"name": "tf_efficientnet_lite0_zero_shot", "num_classes": len(labels),
                 "hotdog_index": labels.index(HOTDOG_LABEL)},
        "weights": None, "weights_sha256": None, "train_minutes": 0.0}, indent=2) + "\n")
    print(f"done: {out} and {zero}", file=sys.stderr)
    return out


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, (DataError,))


if __name__ == "__main__":
    sys.exit(cli())
