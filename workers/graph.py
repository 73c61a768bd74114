"""How the network runs on its device: ``FACEQ_INFERENCE`` = eager | fused | compiled | graphs.

- ``eager``: the network as loaded (the reference layout, module by module).
- ``fused``: BatchNorm folded into the convolutions and linear layers (``faceq.models.fuse``): the
  same function with about two thirds of the BatchNorm kernels gone.
- ``compiled``: fused, then ``torch.compile`` (Inductor) with static shapes; batches are padded
  to the batch buckets so each bucket compiles once, at warm-up.
- ``graphs`` (CUDA only): fused, one CUDA graph captured per batch bucket at warm-up on static
  input and output tensors; a batch is then one graph replay, with no per-kernel launch cost.

Every mode computes the same function (tests/test_fuse.py, tests/test_engine.py: cosine ≥ 0.9999
against eager). Which is fastest depends on the device: see bench/RESULTS.md.
"""

from __future__ import annotations

from typing import Callable

import torch

from faceq.errors import ModelError
from faceq.models.fuse import fold_batchnorm

INFERENCE_MODES = ("eager", "fused", "compiled", "graphs")
DEFAULT_INFERENCE = "fused"


def resolve_inference(name: str, device: torch.device) -> str:
    if name not in INFERENCE_MODES:
        raise ModelError(f"FACEQ_INFERENCE={name!r}; choose {', '.join(INFERENCE_MODES)}")
    if name == "graphs" and device.type != "cuda":
        raise ModelError(f"FACEQ_INFERENCE=graphs needs a CUDA device, not {device}; use fused or compiled")
    return name


def prepare_network(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """The module to place on the device (the loaded model itself is never modified)."""
    return model if mode == "eager" else fold_batchnorm(model)


def wrap_forward(forward: Callable, mode: str) -> Callable:
    """``forward`` compiled for ``compiled``; as it is otherwise (graphs are captured later)."""
    if mode != "compiled":
        return forward
    return torch.compile(forward, dynamic=False, fullgraph=False)


class GraphSet:
    """One CUDA graph per batch bucket, replaying ``forward`` on slices of one static input."""

    def __init__(self, forward: Callable, static_input: torch.Tensor, buckets: list[int]):
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, tuple[torch.Tensor, ...]]] = {}
        stream = torch.cuda.Stream(device=static_input.device)
        stream.wait_stream(torch.cuda.current_stream(static_input.device))
        with torch.cuda.stream(stream):  # warm-up runs off the default stream, as capture requires
            for size in buckets:
                forward(static_input[:size])
        torch.cuda.current_stream(static_input.device).wait_stream(stream)
        pool = None
        for size in sorted(buckets, reverse=True):  # the largest first: the others reuse its memory pool
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                outputs = forward(static_input[:size])
            pool = graph.pool()
            self._graphs[size] = (graph, outputs)

    def replay(self, bucket: int) -> tuple[torch.Tensor, ...]:
        graph, outputs = self._graphs[bucket]
        graph.replay()
        return outputs
