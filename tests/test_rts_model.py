"""The network reproduces ModelScope's RTSBackbone layout and the reference pipeline's outputs."""

import pytest
import torch

from faceq.models.rts import ARCHITECTURES, RTSNet, embed_and_score
from faceq.models.weights import load_model


@pytest.fixture(scope="module")
def ir_se_64() -> RTSNet:
    return load_model(None, "ir_se_64", seed=0).model


def test_state_dict_has_the_modelscope_names_and_shapes(ir_se_64):
    state = ir_se_64.state_dict()
    expected = {
        "features.0.0.weight": (64, 3, 3, 3),
        "features.0.1.running_var": (64,),
        "features.0.2.weight": (64,),
        "features.1.0.res_layer.0.weight": (64,),
        "features.1.0.res_layer.1.weight": (64, 64, 3, 3),
        "features.1.0.res_layer.2.weight": (64,),
        "features.1.0.res_layer.3.weight": (64, 64, 3, 3),
        "features.1.0.res_layer.4.running_mean": (64,),
        "features.1.0.res_layer.5.fc1.weight": (4, 64, 1, 1),
        "features.1.0.res_layer.5.fc2.weight": (64, 4, 1, 1),
        "features.1.3.shortcut_layer.0.weight": (128, 64, 1, 1),
        "features.1.3.shortcut_layer.1.weight": (128,),
        "features.1.11.shortcut_layer.0.weight": (256, 128, 1, 1),
        "features.1.27.shortcut_layer.0.weight": (512, 256, 1, 1),
        "features.1.29.res_layer.5.fc2.weight": (512, 32, 1, 1),
        "features.2.0.weight": (512,),
        "features_backbone.0.weight": (512, 25088),
        "features_backbone.0.bias": (512,),
        "features_backbone.1.running_var": (512,),
        "logvar_rts_backbone.0.weight": (1, 25088),
        "logvar_rts_backbone.1.weight": (1,),
        "logvar_rts_plus_backbone.0.weight": (16, 25088),
    }
    # The first unit keeps 64 channels: its shortcut is a parameter-free MaxPool2d(1, 2).
    assert "features.1.0.shortcut_layer.0.weight" not in state
    for name, shape in expected.items():
        assert tuple(state[name].shape) == shape, name
    # 3 + 8 + 16 + 3 = 30 IR-SE units, no more.
    units = {int(k.split(".")[2]) for k in state if k.startswith("features.1.")}
    assert units == set(range(30))
    assert len(state) == 501
    assert sum(t.numel() for t in state.values()) * 4 / 1e6 == pytest.approx(191.3, abs=0.1)  # the ≈191 MB file


def test_outputs_are_the_reference_pipelines_unit_embedding_and_exp_logvar():
    model = load_model(None, "ir_se_tiny", seed=3).model
    x = torch.rand(4, 3, 112, 112) * 2 - 1
    with torch.inference_mode():
        raw, logvar = model(x)
        embedding, score = embed_and_score(model, x)
    assert raw.shape == (4, 512) and logvar.shape == (4, 1)
    assert torch.allclose(embedding, raw / raw.norm(dim=1, keepdim=True))
    assert torch.allclose(embedding.norm(dim=1), torch.ones(4), atol=1e-6)
    assert torch.allclose(score, logvar.exp().squeeze(1))


def test_seeded_random_weights_are_reproducible_and_named():
    a, b, c = (load_model(None, "ir_se_tiny", seed=s) for s in (5, 5, 6))
    assert a.random_weights and a.model_id == "rts-ir_se_tiny-random-seed5"
    sa, sb, sc = (m.model.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["features.0.0.weight"], sc["features.0.0.weight"])


def test_architectures_share_one_layout():
    tiny = RTSNet(ARCHITECTURES["ir_se_tiny"]).state_dict()
    assert {k.split(".")[0] for k in tiny} == {"features", "features_backbone", "logvar_rts_backbone",
                                              "logvar_rts_plus_backbone"}
