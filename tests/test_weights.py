"""Checkpoints load strictly from a path or s3://, and bad ones fail with a useful message."""

import hashlib

import pytest
import torch

from bench.precision import randomise_batchnorm
from faceq.errors import ModelError
from faceq.models.rts import embed_and_score
from faceq.models.weights import load_model


@pytest.fixture(scope="module")
def tiny_state():
    # non-trivial BatchNorm, so a wrong mapping would show
    return randomise_batchnorm(load_model(None, "ir_se_tiny", seed=11).model).state_dict()


def _outputs(model, seed=0):
    x = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    with torch.inference_mode():
        return embed_and_score(model, x)


def test_a_saved_state_dict_loads_strictly_with_a_content_hash(tmp_path, tiny_state):
    path = tmp_path / "pytorch_model.pt"
    torch.save(tiny_state, path)
    loaded = load_model(str(path), "ir_se_tiny")
    assert not loaded.random_weights
    assert loaded.model_id == f"rts-ir_se_tiny-sha256:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
    reference = load_model(None, "ir_se_tiny", seed=11).model
    reference.load_state_dict(tiny_state)
    for got, want in zip(_outputs(loaded.model), _outputs(reference.eval())):
        assert torch.equal(got, want)


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module-prefix"])
def test_wrapped_and_dataparallel_checkpoints_load(tmp_path, tiny_state, wrap):
    if wrap == "module-prefix":
        checkpoint = {f"module.{k}": v for k, v in tiny_state.items()}
    else:
        checkpoint = {wrap: tiny_state, "epoch": 3}
    path = tmp_path / "wrapped.pt"
    torch.save(checkpoint, path)
    loaded = load_model(str(path), "ir_se_tiny")
    assert torch.equal(loaded.model.state_dict()["features.0.0.weight"], tiny_state["features.0.0.weight"])


def test_rts_plus_width_is_taken_from_the_checkpoint(tmp_path, tiny_state):
    state = dict(tiny_state)
    state["logvar_rts_plus_backbone.0.weight"] = torch.zeros(8, state["logvar_rts_plus_backbone.0.weight"].shape[1])
    for name in ("0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
        state[f"logvar_rts_plus_backbone.{name}"] = torch.zeros(8)
    path = tmp_path / "plus8.pt"
    torch.save(state, path)
    assert load_model(str(path), "ir_se_tiny").model.arch.rts_plus_dim == 8


def test_missing_and_unexpected_keys_are_named(tmp_path, tiny_state):
    state = dict(tiny_state)
    del state["logvar_rts_backbone.0.weight"]
    state["head.extra.weight"] = torch.zeros(2)
    path = tmp_path / "bad-keys.pt"
    torch.save(state, path)
    with pytest.raises(ModelError, match=r"missing keys \(first: logvar_rts_backbone.0.weight\).*head.extra.weight"):
        load_model(str(path), "ir_se_tiny")


def test_a_checkpoint_of_another_architecture_names_the_shape_that_differs(tmp_path, tiny_state):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_state, path)
    with pytest.raises(ModelError, match=r"features.0.0.weight: checkpoint \(64, 3, 3, 3\)|shape mismatches"):
        load_model(str(path), "ir_se_64")


def test_truncated_and_missing_files_are_refused(tmp_path, tiny_state):
    path = tmp_path / "truncated.pt"
    torch.save(tiny_state, path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelError, match="not a readable torch checkpoint"):
        load_model(str(path), "ir_se_tiny")
    with pytest.raises(ModelError, match="no such file"):
        load_model(str(tmp_path / "absent.pt"), "ir_se_tiny")


def test_weights_load_from_s3(tmp_path, tiny_state, s3_client, s3_endpoint, bucket):
    path = tmp_path / "pytorch_model.pt"
    torch.save(tiny_state, path)
    s3_client.upload_file(str(path), bucket, "models/rts/pytorch_model.pt")
    loaded = load_model(f"s3://{bucket}/models/rts/pytorch_model.pt", "ir_se_tiny", s3_endpoint_url=s3_endpoint)
    assert loaded.model_id.endswith(hashlib.sha256(path.read_bytes()).hexdigest()[:16])


def test_unknown_architecture_is_refused():
    with pytest.raises(ModelError, match="unknown architecture"):
        load_model(None, "resnet9000")
