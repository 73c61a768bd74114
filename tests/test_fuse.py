"""BatchNorm folding (models/fuse.py) keeps the model exactly what it is."""

from __future__ import annotations

import pytest
import torch

from faceq.models.fuse import fold_batchnorm
from faceq.models.rts import embed_and_score
from faceq.models.weights import load_model


def _with_trained_looking_batchnorms(model, seed: int = 3):
    """Seeded random init leaves every BatchNorm the identity (mean 0, var 1, γ 1, β 0): folding
    those would prove nothing. Give each one statistics and an affine map like a trained one's."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.25)
                module.weight.copy_(torch.rand(n, generator=generator) * 1.5 + 0.25)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
    return model


@pytest.mark.parametrize("arch", ["ir_se_tiny", "ir_se_64"])
def test_the_folded_network_gives_the_same_embeddings_and_scores(arch):
    model = _with_trained_looking_batchnorms(load_model(None, arch).model).eval()
    folded = fold_batchnorm(model)
    batchnorms = lambda m: sum(isinstance(x, torch.nn.modules.batchnorm._BatchNorm) for x in m.modules())  # noqa: E731
    units = len(model.features[1])
    assert batchnorms(folded) == units  # only the BatchNorm that opens each residual unit is left
    x = torch.rand(6, 3, 112, 112, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.inference_mode():
        embedding, score = embed_and_score(model, x)
        embedding_folded, score_folded = embed_and_score(folded, x)
    cosine = torch.nn.functional.cosine_similarity(embedding, embedding_folded, dim=1)
    assert cosine.min().item() >= 0.99999
    assert torch.allclose(score, score_folded, rtol=1e-4)
    assert batchnorms(model) >= 2 * units + 4  # the original is untouched: it stays the reference


def test_folding_a_folded_network_changes_nothing():
    folded = fold_batchnorm(load_model(None, "ir_se_tiny").model)
    assert fold_batchnorm(folded) is folded
