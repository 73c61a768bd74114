"""YuNet (OpenCV Zoo's ``face_detection_yunet_2023mar.onnx``) as a PyTorch module, for batches on a GPU.

OpenCV's ``FaceDetectorYN`` runs one image at a time on the CPU; this is the same network, its
weights read from the ONNX file's initializers, so a batch of photos of one padded size runs in
one call on any torch device. The ONNX graph is read with the ``onnx`` package (OpenCV 5's DNN
engine no longer exposes layer weights). The network is rebuilt by hand rather than
interpreted from the graph: the loader checks every convolution of the file against the one
built here (shape, stride, groups, padding, in graph order) and refuses a file that differs.

Network (all BatchNorms already folded into the convolutions by the export):

- backbone: a 3×3 stride-2 stem, then "depthwise-separable units" (1×1 pointwise, 3×3
  depthwise, ReLU) in stages separated by 2×2 max-pools; features at strides 8, 16, 32;
- neck (TFPN): top-down, each coarser level upsampled ×2 (nearest) and added to the finer one,
  each sum passed through one unit;
- heads per level: cls, obj (1 channel, sigmoid), bbox (4), kps (10): a 1×1 conv and a 3×3
  (depthwise where the head has several channels), no activation.

Input: (N, 3, H, W) float BGR in [0, 255] (OpenCV's ``blobFromImage`` defaults), H and W
multiples of 32. Output per stride: tensors in OpenCV's layout, (N, H/s·W/s, C) row-major.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from faceq.errors import ModelError

STRIDES = (8, 16, 32)
DIVISOR = 32  # inputs are padded (bottom, right) to a multiple of this, as FaceDetectorYN does
HEADS = (("cls", 1), ("bbox", 4), ("obj", 1), ("kps", 10))  # the ONNX file's order of head convolutions


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=True)


class SeparableUnit(nn.Module):
    """1×1 pointwise, 3×3 depthwise, ReLU (YuNet's ``ConvDPUnit``)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.pointwise = _conv(c_in, c_out, 1)
        self.depthwise = _conv(c_out, c_out, 3, groups=c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.depthwise(self.pointwise(x)))


class Head(nn.Module):
    """One output of one level: 1×1 to ``channels``, then a 3×3 per channel."""

    def __init__(self, channels: int, width: int = 64):
        super().__init__()
        self.reduce = _conv(width, channels, 1)
        self.spatial = _conv(channels, channels, 3, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.reduce(x))


class YuNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = _conv(3, 16, 3, stride=2)
        self.stem_unit = SeparableUnit(16, 16)
        # stages after each max-pool; the last three give strides 8, 16 and 32
        self.stage1 = nn.Sequential(SeparableUnit(16, 16), SeparableUnit(16, 32),
                                    SeparableUnit(32, 32), SeparableUnit(32, 64))
        self.stage8 = nn.Sequential(SeparableUnit(64, 64), SeparableUnit(64, 64))
        self.stage16 = nn.Sequential(SeparableUnit(64, 64), SeparableUnit(64, 64))
        self.stage32 = nn.Sequential(SeparableUnit(64, 64), SeparableUnit(64, 64))
        self.lateral = nn.ModuleList(SeparableUnit(64, 64) for _ in STRIDES)  # index: level (0 = stride 8)
        self.heads = nn.ModuleDict({name: nn.ModuleList(Head(channels) for _ in STRIDES) for name, channels in HEADS})

    def forward(self, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        x = F.max_pool2d(self.stem_unit(F.relu(self.stem(x))), 2)
        c8 = self.stage8(F.max_pool2d(self.stage1(x), 2))
        c16 = self.stage16(F.max_pool2d(c8, 2))
        c32 = self.stage32(F.max_pool2d(c16, 2))
        p32 = self.lateral[2](c32)
        p16 = self.lateral[1](c16 + F.interpolate(p32, scale_factor=2.0, mode="nearest"))
        p8 = self.lateral[0](c8 + F.interpolate(p16, scale_factor=2.0, mode="nearest"))
        levels = (p8, p16, p32)
        outputs = {}
        for name, _ in HEADS:
            maps = [head(level) for head, level in zip(self.heads[name], levels)]
            outputs[name] = [m.permute(0, 2, 3, 1).flatten(1, 2) for m in maps]  # (N, H·W, C), row-major
        outputs["cls"] = [t.sigmoid() for t in outputs["cls"]]
        outputs["obj"] = [t.sigmoid() for t in outputs["obj"]]
        return outputs

    def convolutions_in_export_order(self) -> list[nn.Conv2d]:
        """Every convolution in the order the ONNX export lists them (checked when loading)."""
        units = [self.stem_unit, *self.stage1, *self.stage8, *self.stage16, *self.stage32,
                 self.lateral[2], self.lateral[1], self.lateral[0]]
        convs = [self.stem] + [conv for unit in units for conv in (unit.pointwise, unit.depthwise)]
        for name, _ in HEADS:
            convs += [conv for head in self.heads[name] for conv in (head.reduce, head.spatial)]
        return convs


def load_yunet(path: str | Path) -> YuNet:
    """The network with the ONNX file's weights, in eval mode on the CPU (``.to(device)`` it)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:  # pragma: no cover - a dependency; said clearly if an install lacks it
        raise ModelError("the PyTorch YuNet needs the onnx package (pip install onnx)") from None
    try:
        graph = onnx.load(str(path)).graph
    except Exception as exc:
        raise ModelError(f"{path} is not an ONNX file onnx can read: {exc}") from None
    initializers = {t.name: t for t in graph.initializer}
    nodes = [node for node in graph.node if node.op_type == "Conv"]
    network = YuNet()
    expected = network.convolutions_in_export_order()
    if len(nodes) != len(expected):
        raise ModelError(f"{path}: {len(nodes)} convolutions, YuNet 2023mar has {len(expected)}")
    with torch.no_grad():
        for node, conv in zip(nodes, expected):
            attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            weight, bias = (torch.from_numpy(numpy_helper.to_array(initializers[name]).copy())
                            for name in node.input[1:3])
            layout = (tuple(weight.shape), list(attributes.get("strides", [1, 1])), attributes.get("group", 1),
                      list(attributes.get("pads", [0, 0, 0, 0])))
            wanted = (tuple(conv.weight.shape), list(conv.stride), conv.groups, list(conv.padding) * 2)
            if layout != wanted:
                raise ModelError(f"{path}: {node.name} is {layout}, YuNet 2023mar has {wanted} there")
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)
    outputs = [o.name for o in graph.output]
    if sorted(outputs) != sorted(f"{name}_{s}" for name, _ in HEADS for s in STRIDES):
        raise ModelError(f"{path}: outputs {outputs} are not YuNet's cls/obj/bbox/kps at strides {STRIDES}")
    return network.eval()
