"""ResNN: the hot dog classifier (seed design). Imports only torch so it drops flat into a .mar."""
from __future__ import annotations

import torch
from torch import nn

SEED_WIDTHS = (32, 64, 128, 256)


class DownBlock(nn.Module):
    """3x3 stride-2 conv-BN-ReLU, 3x3 conv-BN, plus a 1x1 stride-2 projection shortcut."""

    def __init__(self, in_ch: int, out_ch: int, drop_path: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 1, stride=2, bias=False), nn.BatchNorm2d(out_ch)
        )
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        if self.training and self.drop_path > 0:
            # Stochastic depth: drop the residual branch per sample, keep the shortcut.
            keep = torch.rand(out.shape[0], 1, 1, 1, device=out.device) >= self.drop_path
            out = out * keep.to(out.dtype) / (1.0 - self.drop_path)
        return torch.relu(out + self.shortcut(x))


class ResNN(nn.Module):
    def __init__(
        self,
        num_classes: int = 2,
        widths: tuple[int, ...] = SEED_WIDTHS,
        dropout: float = 0.2,
        drop_path: float = 0.0,
    ):
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"ResNN has 4 blocks, got widths={widths}")
        chans = (3, *widths)
        self.blocks = nn.Sequential(
            *(DownBlock(chans[i], chans[i + 1], drop_path * i / 3) for i in range(4))
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each residual branch so every block starts as its shortcut.
        for block in self.blocks:
            nn.init.zeros_(block.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(x)
        x = torch.flatten(torch.mean(x, dim=(2, 3)), 1)
        return self.head(self.dropout(x))


def inference_gflops(model: nn.Module, input_size: int) -> float:
    """Floating-point operations (a multiply-add counts 2) for one image at `input_size`, in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    param = next(model.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, input_size, input_size, device=param.device, dtype=param.dtype))
    model.train(was_training)
    return counter.get_total_flops() / 1e9


def build_model(arch: dict) -> ResNN:
    """Build from the `arch` dict stored in a run's manifest (the one description of a trained model)."""
    return ResNN(
        num_classes=int(arch["num_classes"]),
        widths=tuple(int(w) for w in arch["widths"]),
        dropout=float(arch.get("dropout", 0.0)),
    )
