"""`pstyle bench serve`'s scenario plumbing, without a cluster: the upload it sends, the figures it
derives from timings, the tables it prints and the options each scenario takes."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from pstyle.bench.serve_http import (
    ZERO_SHOT_CASES,
    head_of_line_summary,
    head_of_line_table,
    noise_jpeg,
    parse,
    zero_shot_summary,
    zero_shot_table,
)
from pstyle.config import ServeConfig


def test_large_upload_is_photo_sized_and_accepted() -> None:
    data = noise_jpeg(4800, seed=1)
    config = ServeConfig()
    assert 3 * 2**20 < len(data) < config.max_upload_bytes  # a 23 MP photo's size, under the cap
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG" and image.size == (4800, 4800)
        assert image.width * image.height <= config.max_pixels
    assert noise_jpeg(64, seed=1) == noise_jpeg(64, seed=1) != noise_jpeg(64, seed=2)


def test_head_of_line_ratio_and_table() -> None:
    idle = [0.050] * 98 + [0.060, 0.070]
    loaded = [0.060] * 90 + [1.0] * 10
    uploads = [(2.0, 200), (2.5, 200), (float("nan"), 0)]
    result = {"size": 128, "upload": {"clients": 4, "side": 4800, "bytes": 7 * 2**20}}
    result |= head_of_line_summary(idle, loaded, uploads)
    assert (result["idle_latency_ms"]["p99"], result["loaded_latency_ms"]["p99"]) == pytest.approx(
        (60.1, 1000)
    )
    assert result["p99_ratio"] == pytest.approx(1000 / 60.1) and result["p50_ratio"] == pytest.approx(60 / 50)
    assert (result["uploads_answered"], result["uploads_ok"]) == (3, 2)  # the unanswered one is not ok
    table = head_of_line_table(result)
    assert "p99 16.64x (target <= 2x: NOT met)" in table and "3 (2 ok, p50 2250 ms)" in table


def test_zero_shot_summary_and_table() -> None:
    timings = {
        "in_request": [0.200, 0.220],
        "first": [0.150, 0.170],
        "cached": [0.050] * 10,
        "put": [0.030, 0.040],
    }
    result = {"size": 128, "styles": {"per_set": 4, "side": 256}} | zero_shot_summary(timings)
    assert result["first_vs_cached_p50"] == pytest.approx(3.2)
    assert result["in_request_vs_cached_p50"] == pytest.approx(4.2)
    table = zero_shot_table(result)
    assert all(label in table for label in ZERO_SHOT_CASES.values())


def test_each_scenario_takes_its_own_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse([]) == ("users", {}, parse([])[2])  # the defaults are the functions' own
    scenario, options, _ = parse(["--scenario", "head-of-line", "--requests", "5", "--uploads", "2"])
    assert (scenario, options) == ("head-of-line", {"n_requests": 5, "uploads": 2})
    assert parse(["--users", "1,8"])[1] == {"users": (1, 8)}
    for argv in (["--scenario", "head-of-line", "--concurrency", "3"], ["--uploads", "2"]):
        with pytest.raises(SystemExit):
            parse(argv)
        assert "does not take" in capsys.readouterr().err
