"""Checkpoint round trips, fingerprints and refusal of damaged checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from pstyle.models.style_model import StyleModel
from pstyle.training.checkpoint import (
    CheckpointError,
    fingerprint,
    flatten_state,
    load_checkpoint,
    save_checkpoint,
    unflatten_state,
)


@pytest.fixture
def saved(tmp_path, small_config):
    model = StyleModel(small_config.model)
    with torch.no_grad():  # non-trivial AdaIN so outputs depend on the style
        for name, p in model.generator.named_parameters():
            if "affine" in name:
                p.normal_(0, 0.3)
    save_checkpoint(tmp_path / "ckpt", model, small_config, {"kind": "random"}, step=7)
    return model, tmp_path / "ckpt"


def test_round_trip_gives_identical_outputs(saved):
    model, path = saved
    loaded, meta = load_checkpoint(path)
    assert meta["step"] == 7 and meta["fingerprint"] == fingerprint(model)
    content, styles = torch.rand(2, 3, 32, 32), torch.rand(3, 3, 32, 32)
    model.eval(), loaded.eval()
    assert torch.equal(model.stylize(content, styles, seed=3), loaded.stylize(content, styles, seed=3))


def test_fingerprint_changes_when_weights_change(saved):
    model, _ = saved
    before = fingerprint(model)
    with torch.no_grad():
        model.generator.to_rgb.bias[0] += 1e-3
    assert fingerprint(model) != before


def test_fingerprint_ignores_discriminator_but_not_config(saved, small_config):
    model, _ = saved
    before = fingerprint(model)
    with torch.no_grad():
        model.discriminator.out.parametrizations.weight.original.add_(1.0)
    assert fingerprint(model) == before  # adapters depend on encoder + generator only
    small_config.model.mask_feather = 9
    other = StyleModel(small_config.model)
    other.load_state_dict(model.state_dict())
    assert fingerprint(other) != before


def test_tampered_weights_are_refused(saved):
    _, path = saved
    tensors = load_file(path / "model.safetensors")
    tensors["generator.to_rgb.bias"] = tensors["generator.to_rgb.bias"] + 1
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(CheckpointError, match="fingerprint"):
        load_checkpoint(path)


def test_truncated_or_missing_files_are_refused(saved, tmp_path):
    _, path = saved
    raw = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="cannot load"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a pstyle checkpoint"):
        load_checkpoint(tmp_path / "nowhere")


def test_metadata_is_json_and_records_features(saved):
    _, path = saved
    meta = json.loads((path / "meta.json").read_text())
    assert meta["features"] == {"kind": "random"}
    assert meta["config"]["model"]["channels"] == 8
    assert not list(path.glob("*.tmp"))  # atomic writes leave no temporaries


def test_optimizer_state_round_trips_without_pickle():
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    opt = torch.optim.Adam(params, lr=1e-3, betas=(0.0, 0.99))
    sum(p.square().sum() for p in params).backward()
    opt.step()
    tensors, skeleton = flatten_state(opt.state_dict())
    restored = unflatten_state(tensors, json.loads(json.dumps(skeleton)))
    fresh = torch.optim.Adam(params, lr=1.0)
    fresh.load_state_dict(restored)
    assert fresh.param_groups[0]["betas"] == (0.0, 0.99) and fresh.param_groups[0]["lr"] == 1e-3
    assert torch.equal(fresh.state[params[0]]["exp_avg"], opt.state[params[0]]["exp_avg"])
