"""BatchNorm folded into the neighbouring convolutions and linear layers, for inference.

In eval mode a BatchNorm is a fixed per-channel affine map, so where it directly follows a
convolution or a linear layer (or directly precedes a linear layer) it can be folded into that
layer's weights and bias: the same function with one kernel fewer per BatchNorm. IR-SE-64 has
one such BatchNorm after the stem, after every unit's second convolution and projection
shortcut, and around the heads. The BatchNorm that opens each residual unit stays: it precedes a
zero-padded convolution, and folding it there would change the border pixels (padding would
then pad the un-normalised input).

``fold_batchnorm`` returns a folded copy; the original is left as it is (it is the reference).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from faceq.models.rts import BottleneckIRSE, RTSNet


def _scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


@torch.no_grad()
def _fold_after_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """conv then bn → one conv (bn scales each output channel)."""
    scale, shift = _scale_shift(bn)
    fused = copy.deepcopy(conv)
    fused.weight.mul_(scale.reshape(-1, 1, 1, 1))
    bias = shift if conv.bias is None else conv.bias * scale + shift
    fused.bias = nn.Parameter(bias.clone())
    return fused


@torch.no_grad()
def _fold_after_linear(linear: nn.Linear, bn: nn.BatchNorm1d) -> nn.Linear:
    scale, shift = _scale_shift(bn)
    fused = copy.deepcopy(linear)
    fused.weight.mul_(scale.reshape(-1, 1))
    fused.bias.copy_(linear.bias * scale + shift)
    return fused


@torch.no_grad()
def _fold_before_linear(bn: nn.BatchNorm2d, linear: nn.Linear, spatial: int) -> nn.Linear:
    """bn (C channels) → flatten (C·H·W, channel-major) → linear: one linear."""
    scale, shift = _scale_shift(bn)
    scale, shift = scale.repeat_interleave(spatial), shift.repeat_interleave(spatial)
    fused = copy.deepcopy(linear)
    fused.bias.add_(linear.weight @ shift)
    fused.weight.mul_(scale.reshape(1, -1))
    return fused


def _fold_unit(unit: BottleneckIRSE) -> None:
    if isinstance(unit.shortcut_layer, nn.Sequential):  # projection: conv 1×1 + bn
        conv, bn = unit.shortcut_layer
        unit.shortcut_layer = _fold_after_conv(conv, bn)
    bn_in, conv1, prelu, conv2, bn_out, se = unit.res_layer
    unit.res_layer = nn.Sequential(bn_in, conv1, prelu, _fold_after_conv(conv2, bn_out), se)


def fold_batchnorm(model: RTSNet) -> RTSNet:
    """A copy of ``model`` (eval mode) with every foldable BatchNorm folded; same outputs to
    float rounding (tests/test_fuse.py: cosine ≥ 0.99999 against the unfolded network)."""
    if getattr(model, "batchnorm_folded", False):  # folded already (an engine's model handed on)
        return model
    folded = copy.deepcopy(model).eval()
    folded.batchnorm_folded = True
    stem, body, tail = folded.features
    conv, bn, prelu = stem
    folded.features[0] = nn.Sequential(_fold_after_conv(conv, bn), prelu)
    for unit in body:
        _fold_unit(unit)
    final_bn, dropout, flatten = tail
    spatial = model.features_backbone[0].in_features // final_bn.num_features
    folded.features[2] = nn.Sequential(dropout, flatten)
    for name in ("features_backbone", "logvar_rts_backbone", "logvar_rts_plus_backbone"):
        linear, bn = getattr(folded, name)
        setattr(folded, name, nn.Sequential(_fold_after_linear(_fold_before_linear(final_bn, linear, spatial), bn)))
    return folded
