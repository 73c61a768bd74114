"""IR-SE backbone with the RTS (Random Temperature Scaling) uncertainty head.

Module names and nesting reproduce ModelScope's ``RTSBackbone`` exactly, so the published
``pytorch_model.pt`` of ``damo/cv_ir_face-recognition-ood_rts`` loads with ``strict=True``:

    features.0.*                  input layer: Conv3x3(3→64), BN, PReLU
    features.1.<unit>.*           IR-SE units (shortcut_layer, res_layer incl. SE at res_layer.5)
    features.2.0.*                BatchNorm2d(512) (then Dropout, Flatten: no parameters)
    features_backbone.{0,1}.*     Linear(512·7·7 → 512) + BatchNorm1d(512)   → embedding
    logvar_rts_backbone.{0,1}.*   Linear(512·7·7 → 1)   + BatchNorm1d(1)     → logvar
    logvar_rts_plus_backbone.*    the RTS+ head (``alpha`` outputs), kept for layout only
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from faceq.models.align import INPUT_SIZE  # noqa: F401  (the network's input side; align.py owns it, torch-free)
EMBEDDING_DIM = 512


@dataclass(frozen=True)
class Architecture:
    """Shape of an IR-SE network: residual units and channel width per stage."""

    name: str
    units: tuple[int, int, int, int]
    widths: tuple[int, int, int, int]
    rts_plus_dim: int = 16  # ModelScope's `alpha`; overridden by a checkpoint's own shape


ARCHITECTURES = {
    # The published model: IR-SE-64, as in ModelScope's get_blocks(64).
    "ir_se_64": Architecture("ir_se_64", units=(3, 8, 16, 3), widths=(64, 128, 256, 512)),
    # A tiny variant with the same structure, for fast end-to-end tests and queue benchmarks.
    "ir_se_tiny": Architecture("ir_se_tiny", units=(1, 1, 1, 1), widths=(16, 32, 64, 128)),
}


class SEModule(nn.Module):
    """Squeeze-and-excitation gate (channel attention) with 1×1 convolutions."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, padding=0, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, padding=0, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * gate


class BottleneckIRSE(nn.Module):
    """Improved-residual unit with SE: BN-Conv-PReLU-Conv-BN-SE plus a (projected) shortcut."""

    def __init__(self, in_channels: int, depth: int, stride: int):
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, (1, 1), stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, (3, 3), (1, 1), 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth, 16),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def _body(arch: Architecture) -> nn.Sequential:
    units = []
    in_channels = 64
    for n_units, depth in zip(arch.units, arch.widths):
        units.append(BottleneckIRSE(in_channels, depth, stride=2))
        units.extend(BottleneckIRSE(depth, depth, stride=1) for _ in range(n_units - 1))
        in_channels = depth
    return nn.Sequential(*units)


class RTSNet(nn.Module):
    """IR-SE backbone + embedding head + RTS log-variance head.

    ``forward`` takes a float batch (N, 3, 112, 112), RGB, normalised to [-1, 1], and returns
    the raw (un-normalised) embedding (N, 512) and logvar (N, 1), as the reference does.
    """

    def __init__(self, arch: Architecture):
        super().__init__()
        self.arch = arch
        final = arch.widths[-1]
        flat = final * 7 * 7
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 64, (3, 3), 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64)),
            _body(arch),
            nn.Sequential(nn.BatchNorm2d(final), nn.Dropout(), nn.Flatten()),
        )
        self.features_backbone = nn.Sequential(nn.Linear(flat, EMBEDDING_DIM), nn.BatchNorm1d(EMBEDDING_DIM))
        self.logvar_rts_backbone = nn.Sequential(nn.Linear(flat, 1), nn.BatchNorm1d(1))
        self.logvar_rts_plus_backbone = nn.Sequential(
            nn.Linear(flat, arch.rts_plus_dim), nn.BatchNorm1d(arch.rts_plus_dim)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = self.features(x)
        return self.features_backbone(flat), self.logvar_rts_backbone(flat)


def embed_and_score(model: RTSNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference pipeline's outputs: L2-normalised embedding and score = exp(logvar)."""
    raw, logvar = model(x)
    raw, logvar = raw.float(), logvar.float()  # normalise and exponentiate in fp32 at any precision
    embedding = raw / raw.norm(p=2, dim=1, keepdim=True)
    return embedding, logvar.exp().squeeze(1)
