"""Training augmentation on batched uint8 tensors (the decoded cache), so no JPEG is decoded per epoch.

Evaluation needs no preset here: it is `model_src.preprocess` (the shipped spec) and nothing else.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from model_src.preprocess import PreprocessSpec, normalize


class TrainAugment:
    """RandomResizedCrop + horizontal flip + color jitter + RandomErasing, per sample, on a batch."""

    def __init__(self, spec: PreprocessSpec, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3),
                 jitter: float = 0.3, erasing: float = 0.25):
        self.spec, self.scale, self.ratio = spec, scale, ratio
        self.jitter, self.erasing = jitter, erasing

    def _crop_box(self, h: int, w: int, g: torch.Generator) -> tuple[int, int, int, int]:
        area = h * w
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * torch.rand(1, generator=g).item())
            aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * torch.rand(1, generator=g).item())
            cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
                left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
                return top, left, ch, cw
        return 0, 0, h, w

    def __call__(self, images: torch.Tensor, size: int, g: torch.Generator,
                 boxes: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> normalized float (B, 3, size, size). `boxes` (B, 4: top, left, h, w) fixes
        the crops (the views a teacher labelled) instead of drawing them."""
        b, _, h, w = images.shape
        crops = []
        for i in range(b):
            top, left, ch, cw = self._crop_box(h, w, g) if boxes is None else boxes[i].tolist()
            crop = images[i:i + 1, :, top:top + ch, left:left + cw].float()
            crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True,
                                       align_corners=False))
        x = torch.cat(crops).clamp_(0, 255)
        flip = torch.rand(b, generator=g) < 0.5
        x[flip] = x[flip].flip(-1)
        if self.jitter > 0:
            x = self._color_jitter(x, g)
        x = normalize(x, self.spec)
        if self.erasing > 0:
            x = self._erase(x, g)
        return x

    def _color_jitter(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b = x.shape[0]

        def factors():
            return (1 + (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * self.jitter)

        x = x * factors()  # brightness
        gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        mean = gray.mean(dim=(2, 3), keepdim=True)
        x = (x - mean) * factors() + mean  # contrast
        gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = (x - gray) * factors() + gray  # saturation
        return x.clamp_(0, 255)

    def _erase(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        for i in torch.nonzero(torch.rand(b, generator=g) < self.erasing).flatten().tolist():
            area = h * w * (0.02 + 0.31 * torch.rand(1, generator=g).item())
            aspect = math.exp(math.log(0.3) + (math.log(3.3) - math.log(0.3)) * torch.rand(1, generator=g).item())
            eh, ew = min(h, round(math.sqrt(area * aspect))), min(w, round(math.sqrt(area / aspect)))
            top = int(torch.randint(0, h - eh + 1, (1,), generator=g))
            left = int(torch.randint(0, w - ew + 1, (1,), generator=g))
            x[i, :, top:top + eh, left:left + ew] = torch.randn(3, eh, ew, generator=g)
        return x


def cutmix(x: torch.Tensor, y: torch.Tensor, num_classes: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """CutMix on a batch: paste one box (area ~ U(0, 1)) from the next sample, mix the labels by area.

    Returns the mixed images and (B, num_classes) label probabilities.
    """
    _, _, h, w = x.shape
    side = math.sqrt(1.0 - torch.rand(1, generator=g).item())  # Beta(1, 1) mixing ratio, as in the paper
    ch, cw = round(h * side), round(w * side)
    cy, cx = int(torch.randint(0, h, (1,), generator=g)), int(torch.randint(0, w, (1,), generator=g))
    top, bottom = max(cy - ch // 2, 0), min(cy + ch - ch // 2, h)
    left, right = max(cx - cw // 2, 0), min(cx + cw - cw // 2, w)
    x = x.clone()
    x[:, :, top:bottom, left:right] = x[:, :, top:bottom, left:right].roll(1, dims=0)
    pasted = (bottom - top) * (right - left) / (h * w)  # the area actually pasted, after clipping
    onehot = F.one_hot(y, num_classes).float()
    return x, onehot * (1.0 - pasted) + onehot.roll(1, dims=0) * pasted


def mixup(x: torch.Tensor, target: torch.Tensor, alpha: float, g: torch.Generator
          ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup on a batch with itself reversed: lam * x + (1 - lam) * x.flip(0), lam ~ Beta(alpha, alpha).

    Returns the mixed images, the mixed (B, classes) targets and lam (to mix other per-image targets alike).
    """
    # Beta(a, a) from two Gamma(a) draws; torch's Gamma sampler takes no generator, so via -log(U) for a=1.
    if alpha == 1.0:
        u = torch.rand(2, generator=g).clamp_min(1e-12)
        ga, gb = -u.log()
    else:
        ga, gb = torch.distributions.Gamma(alpha, 1.0).sample((2,))
    lam = float(ga / (ga + gb))
    return lam * x + (1 - lam) * x.flip(0), lam * target + (1 - lam) * target.flip(0), lam
