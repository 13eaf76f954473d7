"""Adapter serving benchmark: base vs one merged adapter vs mixed-adapter batches (bank paths), adapter
load time from disk, and host bytes per cached adapter (the 10,000-adapter memory budget).

Rows per image size: `base` (no adapter), `merged` (one adapter folded in with `merge_adapter`, plain
forward), then for every k distinct adapters in the batch `mixed` (`AdapterBank.forward`), `grouped`
(`forward_grouped`) and `auto` (`forward_auto`; `chosen` names the path `choose_path` took). Adapters
are random and non-zero, so no path can skip work. On CUDA: bf16 autocast and channels_last, as served.
"""

from __future__ import annotations

import copy
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor

from pstyle.adapters import (
    AdapterBank,
    AdapterConfig,
    adapter_nbytes,
    adapter_state_dict,
    choose_path,
    inject_adapter,
    load_adapter_state,
    merge_adapter,
    read_adapter,
    save_adapter,
)
from pstyle.bench.common import machine_description, random_codes, time_call
from pstyle.config import ModelConfig
from pstyle.models.encoder import CODE_DIM
from pstyle.models.style_model import StyleModel
from pstyle.training.checkpoint import fingerprint

N_BUDGET = 10_000
# Per host-spilled adapter besides its tensor bytes: each tensor's Python object, c10 TensorImpl and
# StorageImpl plus malloc header/alignment (~512 B, an estimate); the entry's dict (measured with
# sys.getsizeof) and the LRU OrderedDict's node and key (~100 B + the user id string, estimated).
TENSOR_OVERHEAD_B, ENTRY_OVERHEAD_B = 512, 100


def random_state(shapes: dict[str, torch.Size], seed: int) -> dict[str, Tensor]:
    """A trained-looking adapter: down ~ N(0, 1/fan_in), up ~ N(0, 0.02²) (non-zero), and a style code
    like an encoder's (`random_codes`)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key == "style_code":
            state[key] = random_codes(1, g)[0]
            continue
        std = 0.02 if key.endswith("lora_up") else math.prod(shape[1:]) ** -0.5
        state[key] = torch.randn(shape, generator=g) * std
    return state


@torch.no_grad()
def bench_adapters(
    device: torch.device | str,
    sizes: tuple[int, ...] = (128, 256),
    batch: int = 64,
    ks: tuple[int, ...] = (1, 8, 64),
    rank: int = 8,
    min_time: float = 1.0,
    load_trials: int = 200,
    tmp_dir: Path | None = None,
    cfg: ModelConfig | None = None,
    warmup: int = 2,
) -> dict:
    """Throughput of every serving path (images/s, and as a fraction of `merged`), load p50/p99, bytes."""
    device, cfg, kmax = torch.device(device), cfg or ModelConfig(), max(ks)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = StyleModel(cfg).eval()
    fp = fingerprint(model)
    base = model.generator.to(device)
    if cuda:
        base = base.to(memory_format=torch.channels_last)
    acfg = AdapterConfig(rank=rank, alpha=float(rank))  # scale 1
    merged = copy.deepcopy(base)
    inject_adapter(merged, "user0", acfg)
    shapes = {k: v.shape for k, v in adapter_state_dict(merged, "user0").items()}
    slot_nbytes = sum(math.prod(s) for s in shapes.values()) * 4
    bank = AdapterBank(copy.deepcopy(base), capacity_bytes=kmax * slot_nbytes, device=device, config=acfg)
    states = [random_state(shapes, seed) for seed in range(kmax)]
    for i, state in enumerate(states):
        bank.add(f"user{i}", state)

    with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
        dirs = [Path(tmp) / f"a{i}" for i in range(max(load_trials, 2))]
        for i, d in enumerate(dirs):  # distinct adapters, written through the product's save path
            load_adapter_state(merged, "user0", random_state(shapes, 10_000 + i))
            save_adapter(d, merged, "user0", {"user_id": f"load{i}", "version": 1, "base_fingerprint": fp})
        load_adapter_state(merged, "user0", states[0])
        merge_adapter(merged, "user0")
        rows, check = _throughput(base, merged, bank, cfg, device, sizes, batch, ks, min_time, warmup)
        io = _adapter_io(bank, dirs, fp, device)

    by_size = {size: {(r["path"], r["k"]): r for r in rows if r["size"] == size} for size in sizes}
    thresholds = {str(size): _threshold(by_size[size], ks, batch, kmax, cuda) for size in sizes}
    fractions = [t["grouped_max_fraction"] for t in thresholds.values()]
    return {
        "benchmark": "adapters",
        "machine": machine_description(device),
        "dtype": "bf16" if cuda else "fp32",
        "rank": rank,
        "targets": list(acfg.target_modules),
        "rows": rows,
        "max_abs_diff": check,
        "measured_threshold": {
            "device_type": device.type,
            "current_grouped_max_fraction": bank.grouped_max_fraction.get(device.type, 0.0),
            "grouped_max_fraction": min(fractions),  # what grouped_max_fraction[device type] should be
            "per_size": thresholds,
        },
        "adapter_io": io,
    }


def _throughput(base, merged, bank, cfg, device, sizes, batch, ks, min_time, warmup) -> tuple[list, dict]:
    rows: list[dict] = []
    check: dict[str, float] = {}
    for size in sizes:
        content = torch.rand(batch, 3, size, size, device=device)
        if device.type == "cuda":
            content = content.contiguous(memory_format=torch.channels_last)
        code = torch.randn(batch, CODE_DIM, device=device)
        noise = base.make_noise(content, seed=0)
        if not check:  # the timed paths compute the same thing (fp32, a few samples)
            n, kmax = min(batch, 4), max(ks)
            ids, sub = [f"user{i % kmax}" for i in range(n)], (content[:n], code[:n], noise[:n])
            check["merged_vs_mixed_k1"] = _diff(merged(*sub), bank.forward(*sub, ["user0"] * n))
            check["grouped_vs_mixed_kmax"] = _diff(bank.forward_grouped(*sub, ids), bank.forward(*sub, ids))
        rows += _size_rows(base, merged, bank, (content, code, noise), ks, min_time, warmup)
    return rows, check


def _size_rows(base, merged, bank, inputs, ks, min_time, warmup) -> list[dict]:
    batch, _, size, _ = inputs[0].shape
    device = inputs[0].device
    rows = []

    def timed(path: str, k: int, fn, chosen: str | None = None) -> None:
        def run() -> None:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                fn(*inputs)

        seconds = time_call(run, device, warmup=warmup, min_time=min_time)
        row = {"size": size, "batch": batch, "k": k, "path": path, "ms_per_batch": seconds * 1e3}
        rows.append({**row, "images_per_s": batch / seconds, **({"chosen": chosen} if chosen else {})})

    timed("base", 0, base)
    timed("merged", 1, merged)
    for k in ks:
        ids = [f"user{i % k}" for i in range(batch)]
        chosen = choose_path(device, batch, len(set(ids)), bank.grouped_max_fraction)
        timed("mixed", k, lambda *x, ids=ids: bank.forward(*x, ids))
        timed("grouped", k, lambda *x, ids=ids: bank.forward_grouped(*x, ids))
        timed("auto", k, lambda *x, ids=ids: bank.forward_auto(*x, ids), chosen)
    for row in rows:
        row["ratio_to_merged"] = row["images_per_s"] / rows[1]["images_per_s"]
    return rows


def _diff(a: Tensor, b: Tensor) -> float:
    return (a - b).abs().max().item()


def _threshold(rows: dict, ks: tuple[int, ...], batch: int, kmax: int, cuda: bool) -> dict:
    """Largest k such that grouped beats mixed at every measured k up to it (0: never), and the targets."""
    wins = 0
    for k in sorted(ks):
        if rows["grouped", k]["images_per_s"] <= rows["mixed", k]["images_per_s"]:
            break
        wins = k
    auto = rows["auto", kmax]
    mixed_over_grouped = rows["mixed", kmax]["images_per_s"] / rows["grouped", kmax]["images_per_s"]
    return {
        "grouped_wins_up_to_k": wins,
        "grouped_max_fraction": wins / batch,
        "k_max": kmax,
        "chosen_at_k_max": auto["chosen"],
        "chosen_ratio_to_merged": auto["ratio_to_merged"],
        "meets_0.8x_merged": auto["ratio_to_merged"] >= 0.8,
        "mixed_over_grouped": mixed_over_grouped,
        "meets_3x_grouped_on_gpu": mixed_over_grouped >= 3.0 if cuda else None,  # a GPU-only target
    }


def _adapter_io(bank: AdapterBank, dirs: list[Path], fp: str, device: torch.device) -> dict:
    """read_adapter + bank.add per adapter (LRU evictions to host included), and host bytes per adapter."""
    times = []
    for i, d in enumerate(dirs):
        t0 = time.perf_counter()
        adapter = read_adapter(d, fp)
        bank.add(f"load{i}", adapter.state, adapter.config)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    q = statistics.quantiles([t * 1e3 for t in times], n=100, method="inclusive")
    user = bank.resident[-1]
    bank.evict(user)
    entry = bank.spilled_tensors(user)
    tensor_b = sum(t.numel() * t.element_size() for t in entry.values())
    overhead_b = (
        sys.getsizeof(entry) + len(entry) * TENSOR_OVERHEAD_B + ENTRY_OVERHEAD_B + sys.getsizeof(user)
    )
    per_adapter = tensor_b + overhead_b
    need = N_BUDGET * per_adapter
    budget_gib = math.ceil(need / 2**29) / 2  # rounded up to half a GiB
    return {
        "trials": len(times),
        "load_ms_p50": q[49],
        "load_ms_p99": q[98],
        "note": "read_adapter (json, sha256, safetensors) + bank.add; files were just written, so they come "
        "from the page cache, not the disk: a cold disk adds its latency",
        "file_bytes": adapter_nbytes(dirs[0]),
        "device_slot_bytes": bank.slot_nbytes,
        "host_tensor_bytes": tensor_b,
        "host_overhead_bytes_est": overhead_b,
        "host_bytes_per_adapter": per_adapter,
        "memory_budget_10k": {
            "adapters": N_BUDGET,
            "host_bytes": need,
            "budget_gib": budget_gib,
            "host_capacity_bytes_min": N_BUDGET * bank.slot_nbytes,
            "statement": f"{N_BUDGET:,} rank-{bank.config.rank} adapters need {need / 2**20:.0f} MiB of host "
            f"memory ({per_adapter / 1024:.1f} KiB each: {tensor_b} B of tensors + ~{overhead_b} B "
            f"bookkeeping, estimated); they fit a {budget_gib:g} GiB host budget. The bank's "
            f"host_capacity_bytes (default 4x the device capacity) must be >= {N_BUDGET} x "
            f"{bank.slot_nbytes} B = {N_BUDGET * bank.slot_nbytes / 2**20:.0f} MiB to keep them all.",
        },
    }


def adapters_table(result: dict) -> str:
    head = ("size", "batch", "k", "path", "chosen", "ms/batch", "img/s", "x merged")
    lines = ["{:>5} {:>5} {:>3} {:>8} {:>7} {:>9} {:>8} {:>8}".format(*head)]
    for r in result["rows"]:
        lines.append(
            f"{r['size']:>5} {r['batch']:>5} {r['k']:>3} {r['path']:>8} {r.get('chosen', ''):>7} "
            f"{r['ms_per_batch']:>9.1f} {r['images_per_s']:>8.1f} {r['ratio_to_merged']:>8.2f}"
        )
    t = result["measured_threshold"]
    lines.append(
        f"grouped beats mixed up to fraction {t['grouped_max_fraction']:.3f} of the batch "
        f"(rule now {t['current_grouped_max_fraction']}); "
        + "; ".join(
            f"{size}px: chosen {v['chosen_ratio_to_merged']:.2f}x merged "
            f"({'pass' if v['meets_0.8x_merged'] else 'FAIL'} >= 0.8), "
            f"mixed/grouped {v['mixed_over_grouped']:.2f}"
            for size, v in t["per_size"].items()
        )
    )
    io = result["adapter_io"]
    lines.append(
        f"load p50 {io['load_ms_p50']:.2f} ms, p99 {io['load_ms_p99']:.2f} ms ({io['trials']} adapters); "
        f"file {io['file_bytes']} B, host {io['host_bytes_per_adapter']} B per adapter"
    )
    lines.append(io["memory_budget_10k"]["statement"])
    return "\n".join(lines)
