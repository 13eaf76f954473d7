"""AdapterBank: mixed-adapter batches equal per-sample runs; LRU residency, host spill and disk reload."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from fixtures.tiny import tiny_model
from torch import Tensor

from pstyle.adapters import (
    AdapterBank,
    AdapterConfig,
    AdapterError,
    adapter_parameters,
    adapter_state_dict,
    choose_path,
    inject_adapter,
    merge_adapter,
    read_adapter,
    save_adapter,
    set_active_adapter,
    style_code,
)
from pstyle.adapters.bank import DEFAULT_GROUPED_MAX_FRACTION
from pstyle.models import Generator
from pstyle.models.encoder import CODE_DIM

FP = "0" * 64
# Users differ in rank, scale and targets: the bank pads ranks, folds scales and zero-fills layers.
USERS = {
    "ann": AdapterConfig(),
    "bob": AdapterConfig(alpha=16.0),
    "cat": AdapterConfig(rank=4, alpha=2.0),
    "dan": AdapterConfig(target_modules=("up1.conv", "up2.conv*.conv")),
    "eve": AdapterConfig(rank=2, alpha=4.0, target_modules=("up2.*.film.affine",)),
}
ASSIGNMENT = ["ann", None, "bob", "cat", "ann", "dan", None, "eve"]


@pytest.fixture(scope="module")
def base() -> Generator:
    torch.manual_seed(0)
    return Generator(tiny_model()).eval()


@pytest.fixture(scope="module")
def reference(base: Generator) -> Generator:
    """The base with every user's random, non-zero adapter injected by name: the per-sample truth."""
    gen = copy.deepcopy(base)
    for seed, (user, cfg) in enumerate(USERS.items()):
        inject_adapter(gen, user, cfg)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in adapter_parameters(gen, user):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return gen


def make_bank(base: Generator, reference: Generator, slots: int = 8) -> AdapterBank:
    bank = AdapterBank(copy.deepcopy(base), capacity_bytes=slots * slot_nbytes(reference), device="cpu")
    for user, cfg in USERS.items():
        bank.add(user, adapter_state_dict(reference, user), cfg)
    return bank


def slot_nbytes(reference: Generator) -> int:
    """Bytes of one rank-8 adapter on the default targets (what one bank slot holds)."""
    return sum(v.numel() for v in adapter_state_dict(reference, "ann").values()) * 4


def batch(ids: list[str | None], reference: Generator) -> tuple[Tensor, Tensor, Tensor]:
    n = len(ids)
    content = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    random = torch.randn(n, CODE_DIM, generator=torch.Generator().manual_seed(2))
    own = [r if u is None else style_code(reference, u).detach() for u, r in zip(ids, random, strict=True)]
    return content, torch.stack(own), reference.make_noise(content, seed=3)


@torch.no_grad()
def per_sample(
    reference: Generator, ids: list[str | None], *args: Tensor, strength: Tensor, mask: Tensor
) -> Tensor:
    """Each sample alone through the reference generator with its own adapter active."""
    outs = []
    for i, user in enumerate(ids):
        set_active_adapter(reference, user)
        sample = [a[i : i + 1] for a in args]
        outs.append(reference(*sample, strength=strength[i : i + 1], mask=mask[i : i + 1]))
    set_active_adapter(reference, None)
    return torch.cat(outs)


@pytest.mark.parametrize("path", ["forward", "forward_grouped", "forward_auto"])
def test_mixed_batch_equals_per_sample(base: Generator, reference: Generator, path: str) -> None:
    bank = make_bank(base, reference)
    args = batch(ASSIGNMENT, reference)
    strength = torch.linspace(0.5, 1.0, len(ASSIGNMENT))
    mask = torch.zeros(len(ASSIGNMENT), 1, 32, 32)
    for i in range(len(ASSIGNMENT)):
        mask[i, :, :, : 16 + i] = 1  # a different region per sample
    expected = per_sample(reference, ASSIGNMENT, *args, strength=strength, mask=mask)
    base_weights = {k: v.clone() for k, v in bank.generator.state_dict().items()}
    out = getattr(bank, path)(*args, ASSIGNMENT, strength=strength, mask=mask)
    assert (out - expected).abs().max() <= 1e-4
    with torch.no_grad():
        plain = base(*args, strength=strength, mask=mask)
    for i, user in enumerate(ASSIGNMENT):  # adapters really act, and None really is the base
        diff = (out[i] - plain[i]).abs().max()
        assert diff < 1e-5 if user is None else diff > 1e-3
    assert all(torch.equal(v, base_weights[k]) for k, v in bank.generator.state_dict().items())
    assert all(layer.route is None for layer in bank.layers.values())


def test_style_codes_and_slot_size(base: Generator, reference: Generator) -> None:
    bank = make_bank(base, reference)
    assert bank.slot_nbytes == slot_nbytes(reference) and bank.n_slots == 8
    assert torch.equal(bank.style_code("cat"), style_code(reference, "cat").detach())
    with pytest.raises(KeyError):
        bank.style_code("zoe")


def outputs_for(bank: AdapterBank, reference: Generator, user: str) -> Tensor:
    ids = [user, None]
    return bank.forward(*batch(ids, reference), ids)


def test_capacity_in_bytes_evicts_least_recently_used(base: Generator, reference: Generator) -> None:
    bank = AdapterBank(
        copy.deepcopy(base), capacity_bytes=2 * slot_nbytes(reference) + 100, device="cpu",
        host_capacity_bytes=slot_nbytes(reference),
    )  # fmt: skip
    assert (bank.n_slots, bank.n_host) == (2, 1)
    for user in ("ann", "bob"):
        bank.add(user, adapter_state_dict(reference, user), USERS[user])
    outputs_for(bank, reference, "ann")  # ann is now more recent than bob
    bank.add("cat", adapter_state_dict(reference, "cat"), USERS["cat"])
    assert bank.resident == ["ann", "cat"] and "bob" not in bank and bank.spilled == ["bob"]
    bank.add("dan", adapter_state_dict(reference, "dan"), USERS["dan"])
    assert bank.resident == ["cat", "dan"] and bank.spilled == ["ann"]  # host holds one: bob dropped
    with pytest.raises(KeyError, match="'bob' is not in the bank"):
        outputs_for(bank, reference, "bob")
    assert not bank.restore("bob")
    with pytest.raises(ValueError, match="uses 3 adapters; the bank holds 2"):
        bank.forward(*batch(["ann", "cat", "dan"], reference), ["ann", "cat", "dan"])


def test_evicted_adapter_comes_back_identical_from_host_and_disk(
    base: Generator, reference: Generator, tmp_path: Path
) -> None:
    bank = make_bank(base, reference, slots=2)  # adding five users left only dan and eve resident
    assert bank.resident == ["dan", "eve"] and "cat" in bank.spilled
    bank.restore("cat")
    before = outputs_for(bank, reference, "cat")
    bank.evict("cat")
    assert "cat" not in bank and "cat" in bank.spilled
    assert torch.equal(outputs_for(bank, reference, "cat"), before)  # forward restores from host itself
    assert "cat" in bank and "cat" not in bank.spilled

    save_adapter(tmp_path, reference, "cat", {"user_id": "cat", "version": 1, "base_fingerprint": FP})
    disk_bank = AdapterBank(copy.deepcopy(base), 2 * slot_nbytes(reference), "cpu", host_capacity_bytes=0)
    adapter = read_adapter(tmp_path, FP)
    disk_bank.add("cat", adapter.state, adapter.config)
    disk_bank.evict("cat")
    assert not disk_bank.spilled and not disk_bank.restore("cat")  # no host tier: must come from disk
    adapter = read_adapter(tmp_path, FP)
    disk_bank.add("cat", adapter.state, adapter.config)
    assert torch.equal(outputs_for(disk_bank, reference, "cat"), before)


def test_add_refuses_states_that_do_not_fit(base: Generator, reference: Generator) -> None:
    bank = make_bank(base, reference)
    state = dict(adapter_state_dict(reference, "ann"))
    with pytest.raises(AdapterError, match="does not serve"):
        bank.add("x", {**state, "bottom.conv.lora_down": torch.zeros(8, 112, 3, 3)})
    with pytest.raises(AdapterError, match="up1.conv: adapter weights do not fit"):
        bank.add("x", {**state, "up1.conv.lora_down": torch.zeros(16, 9, 3, 3)})  # rank 16 > 8
    with pytest.raises(AdapterError, match="style_code"):
        bank.add("x", {k: v for k, v in state.items() if k != "style_code"})
    assert "x" not in bank


def test_forward_refuses_merged_weights(base: Generator, reference: Generator) -> None:
    bank = make_bank(base, reference)
    inject_adapter(bank.generator, "local", AdapterConfig())
    merge_adapter(bank.generator, "local")
    with pytest.raises(AdapterError, match="merged"):
        bank.forward(*batch(["ann"], reference), ["ann"])


def test_choose_path_rule() -> None:
    assert choose_path("cpu", 64, 64) == "grouped"  # measured: grouped wins at every k on CPU
    assert choose_path("cuda", 16, 1) == "grouped" and choose_path("cuda", 16, 2) == "mixed"
    assert choose_path(torch.device("cpu"), 16, 8, {"cpu": 0.5}) == "grouped"
    assert (
        choose_path("cpu", 16, 9, {"cpu": 0.5}) == "mixed"
        and choose_path("cpu", 4, 2, {"cpu": 0.25}) == "mixed"
    )
    assert choose_path("mps", 16, 2) == "mixed"


def test_forward_auto_follows_the_rule(base: Generator, reference: Generator) -> None:
    bank = AdapterBank(
        copy.deepcopy(base), 8 * slot_nbytes(reference), "cpu", grouped_max_fraction={"cpu": 1.0}
    )
    bank.add("ann", adapter_state_dict(reference, "ann"))
    calls = []
    bank.forward_grouped = lambda *a, **k: calls.append("grouped")  # type: ignore[method-assign]
    bank.forward = lambda *a, **k: calls.append("mixed")  # type: ignore[method-assign]
    bank.forward_auto(*batch(ASSIGNMENT, reference), ASSIGNMENT)
    bank.set_path_rule({"cpu": 0.0})  # a measured override, as ServeConfig.grouped_max_fraction sets it
    bank.forward_auto(*batch(ASSIGNMENT, reference), ASSIGNMENT)
    assert calls == ["grouped", "mixed"]
    assert bank.grouped_max_fraction["cuda"] == DEFAULT_GROUPED_MAX_FRACTION["cuda"]  # others untouched
