import numpy as np
import pytest
import torch
from PIL import Image

from pstyle.bench.real_users import (
    SSIM_CAP,
    bench_real_users,
    meets_target,
    real_users_table,
    room_under_ssim_cap,
)
from pstyle.data.photos import real_style_users, wallpaper_style_users
from pstyle.data.synth import scene_tensors
from pstyle.quality.metrics import style_distance, style_gap
from pstyle.training.bundled import bundled_model_dir


def _row(user: str, seed: int, change: float, ssim_cost: float) -> dict:
    return {"user": user, "seed": seed, "style_base": 2.0, "style_adapter": 2.0 * (1 + change),
            "style_change": change, "style_bound": 1.0, "ssim_base": 0.5, "ssim_adapter": 0.5 - ssim_cost,
            "best_step": 100}  # fmt: skip


def test_style_gap_is_style_distance_with_gradients():
    torch.manual_seed(0)
    outputs, styles = torch.rand(2, 3, 64, 64, requires_grad=True), torch.rand(3, 3, 64, 64)
    gap = style_gap(outputs, styles)
    assert torch.allclose(gap.detach(), style_distance(outputs, styles))
    gap.sum().backward()
    assert outputs.grad is not None and outputs.grad.abs().sum() > 0


def test_room_under_ssim_cap_moves_toward_the_style_within_the_cap():
    torch.manual_seed(0)
    content = scene_tensors(2, 64, seed=0)
    zero_shot = (0.8 * content + 0.1).clamp(0, 1)
    style = torch.rand(2, 3, 64, 64)  # noise: far from the scenes' statistics, so there is room
    room, optimised = room_under_ssim_cap(zero_shot, content, style, style, stride=4, steps=15)
    assert optimised.shape == zero_shot.shape and not torch.allclose(optimised, zero_shot, atol=1e-2)
    assert room["change"] < -0.05
    assert room["ssim_cost"] <= SSIM_CAP + 0.01
    # the outputs themselves are not changed in place
    assert torch.equal(zero_shot, (0.8 * content + 0.1).clamp(0, 1))


def test_real_users_table_shows_the_rooms_only_when_measured():
    row = _row("u", 0, -0.25, 0.03)
    plain = real_users_table({"rows": [row], "oracle_steps": 0})
    assert "room" not in plain and "-25.0%" in plain and "-50%" in plain
    rooms = {f"room_stride{s}": {"change": -0.4, "ssim_cost": 0.012} for s in (1, 4)}
    table = real_users_table({"rows": [{**row, **rooms}], "oracle_steps": 300})
    assert table.count("-40.0% at 0.012") == 2 and "room_stride4" in table


@pytest.mark.parametrize("stride", [1, 4])
def test_room_under_ssim_cap_with_no_steps_is_no_change(stride):
    content, style = scene_tensors(1, 64, seed=1), scene_tensors(2, 64, seed=2)
    room, optimised = room_under_ssim_cap(content, content, style, style, stride=stride, steps=0)
    assert torch.allclose(optimised, content, atol=1e-3)
    assert room["change"] == pytest.approx(0.0, abs=1e-3)
    assert room["ssim_cost"] == pytest.approx(0.0, abs=1e-3)


def test_meets_target_needs_both_the_style_change_and_the_ssim_cost():
    assert meets_target(_row("u", 0, -0.21, 0.04))
    assert not meets_target(_row("u", 0, -0.19, 0.01))  # too little style
    assert not meets_target(_row("u", 0, -0.30, SSIM_CAP + 0.01))  # too much of the photo lost


def test_real_users_table_counts_each_split_and_averages_users_over_splits():
    rows = [
        _row("a", 0, -0.25, 0.03),
        _row("b", 0, -0.10, 0.02),
        _row("a", 1, -0.15, 0.01),
        _row("b", 1, 0.0, 0.0),
    ]
    table = real_users_table({"rows": rows, "oracle_steps": 0})
    assert "split 0: 1 of 2 users meet the target (a)" in table
    assert "split 1: 0 of 2 users meet the target (none)" in table
    assert "a: mean over 2 splits -20.0% at SSIM cost 0.020" in table
    assert "b: mean over 2 splits -5.0% at SSIM cost 0.010" in table
    single = real_users_table({"rows": rows[:2], "oracle_steps": 0})
    assert "mean over" not in single and "split 0: 1 of 2" in single


def test_bench_real_users_repeats_over_held_out_splits():
    result = bench_real_users(
        bundled_model_dir(), real_style_users(64), size=64, steps=1, progress=False, seeds=2
    )
    rows = result["rows"]
    assert result["seeds"] == 2 and len(rows) == 8 and {r["seed"] for r in rows} == {0, 1}
    bounds = {(r["user"], r["seed"]): r["style_bound"] for r in rows}
    # another seed holds out other style images: the bound (training vs held-out images) moves
    assert any(bounds[(user, 0)] != bounds[(user, 1)] for user, _ in bounds)
    assert "split 1:" in real_users_table(result)


def test_wallpaper_users_are_a_seeded_draw_of_the_installed_wallpapers(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c", "d"):
        Image.fromarray(rng.integers(0, 256, (160, 200, 3), np.uint8)).save(tmp_path / f"{name}.png")
    sizes = tmp_path / "e" / "contents" / "images"  # one KDE wallpaper, in two sizes: one user
    sizes.mkdir(parents=True)
    for side in (64, 300):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), np.uint8)).save(sizes / f"{side}.png")
    draws = [wallpaper_style_users(3, [tmp_path], size=32, count=4, seed=seed) for seed in range(4)]
    assert all(len(users) == 3 and {u.shape for u in users.values()} == {(4, 3, 32, 32)} for users in draws)
    assert set().union(*draws) <= set("abcde") and len({tuple(users) for users in draws}) > 1
    again = wallpaper_style_users(3, [tmp_path], size=32, count=4, seed=0)
    assert list(again) == list(draws[0]) and all(torch.equal(again[n], draws[0][n]) for n in again)
    with pytest.raises(ValueError, match="6 wallpaper users asked for, 5 wallpapers installed"):
        wallpaper_style_users(6, [tmp_path])
