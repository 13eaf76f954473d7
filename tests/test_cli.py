"""The CLI end to end on tiny data: train, resume, stylize, eval, bench, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures.cli import pstyle_ok, run_pstyle
from fixtures.tiny import set_args, tiny_settings

from pstyle.config import PStyleConfig
from pstyle.images import load_image, save_image
from pstyle.training.checkpoint import fingerprint, load_checkpoint
from pstyle.training.trainer import train_base

TINY = set_args(tiny_settings(**{"train.batch_size": 2, "train.steps": 3}))


def pstyle(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pstyle", *map(str, args)], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synth_dir) -> Path:
    out = tmp_path_factory.mktemp("cli") / "base"
    pstyle("train-base", "--data", synth_dir, "--out", out, "--device", "cpu", *TINY)
    return out


def test_train_base_writes_checkpoint_and_samples(trained):
    meta = json.loads((trained / "meta.json").read_text())
    assert meta["step"] == 3 and meta["features"]["kind"] == "efficientnet_lite0"
    assert sorted(p.name for p in (trained / "samples").glob("*.png")) == ["step000002.png", "step000003.png"]


def test_resume_matches_an_uninterrupted_run(tmp_path, synth_dir, small_config):
    small_config.train.steps = 4
    straight = train_base(small_config, synth_dir, tmp_path / "straight", progress=False)
    small_config.train.steps = 2
    train_base(small_config, synth_dir, tmp_path / "resumed", progress=False)
    small_config.train.steps = 4
    train_base(small_config, synth_dir, tmp_path / "resumed", progress=False)  # continues from step 2
    a, meta_a = load_checkpoint(straight)
    b, meta_b = load_checkpoint(tmp_path / "resumed")
    assert meta_b["step"] == 4
    assert fingerprint(a) == fingerprint(b)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_resume_refuses_other_architecture(tmp_path, synth_dir, small_config):
    train_base(small_config, synth_dir, tmp_path / "run", progress=False)
    other = PStyleConfig.from_dict(small_config.to_dict())
    other.model.channels = 12
    with pytest.raises(ValueError, match="another architecture"):
        train_base(other, synth_dir, tmp_path / "run", progress=False)


def test_stylize_strength_region_and_seed(trained, synth_dir, tmp_path):
    content = synth_dir / "content" / "images" / "00000.png"
    styles = sorted((synth_dir / "styles").iterdir())[0].glob("*.png")
    style_args = [a for s in sorted(styles)[:2] for a in ("--style", s)]
    out = tmp_path / "out.png"
    wide = tmp_path / "wide.png"
    save_image(torch.rand(3, 50, 90), wide)  # not a multiple of 16, not square
    pstyle_ok("stylize", wide, "--model", trained, *style_args, "-o", out, "--device", "cpu")
    assert load_image(out).shape == (3, 48, 80)  # cropped to the stride, aspect kept
    pstyle_ok("stylize", wide, "--model", trained, *style_args, "-o", out, "--size", "64", "--device", "cpu")
    assert load_image(out).shape == (3, 64, 112)
    zero = tmp_path / "zero.png"
    pstyle_ok(
        "stylize", content, "--model", trained, *style_args, "-o", zero, "--strength", "0", "--device", "cpu"
    )
    assert (load_image(zero) - load_image(content)).abs().max() <= 1 / 255 + 1e-6
    for region in ("subject", "background"):
        pstyle_ok(
            "stylize",
            content,
            "--model",
            trained,
            *style_args,
            "-o",
            tmp_path / f"{region}.png",
            "--mask",
            region,
        )
        assert (tmp_path / f"{region}.png").stat().st_size > 0


def test_bad_inputs_give_one_line_errors(trained, synth_dir, tmp_path):
    content = synth_dir / "content" / "images" / "00000.png"
    broken = tmp_path / "broken.png"
    broken.write_bytes(content.read_bytes()[:100])
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    x = tmp_path / "x.png"
    cases = [
        (["stylize", content, "--model", trained, "--style", broken, "-o", x], "broken.png"),
        (["stylize", text, "--model", trained, "--style", content, "-o", x], "notes.txt"),
        (["stylize", content, "--model", tmp_path, "--style", content, "-o", x], "not a pstyle checkpoint"),
        (
            ["stylize", content, "--model", trained, "--style", content, "-o", x, "--size", "50"],
            "multiple of 16",
        ),
        (
            ["train-base", "--data", synth_dir, "--out", tmp_path / "o", "--set", "train.stepz=1"],
            "train.stepz",
        ),
    ]
    for i, (args, needle) in enumerate(cases):
        if i == 0:  # once through `python -m pstyle` itself, the rest through its `main` in this process
            proc = pstyle(*args, check=False)
            code, err = proc.returncode, proc.stderr
        else:
            code, _, err = run_pstyle(*args)
        assert code == 1, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], err
    assert not x.exists()  # nothing half-written on failure


def test_eval_writes_table_and_json(trained, synth_dir, tmp_path):
    out = tmp_path / "eval.json"
    stdout = pstyle_ok(
        "eval", "--model", trained, "--data", synth_dir, "--out", out, "--n-users", "2", "--n-content", "2"
    )
    assert "reinhard" in stdout
    report = json.loads(out.read_text())
    assert set(report["methods"]) == {"model", "identity", "reinhard"}
    assert report["methods"]["identity"]["ssim"] == pytest.approx(1.0)
    assert report["model"]["diversity"] >= 0


def test_bench_generator_writes_json_and_table(tmp_path):
    args = ["--out", tmp_path, "--device", "cpu", "--sizes", "32", "--batches", "1,2", "--min-time", "0.05"]
    proc = pstyle("bench", "generator", *args)
    assert "img/s" in proc.stdout
    result = json.loads((tmp_path / "generator-cpu.json").read_text())
    assert [(r["size"], r["batch"]) for r in result["rows"] if r["arch"] == "pstyle"] == [(32, 1), (32, 2)]
    assert {r["arch"] for r in result["rows"]} == {
        "pstyle",
        "adain_vgg19",
        "johnson",
    }  # timed in the same run
    assert all(r["images_per_s"] > 0 for r in result["rows"])


def test_bench_adapters_cli(tmp_path):
    args = ["--out", tmp_path, "--device", "cpu", "--sizes", "32", "--batch", "4", "--ks", "1,4"]
    proc = pstyle("bench", "adapters", *args, "--min-time", "0.01", "--load-trials", "3")
    result = json.loads((tmp_path / "adapters-cpu.json").read_text())
    assert {r["path"] for r in result["rows"]} >= {"base", "merged", "mixed", "grouped", "auto"}
    assert "mixed" in proc.stdout


def test_renamed_options_keep_the_old_spelling_for_a_release():
    """`--users N` (a count) became `--n-users`: scripts using the old flag still run, with a warning."""
    import click
    from click.testing import CliRunner

    from pstyle.cli.options import renamed_option

    @click.command()
    @click.option("--n-users", "n_users", default=8, type=int)
    @renamed_option("--users", "--n-users", "n_users", type=int)
    def count(n_users: int) -> None:
        click.echo(f"n={n_users}")

    runner = CliRunner()
    old = runner.invoke(count, ["--users", "3"])
    assert old.exit_code == 0 and "n=3" in old.stdout and "--users is deprecated" in old.stderr
    new = runner.invoke(count, ["--n-users", "4"])
    assert new.exit_code == 0 and "n=4" in new.stdout and "deprecated" not in new.stderr
    assert "--users" not in runner.invoke(count, ["--help"]).stdout


def test_job_flags_are_generated_from_the_typed_job_config():
    """`pstyle train-base --ray` and `ray_jobs/train_base.py` take the same flags: TrainJob's fields."""
    from click.testing import CliRunner

    from pstyle.cli.main import cli
    from pstyle.config import PStyleConfig, TrainJob, flag_fields
    from pstyle.distributed.job_args import parse_job

    help_text = CliRunner().invoke(cli, ["train-base", "--help"]).stdout
    for name, _, _ in flag_fields(TrainJob):
        if name not in ("data", "out"):  # the command's own --data and --out
            assert "--" + name.replace("_", "-") in help_text
    argv = ["--data", "d", "--workers", "3", "--gpu", "--set", "train.steps=7"]
    job, config = parse_job(TrainJob, PStyleConfig, argv)
    assert (job.data, job.workers, job.gpu, config.train.steps) == ("d", 3, True, 7)
    with pytest.raises(SystemExit):  # argparse's one-line usage error, not a traceback
        parse_job(TrainJob, argv=["--workers", "0"])
