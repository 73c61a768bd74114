"""How far fp16 and bf16 move faceq's outputs from fp32, for one network on one device.

``python -m bench.precision [--device cpu|cuda:N] [--arch ir_se_64] [--images 64] [--record]``

Same weights (seeded random, BatchNorm randomised so it is not the identity) and
the same crops (real portrait, drawn faces, noise) through the engine at each precision;
reports per-image cosine to fp32 (min, median) and score differences (max abs, max rel).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from bench import record
from faceq.errors import ModelError
from faceq.models.preprocess import crop_face
from faceq.models.weights import LoadedModel, load_model
from devstack.samples import draw_face
from faceq.workers.engine import Engine


def randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Seeded random running statistics and affine parameters for every BatchNorm, so BN is
    not the identity (fresh BN layers are) when outputs are compared."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
    return model


def sample_crops(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    crops = [crop_face(draw_face(rng, int(rng.integers(100, 250)))).faces[0].pixels for _ in range(n - n // 4)]
    crops += [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(n // 4)]
    return np.stack(crops)


def measure(device: str, arch: str, n_images: int, batch: int) -> dict:
    crops = sample_crops(n_images)
    model = randomise_batchnorm(load_model(None, arch).model)
    outputs, rows = {}, []
    for precision in ("fp32", "bf16", "fp16"):
        try:
            engine = Engine(LoadedModel(model, "bench", True), device, precision, max_batch=batch)
        except ModelError as exc:
            rows.append({"precision": precision, "refused": str(exc)})
            continue
        outputs[precision] = engine.infer(crops)
        model = model.float()  # the engine casts the module in place
        if precision == "fp32":
            continue
        (e32, q32), (e, q) = outputs["fp32"], outputs[precision]
        cosine = (e32 * e).sum(axis=1)
        rows.append({
            "precision": precision,
            "cosine_min": round(float(cosine.min()), 6),
            "cosine_median": round(float(np.median(cosine)), 6),
            "score_abs_diff_max": round(float(np.abs(q - q32).max()), 6),
            "score_rel_diff_max": round(float((np.abs(q - q32) / np.abs(q32)).max()), 6),
        })
    # Scale for the figures above: how alike the embeddings of *different* images are. Random
    # weights map every input to nearby embeddings, so small deviations here can still be
    # large relative to real identity margins; re-measure with real weights.
    e32 = outputs["fp32"][0]
    between = (e32 @ e32.T)[np.triu_indices(len(e32), k=1)]
    return {"benchmark": "precision", "device": device, "arch": arch, "images": n_images, "batch": batch,
            "fp32_cosine_between_different_images_median": round(float(np.median(between)), 6),
            "vs_fp32": rows, "machine": record.machine(), "commit": record.commit()}


def as_table(document: dict) -> str:
    lines = [
        f"Deviation from fp32, {document['arch']} on {document['device']}, {document['images']} crops "
        f"(seeded random weights, randomised BN statistics):",
        "",
        f"For scale: median fp32 cosine between *different* images = "
        f"{document['fp32_cosine_between_different_images_median']} (random weights map all inputs close together).",
        "",
        "| precision | cosine min | cosine median | score abs diff max | score rel diff max |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in document["vs_fp32"]:
        if "refused" in row:
            lines.append(f"| {row['precision']} | refused: {row['refused']} | | | |")
        else:
            lines.append(f"| {row['precision']} | {row['cosine_min']} | {row['cosine_median']} | "
                         f"{row['score_abs_diff_max']} | {row['score_rel_diff_max']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.precision", description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", default="ir_se_64")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = parser.parse_args()
    document = measure(args.device, args.arch, args.images, args.batch)
    print(json.dumps(document, indent=2))
    if args.record:
        record.append("Precision", as_table(document), document)


if __name__ == "__main__":
    main()
