"""Per-user adapters: LoRA/LoCon layers, injection into the generator, and adapter files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fixtures.tiny import random_codes, tiny_model
from torch import Tensor, nn

from pstyle.adapters import (
    AdapterConfig,
    AdapterError,
    LoRAConv2d,
    LoRALinear,
    adapter_nbytes,
    adapter_parameters,
    adapter_state_dict,
    enable_adapters,
    inject_adapter,
    load_adapter,
    load_adapter_state,
    lora_layers,
    merge_adapter,
    remove_adapter,
    save_adapter,
    set_active_adapter,
    strip_adapters,
    style_code,
    unmerge_adapter,
)
from pstyle.adapters.io import META_FILE, TENSORS_FILE
from pstyle.config import ModelConfig
from pstyle.models import Generator

FP = "f" * 64  # a base-model fingerprint; io only compares it


def tiny_generator() -> Generator:
    torch.manual_seed(0)
    return Generator(tiny_model())


def inputs(gen: Generator, batch: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    content = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    code = random_codes(batch, torch.Generator().manual_seed(2))
    return content, code, gen.make_noise(content, seed=3)


def randomize(gen: Generator, name: str, seed: int, std: float = 0.2) -> None:
    """Give adapter `name` non-zero up weights (fresh ones are zero) and a random style code."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter_parameters(gen, name):
            p.copy_(torch.randn(p.shape, generator=g) * std)


def base_tensors(gen: Generator) -> dict[str, Tensor]:
    return {
        k: v.clone() for k, v in gen.state_dict().items() if ".lora_" not in k and "adapter_registry" not in k
    }


# --- config ----------------------------------------------------------------------------------------
def test_config_json_round_trip_and_validation() -> None:
    cfg = AdapterConfig(rank=4, alpha=2, target_modules=("up1.conv", "to_rgb"), dropout=0.1)
    back = AdapterConfig.from_dict(json.loads(cfg.to_json()))
    assert back == cfg and isinstance(back.target_modules, tuple) and isinstance(back.alpha, float)
    assert back.scale == 0.5
    with pytest.raises(ValueError, match="rank"):
        AdapterConfig(rank=0)
    with pytest.raises(KeyError, match="unknown"):
        AdapterConfig.from_dict({"rank": 4, "rnak": 4})


# --- layers ----------------------------------------------------------------------------------------
LAYERS = {
    "linear": (lambda: nn.Linear(12, 10), (5, 12)),
    "linear_3d": (lambda: nn.Linear(12, 10), (5, 7, 12)),
    "conv3x3": (lambda: nn.Conv2d(6, 5, 3, 1, 1), (2, 6, 9, 9)),
    "conv4x4_stride2": (lambda: nn.Conv2d(6, 5, 4, 2, 1), (2, 6, 10, 10)),
    "conv7x7": (lambda: nn.Conv2d(6, 3, 7, 1, 3), (2, 6, 12, 12)),
    "conv_dilated": (lambda: nn.Conv2d(6, 5, 3, 1, 2, dilation=2), (2, 6, 11, 11)),
    "conv1x1_nobias": (lambda: nn.Conv2d(6, 5, 1, bias=False), (2, 6, 8, 8)),
}


def wrapped(kind: str) -> tuple[LoRALinear | LoRAConv2d, Tensor]:
    make, shape = LAYERS[kind]
    base = make()
    layer = LoRALinear(base) if isinstance(base, nn.Linear) else LoRAConv2d(base)
    layer.add_adapter("a", rank=3, alpha=6.0)
    with torch.no_grad():
        layer.lora_up["a"].weight.normal_()
    layer.active_adapter = "a"
    return layer, torch.randn(shape)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_merge_matches_unmerged_forward_and_unmerge_restores(kind: str) -> None:
    layer, x = wrapped(kind)
    original = layer.base_layer.weight.detach().clone()
    unmerged = layer(x)
    assert (unmerged - layer.base_layer(x)).abs().max() > 1e-3  # the adapter really acts
    layer.merge("a")
    layer.merge("a")  # idempotent
    assert torch.allclose(layer(x), unmerged, atol=1e-5)
    assert not torch.equal(layer.base_layer.weight, original)
    layer.unmerge()
    assert (layer.base_layer.weight - original).abs().max() <= 1e-6
    assert torch.allclose(layer(x), unmerged, atol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "conv3x3"])
def test_safe_merge_refuses_non_finite_and_leaves_weights(kind: str) -> None:
    layer, _ = wrapped(kind)
    with torch.no_grad():
        layer.lora_up["a"].weight[0, 0] = float("nan")
    original = layer.base_layer.weight.detach().clone()
    with pytest.raises(ValueError, match="non-finite"):
        layer.merge("a")
    assert torch.equal(layer.base_layer.weight, original) and layer.merged_adapter is None
    layer.merge("a", safe=False)  # unsafe merge writes what it is given
    assert torch.isnan(layer.base_layer.weight).any()


def test_one_merged_adapter_at_a_time() -> None:
    layer, _ = wrapped("linear")
    layer.add_adapter("b", rank=2, alpha=2.0)
    layer.merge("a")
    with pytest.raises(ValueError, match="unmerge"):
        layer.merge("b")


def test_dropout_only_in_training() -> None:
    layer, x = wrapped("linear")
    layer.add_adapter("d", rank=3, alpha=6.0, dropout=0.5)
    with torch.no_grad():
        layer.lora_up["d"].weight.copy_(layer.lora_up["a"].weight)
        layer.lora_down["d"].weight.copy_(layer.lora_down["a"].weight)
    reference = layer(x)
    layer.active_adapter = "d"
    layer.eval()
    assert torch.equal(layer(x), reference)
    layer.train()
    assert not torch.allclose(layer(x), reference)


# --- injection -------------------------------------------------------------------------------------
def test_fresh_adapter_reproduces_base_exactly() -> None:
    gen = tiny_generator()
    args = inputs(gen)
    base = gen(*args)
    names = inject_adapter(gen, "alice", AdapterConfig())
    assert "up1.conv" in names and "up8.conv1.film.affine" in names and "inject_noise" in names
    set_active_adapter(gen, "alice")
    assert torch.equal(gen(*args), base)


def test_generator_merge_matches_unmerged_and_unmerge_restores() -> None:
    gen = tiny_generator()
    inject_adapter(
        gen,
        "alice",
        AdapterConfig(target_modules=("blocks.*.conv", "up*.conv", "*.affine", "to_rgb", "mapping.*")),
    )
    randomize(gen, "alice", seed=0)
    set_active_adapter(gen, "alice")
    args = inputs(gen)
    original, unmerged = base_tensors(gen), gen(*args)
    merge_adapter(gen, "alice")
    assert (gen(*args) - unmerged).abs().max() <= 1e-5
    unmerge_adapter(gen)
    assert all((v - original[k]).abs().max() <= 1e-6 for k, v in base_tensors(gen).items())


def test_generator_safe_merge_is_all_or_nothing() -> None:
    gen = tiny_generator()
    inject_adapter(gen, "alice", AdapterConfig())
    randomize(gen, "alice", seed=0)
    with torch.no_grad():
        lora_layers(gen)["up2.conv2.conv"].lora_up["alice"].weight[0, 0] = float("inf")  # a late layer
    original = base_tensors(gen)
    with pytest.raises(ValueError, match="non-finite"):
        merge_adapter(gen, "alice")
    assert all(torch.equal(v, original[k]) for k, v in base_tensors(gen).items())
    assert all(layer.merged_adapter is None for layer in lora_layers(gen).values())


def test_training_changes_only_adapter_parameters() -> None:
    gen = tiny_generator()
    inject_adapter(gen, "alice", AdapterConfig(dropout=0.1))
    set_active_adapter(gen, "alice")
    original = base_tensors(gen)
    params = adapter_parameters(gen, "alice")
    before = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=1e-2)  # scale-free steps: deep layers' tiny gradients still move
    content, _, noise = inputs(gen)
    target = torch.rand_like(content)
    for _ in range(3):
        code = style_code(gen, "alice").expand(content.shape[0], -1)
        loss = (gen(content, code, noise) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(v, original[k]) for k, v in base_tensors(gen).items())
    assert all(not torch.equal(p, b) for p, b in zip(params, before, strict=True))  # incl. style code
    assert all(not p.requires_grad for k, p in gen.named_parameters() if ".base_layer." in k)


def test_several_named_adapters_switching_enable_remove_strip() -> None:
    gen = tiny_generator()
    plain_state = {k: v.clone() for k, v in gen.state_dict().items()}
    args = inputs(gen)
    base = gen(*args)
    inject_adapter(gen, "a", AdapterConfig())
    inject_adapter(gen, "b", AdapterConfig(rank=4, target_modules=("up1.conv", "bottom.conv")))
    randomize(gen, "a", seed=1)
    randomize(gen, "b", seed=2)
    assert isinstance(gen.bottom.conv, LoRAConv2d) and gen.bottom.conv.adapter_names == ["b"]
    assert gen.up1.conv.adapter_names == ["a", "b"]
    outputs = {}
    for name in ("a", "b"):
        set_active_adapter(gen, name)
        outputs[name] = gen(*args)
        assert (outputs[name] - base).abs().max() > 1e-3
    assert (outputs["a"] - outputs["b"]).abs().max() > 1e-3
    enable_adapters(gen, False)
    assert torch.equal(gen(*args), base)
    enable_adapters(gen, True)
    assert torch.equal(gen(*args), outputs["b"])
    set_active_adapter(gen, None)
    assert torch.equal(gen(*args), base)

    remove_adapter(gen, "b")
    with pytest.raises(AdapterError, match="no adapter named 'b'"):
        set_active_adapter(gen, "b")
    assert gen.bottom.conv.adapter_names == [] and gen.up1.conv.adapter_names == ["a"]
    assert not [k for k in gen.state_dict() if ".b." in k or k.endswith(".b")]
    set_active_adapter(gen, "a")
    assert torch.equal(gen(*args), outputs["a"])

    strip_adapters(gen)
    assert not lora_layers(gen) and type(gen.up1.conv) is nn.Conv2d and type(gen.up1.film.affine) is nn.Linear
    assert gen.state_dict().keys() == plain_state.keys()
    assert all(torch.equal(v, plain_state[k]) for k, v in gen.state_dict().items())
    assert torch.equal(gen(*args), base)


def test_state_dict_is_name_independent() -> None:
    gen = tiny_generator()
    inject_adapter(gen, "alice", AdapterConfig())
    randomize(gen, "alice", seed=4)
    state = adapter_state_dict(gen, "alice")
    assert "style_code" in state and all("alice" not in k for k in state)
    inject_adapter(gen, "copied", AdapterConfig())
    load_adapter_state(gen, "copied", state)
    args = inputs(gen)
    set_active_adapter(gen, "alice")
    expected = gen(*args)
    set_active_adapter(gen, "copied")
    assert torch.equal(gen(*args), expected)
    assert torch.equal(style_code(gen, "copied"), style_code(gen, "alice"))


def test_injection_refuses_bad_patterns_and_names() -> None:
    gen = tiny_generator()
    with pytest.raises(AdapterError, match="'upp1' matches no"):
        inject_adapter(gen, "a", AdapterConfig(target_modules=("up1.conv", "upp1")))
    assert not lora_layers(gen)  # checked before anything was wrapped
    inject_adapter(gen, "a", AdapterConfig())
    with pytest.raises(AdapterError, match="already exists"):
        inject_adapter(gen, "a", AdapterConfig())
    for bad in ("user.1", "keys", ""):
        with pytest.raises(AdapterError, match="cannot be a module key"):
            inject_adapter(gen, bad, AdapterConfig())


def test_load_state_refuses_missing_and_misshaped() -> None:
    gen = tiny_generator()
    inject_adapter(gen, "a", AdapterConfig())
    state = dict(adapter_state_dict(gen, "a"))
    missing = {k: v for k, v in state.items() if k != "up1.conv.lora_up"}
    with pytest.raises(AdapterError, match=r"missing \['up1.conv.lora_up'\]"):
        load_adapter_state(gen, "a", missing)
    misshaped = {**state, "style_code": torch.zeros(17)}
    with pytest.raises(AdapterError, match="mis-shaped.*style_code"):
        load_adapter_state(gen, "a", misshaped)


# --- files -----------------------------------------------------------------------------------------
def saved(tmp_path: Path) -> tuple[Generator, Path]:
    gen = tiny_generator()
    inject_adapter(gen, "alice", AdapterConfig(rank=4, alpha=2.0))
    randomize(gen, "alice", seed=5)
    meta = {
        "user_id": "alice",
        "version": 3,
        "base_fingerprint": FP,
        "training": {"steps": 10},
        "metrics": {"swd": 1},
    }
    save_adapter(tmp_path / "alice", gen, "alice", meta)
    return gen, tmp_path / "alice"


def test_save_load_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    gen, path = saved(tmp_path)
    set_active_adapter(gen, "alice")
    args = inputs(gen)
    expected = gen(*args)
    fresh = tiny_generator()
    meta = load_adapter(path, fresh, "bob", FP)
    assert meta["user_id"] == "alice" and meta["version"] == 3 and meta["training"] == {"steps": 10}
    assert meta["adapter"]["rank"] == 4 and meta["metrics"] == {"swd": 1} and meta["created"] > 0
    set_active_adapter(fresh, "bob")
    assert torch.equal(fresh(*args), expected)
    assert not list(path.glob(".*tmp"))  # no temporaries left behind


def test_load_refuses_other_base_model(tmp_path: Path) -> None:
    _, path = saved(tmp_path)
    fresh = tiny_generator()
    with pytest.raises(AdapterError, match=r"on base model ffffffffffff.*not on this base model 000000"):
        load_adapter(path, fresh, "alice", "0" * 64)
    assert not lora_layers(fresh)


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "bad_json", "no_tensors"])
def test_load_refuses_corrupt_files(tmp_path: Path, damage: str) -> None:
    _, path = saved(tmp_path)
    tensors, meta = path / TENSORS_FILE, path / META_FILE
    if damage == "flip_byte":
        data = bytearray(tensors.read_bytes())
        data[-5] ^= 0xFF
        tensors.write_bytes(bytes(data))
    elif damage == "truncate":
        tensors.write_bytes(tensors.read_bytes()[:100])
    elif damage == "bad_json":
        meta.write_text(meta.read_text()[:-20])
    else:
        tensors.unlink()
    with pytest.raises(AdapterError, match="sha256|unreadable|not an adapter"):
        load_adapter(path, tiny_generator(), "alice", FP)


def test_load_refuses_tensors_that_do_not_fit(tmp_path: Path) -> None:
    """A consistent file whose config claims another rank than its tensors: refused, generator unchanged."""
    _, path = saved(tmp_path)
    meta = json.loads((path / META_FILE).read_text())
    meta["adapter"]["rank"] = 8
    (path / META_FILE).write_text(json.dumps(meta))
    fresh = tiny_generator()
    with pytest.raises(AdapterError, match="mis-shaped"):
        load_adapter(path, fresh, "alice", FP)
    assert all(not layer.adapter_names for layer in lora_layers(fresh).values())


def test_rank8_adapter_on_default_model_fits_200kb(tmp_path: Path) -> None:
    gen = Generator(ModelConfig())
    inject_adapter(gen, "alice", AdapterConfig(rank=8))
    save_adapter(tmp_path, gen, "alice", {"user_id": "alice", "version": 1, "base_fingerprint": FP})
    size = adapter_nbytes(tmp_path)
    print(f"rank-8 adapter on the default ModelConfig: {size} bytes on disk")
    assert 100_000 < size <= 200_000
