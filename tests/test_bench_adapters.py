"""The adapters benchmark runs end to end on a tiny model; its paths compute the same thing."""

from __future__ import annotations

from pathlib import Path

import torch
from fixtures.tiny import tiny_model

from pstyle.adapters import choose_path
from pstyle.bench.adapters import adapters_table, bench_adapters
from pstyle.bench.common import write_result

TINY = tiny_model()


def test_bench_adapters_smoke(tmp_path: Path) -> None:
    result = bench_adapters(
        "cpu",
        sizes=(32,),
        batch=4,
        ks=(1, 4),
        min_time=0.01,
        load_trials=5,
        tmp_dir=tmp_path,
        cfg=TINY,
        warmup=0,
    )
    rows = result["rows"]
    assert [(r["path"], r["k"]) for r in rows] == [
        ("base", 0), ("merged", 1),
        ("mixed", 1), ("grouped", 1), ("auto", 1),
        ("mixed", 4), ("grouped", 4), ("auto", 4),
    ]  # fmt: skip
    for r in rows:
        assert r["size"] == 32 and r["batch"] == 4
        assert r["ms_per_batch"] > 0 and r["images_per_s"] > 0 and r["ratio_to_merged"] > 0
        if r["path"] == "auto":
            assert r["chosen"] == choose_path(torch.device("cpu"), 4, r["k"])
    assert rows[1]["ratio_to_merged"] == 1.0

    # the merged generator and the bank's per-sample path compute the same images
    assert result["max_abs_diff"]["merged_vs_mixed_k1"] < 1e-4
    assert result["max_abs_diff"]["grouped_vs_mixed_kmax"] < 1e-4

    threshold = result["measured_threshold"]
    assert 0.0 <= threshold["grouped_max_fraction"] <= 1.0
    size = threshold["per_size"]["32"]
    assert size["k_max"] == 4 and size["meets_0.8x_merged"] == (size["chosen_ratio_to_merged"] >= 0.8)
    assert size["meets_3x_grouped_on_gpu"] is None

    io = result["adapter_io"]
    assert io["trials"] == 5 and 0 < io["load_ms_p50"] <= io["load_ms_p99"]
    assert io["file_bytes"] > 0 and io["host_tensor_bytes"] == io["device_slot_bytes"] > 0
    assert io["host_bytes_per_adapter"] > io["host_tensor_bytes"]
    assert io["memory_budget_10k"]["host_bytes"] == 10_000 * io["host_bytes_per_adapter"]
    assert list(tmp_path.iterdir()) == []  # the adapter files are cleaned up

    table = adapters_table(result)
    assert "grouped" in table and "10,000" in table
    path = write_result(result, table, tmp_path / "out")
    assert path.name == "adapters-cpu.json"
