"""Serving variants: the int8 generator, structured pruning, the ONNX export and `pstyle export`."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from pathlib import Path

import pytest
import torch
from fixtures.cli import run_pstyle
from fixtures.serving import random_base, write_adapter
from fixtures.tiny import random_codes
from safetensors.torch import load_file, save_file

from pstyle.adapters import (
    inject_adapter,
    load_adapter,
    merge_adapter,
    set_active_adapter,
    unmerge_adapter,
)
from pstyle.config import AdapterConfig, ExportConfig, ModelConfig
from pstyle.models import Generator, quantize
from pstyle.models.encoder import CODE_DIM
from pstyle.models.prune import channel_importance, pruned_generator
from pstyle.models.quantize import (
    CALIBRATION_FILE,
    WEIGHT_LEVELS,
    Int8Conv2d,
    QuantizationError,
    calibrate_int8,
    finish_calibration,
    int8_layers,
    prepare_int8,
)
from pstyle.models.variants import ONNX_FILE, apply_variant, variant_format
from pstyle.store import LocalStore
from pstyle.store.registry import Registry
from pstyle.training.checkpoint import fingerprint, load_checkpoint
from pstyle.training.variants import export_variant

CFG = ModelConfig(channels=8, res_blocks=1, w_dim=16, noise_dim=4)
SMALL_EXPORT = ExportConfig(
    calibration_batches=2, batch=2, size=64, distill_steps=4, distill_pairs=4, channels=6
)


def batches(n: int = 2, size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [(torch.rand(2, 3, size, size, generator=gen), random_codes(2, gen)) for _ in range(n)]


def styled_generator() -> Generator:
    """A Generator whose FiLM layers are not the identity, so every channel's importance differs."""
    torch.manual_seed(0)
    g = Generator(CFG).eval()
    for module in g.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=0.05)
    return g


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_base(tmp_path_factory.mktemp("export") / "base")


@torch.no_grad()
def test_int8_generator_is_close_to_fp32_and_keeps_the_checkpoint_identity() -> None:
    g = styled_generator()
    q = calibrate_int8(copy.deepcopy(g), batches())
    assert len([m for m in q.modules() if isinstance(m, Int8Conv2d)]) == sum(
        isinstance(m, torch.nn.Conv2d) for m in g.modules()
    )
    decoder = {k for k in g.state_dict() if not k.startswith("trunk.")}  # the trunk's norms are folded
    assert decoder <= q.state_dict().keys() and not any(
        isinstance(m, torch.nn.BatchNorm2d) for m in q.modules()
    )
    content, code = batches(1)[0]
    noise = g.make_noise(content, seed=0)
    diff = (q(content, code, noise) - g(content, code, noise)).abs()
    assert 0 < diff.mean() < 0.01 and diff.max() < 0.1
    assert (copy.deepcopy(q)(content, code, noise) - q(content, code, noise)).abs().max() == 0


def _exact_int8_conv(layer: Int8Conv2d, x: torch.Tensor) -> torch.Tensor:
    """What `layer` computes in exact integer arithmetic: its smoothed, quantized input and per-channel
    int8 weight convolved in float (no intermediate rounding or saturation), requantized to its output."""
    weight, bias = layer.folded(layer.weight, layer.bias)
    if layer.groups == 1:
        weight, x = weight * layer.smoothing.view(1, -1, 1, 1), x / layer.smoothing.view(1, -1, 1, 1)
    scales = (weight.abs().amax(dim=(1, 2, 3)) / WEIGHT_LEVELS).clamp_min(1e-12).view(-1, 1, 1, 1)
    weight = (weight / scales).round().clamp(-128, 127) * scales
    (s_in, z_in), (s_out, z_out) = layer._input_q, layer._output_q
    x = ((x / s_in).round() + z_in).clamp(0, 255).sub(z_in) * s_in
    y = torch.nn.functional.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    return ((y / s_out).round() + z_out).clamp(0, 255).sub(z_out) * s_out


@torch.no_grad()
def test_int8_convolutions_compute_exact_integer_results_on_this_cpu() -> None:
    """No int16 saturation: on x86 CPUs without VNNI, 8-bit weights overflowed the kernels' pair sums
    (the stem was off by up to 6.0), so int8 outputs differed between CPUs."""
    g = styled_generator()
    q = calibrate_int8(copy.deepcopy(g), batches())
    worst: dict[str, float] = {}

    def compare(name: str, layer: Int8Conv2d, inputs: tuple[torch.Tensor], out: torch.Tensor) -> None:
        x, out = (t.dequantize() if t.is_quantized else t for t in (inputs[0], out))  # chained layers
        steps = (_exact_int8_conv(layer, x) - out).abs().max() / layer._output_q[0]
        worst[name] = steps.item()

    for name, layer in int8_layers(q).items():
        layer.register_forward_hook(functools.partial(compare, name))
    content, code = batches(1)[0]
    q(content, code, g.make_noise(content, seed=0))
    assert len(worst) == len(int8_layers(q))
    assert max(worst.values()) <= 1.01, sorted(worst.items(), key=lambda kv: -kv[1])[:3]  # rounding only


@torch.no_grad()
def test_int8_trunk_blocks_hand_quantized_maps_along_unless_an_adapter_wraps_a_link() -> None:
    """Inside a trunk block each convolution's output is the next one's input, so it stays quantized
    (no dequantize and quantize between them): the same integers, so the same output. A LoRA wrapper
    adds a float delta, so wrapping the receiving layer hands it float again."""
    g = styled_generator()
    q = calibrate_int8(copy.deepcopy(g), batches())
    content, code = batches(1)[0]
    noise = g.make_noise(content, seed=0)
    chained = {name: layer for name, layer in int8_layers(q).items() if layer._chain is not None}
    quantized_out: list[str] = []

    def record(name: str, layer: Int8Conv2d, inputs: tuple[torch.Tensor], out: torch.Tensor) -> None:
        if out.is_quantized:
            quantized_out.append(name)

    hooks = [
        layer.register_forward_hook(functools.partial(record, name)) for name, layer in int8_layers(q).items()
    ]
    out = q(content, code, noise)
    assert "trunk.blocks.1.0.conv_pw" in chained and sorted(quantized_out) == sorted(chained)
    links = {name: layer._chain for name, layer in chained.items()}
    for layer in chained.values():
        layer._chain = None
    assert torch.equal(q(content, code, noise), out)
    for name, layer in chained.items():
        layer._chain = links[name]
    inject_adapter(q, "alice", AdapterConfig(target_modules=("trunk.blocks.1.0.conv_pwl",)))
    quantized_out.clear()
    assert torch.equal(q(content, code, noise), out)  # a new adapter is a no-op
    assert "trunk.blocks.1.0.conv_pw" in quantized_out and "trunk.blocks.1.0.conv_dw" not in quantized_out
    for hook in hooks:
        hook.remove()


@torch.no_grad()
def test_int8_smoothing_keeps_a_faint_channel_beside_loud_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """The last decoder layer takes feature channels of about +-120 beside the photo's luma (+-3): one
    shared 8-bit input step would leave the luma a few levels. Smoothing divides each channel by its
    own scale (and multiplies its weights back), so the faint channel keeps its detail; a layer whose
    channels have even ranges is left alone."""
    gen = torch.Generator().manual_seed(0)
    faint = torch.randn(1, 1, 32, 32, generator=gen).clamp(-3, 3)
    loud = 40 * torch.randn(1, 8, 32, 32, generator=gen)

    def quantized(x: torch.Tensor) -> tuple[Int8Conv2d, float]:
        """An int8 conv calibrated on `x` whose last channel matters as much as the others together,
        and its mean relative error on `x`."""
        conv = torch.nn.Sequential(torch.nn.Conv2d(x.shape[1], 4, 3, padding=1))
        torch.nn.init.normal_(conv[0].weight, std=0.1, generator=torch.Generator().manual_seed(1))
        conv[0].weight[:, -1] *= 20
        exact = conv(x)
        q = prepare_int8(copy.deepcopy(conv))
        q(x)
        finish_calibration(q)
        return q[0], ((q(x) - exact).abs().mean() / exact.abs().mean()).item()

    uneven = torch.cat([loud, faint], dim=1)
    layer, error = quantized(uneven)
    lo, hi = (layer.input_ranges / layer.smoothing).unbind(0)
    assert (hi[-1] - lo[-1]) / layer._input_q[0] > 40  # the faint channel spans > 40 of the 256 levels
    monkeypatch.setattr(quantize, "MIN_LEVELS", 0)  # no layer is starved: smoothing off
    unsmoothed, unsmoothed_error = quantized(uneven)
    assert (unsmoothed.smoothing == 1).all() and error < 0.5 * unsmoothed_error
    monkeypatch.undo()
    even, _ = quantized(loud)
    assert (even.smoothing == 1).all()


@torch.no_grad()
def test_int8_base_applies_a_users_adapter_per_sample_and_merged(base: Path, tmp_path: Path) -> None:
    adapter = write_adapter(base, "alice", 0, tmp_path / "alice")
    model, _ = load_checkpoint(base)
    identity = fingerprint(model)
    int8 = calibrate_int8(copy.deepcopy(model.generator), batches())
    content, code = batches(1)[0]
    noise = model.generator.make_noise(content, seed=0)
    plain = int8(content, code, noise)
    outputs = {}
    for name, generator in (("fp32", model.generator), ("int8", int8)):
        load_adapter(adapter, generator, "alice", identity)
        set_active_adapter(generator, "alice")
        outputs[name] = generator(content, code, noise)
    assert (outputs["int8"] - plain).abs().mean() > 0.01  # the adapter changed the int8 output
    per_sample_error = (outputs["int8"] - outputs["fp32"]).abs().mean()
    assert per_sample_error < 0.01  # ...as it changes fp32's
    merge_adapter(int8, "alice")  # the int8 weights are re-quantized from the merged float weights
    merged = int8(content, code, noise)
    # merging quantizes the adapted weights against the base's calibrated ranges: held to the float
    # deltas' bound (on the bundled base's trained adapters the two differ by 2 %)
    merged_error = (merged - outputs["fp32"]).abs().mean()
    assert (merged - plain).abs().mean() > 0.01 and merged_error < 0.01
    unmerge_adapter(int8)
    set_active_adapter(int8, None)
    assert (int8(content, code, noise) - plain).abs().max() < 0.01


def test_int8_refuses_cuda_and_uncalibrated_layers() -> None:
    g = Generator(CFG)
    with pytest.raises(QuantizationError, match="calibration never ran"):
        calibrate_int8(g, [])
    if torch.cuda.is_available():
        with pytest.raises(QuantizationError, match="CPU"):
            calibrate_int8(Generator(CFG).cuda(), batches())


@torch.no_grad()
def test_pruning_at_full_width_is_exact_and_narrower_keeps_the_important_channels() -> None:
    g = styled_generator()
    importance = channel_importance(g, batches())
    same, same_cfg = pruned_generator(g, CFG, importance, CFG.channels)
    content, code = batches(1)[0]
    noise = g.make_noise(content, seed=0)
    assert same_cfg == CFG and torch.equal(same(content, code, noise), g(content, code, noise))
    small, small_cfg = pruned_generator(g, CFG, importance, 6)
    assert small_cfg.channels == 6 and small.up2.conv2.conv.out_channels == 6
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in g.parameters())
    # the most important channels beat the least important ones as a 6-wide decoder
    worst = {name: -scores for name, scores in importance.items()}
    weak, _ = pruned_generator(g, CFG, worst, 6)
    reference = g(content, code, noise)
    assert (small(content, code, noise) - reference).abs().mean() < (
        weak(content, code, noise) - reference
    ).abs().mean()
    with pytest.raises(ValueError, match="pruned width"):
        pruned_generator(g, CFG, importance, CFG.channels + 1)


def test_export_int8_publishes_and_loads_as_the_same_base(base: Path, tmp_path: Path) -> None:
    meta = export_variant(base, tmp_path / "int8", SMALL_EXPORT, progress=False)
    assert variant_format(meta) == "int8" and (tmp_path / "int8" / CALIBRATION_FILE).is_file()
    registry = Registry(LocalStore(tmp_path / "store"))
    version = registry.publish_base("base-int8", tmp_path / "int8")
    assert version.manifest["variant"] == "int8" and CALIBRATION_FILE in version.files
    fetched = registry.fetch(version, tmp_path / "fetched")
    model, fetched_meta = load_checkpoint(fetched)
    source, _ = load_checkpoint(base)
    assert fingerprint(model) == fingerprint(source)  # the same base: users' adapters apply
    apply_variant(model, fetched, fetched_meta)
    assert any(isinstance(m, Int8Conv2d) for m in model.generator.modules())
    # calibration from another generator (or from before per-channel ranges), or a damaged file
    ranges = load_file(fetched / CALIBRATION_FILE)
    save_file({k: v for k, v in ranges.items() if not k.startswith("to_rgb.")}, fetched / CALIBRATION_FILE)
    with pytest.raises(QuantizationError, match="does not match this generator's layers: export it again"):
        apply_variant(load_checkpoint(fetched)[0], fetched, fetched_meta)
    (fetched / CALIBRATION_FILE).write_bytes(b"not safetensors")
    with pytest.raises(QuantizationError, match="cannot read the int8 calibration"):
        apply_variant(load_checkpoint(fetched)[0], fetched, fetched_meta)


def test_export_pruned_is_an_ordinary_narrower_checkpoint(base: Path, tmp_path: Path) -> None:
    meta = export_variant(
        base, tmp_path / "pruned", dataclasses.replace(SMALL_EXPORT, format="pruned"), progress=False
    )
    model, loaded = load_checkpoint(tmp_path / "pruned")
    assert loaded["config"]["model"]["channels"] == 6 and model.generator.up2.conv2.conv.out_channels == 6
    assert meta["variant"]["pruned_from_channels"] == 16 and len(meta["variant"]["distill_loss"]) == 2


def test_onnx_export_matches_eager(base: Path, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    export_variant(base, tmp_path / "onnx", ExportConfig(format="onnx", size=64), progress=False)
    model, _ = load_checkpoint(base)
    session = ort.InferenceSession(str(tmp_path / "onnx" / ONNX_FILE), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(3)
    for batch, h, w in ((1, 64, 64), (2, 96, 128)):  # batch, height and width are dynamic
        content = torch.rand(batch, 3, h, w, generator=gen)
        code = torch.randn(batch, CODE_DIM, generator=gen)
        noise = model.generator.make_noise(content, seed=1)
        expected = model.generator.synthesize(content, code, noise).detach()
        feeds = {"content": content.numpy(), "style_code": code.numpy(), "noise": noise.numpy()}
        got = torch.from_numpy(session.run(["image"], feeds)[0])
        assert got.shape == expected.shape and (got - expected).abs().max() < 1e-4


def test_export_cli_errors_are_one_line(base: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    for args, message in (
        (["--format", "fp8"], "format must be one of"),
        (["--format", "int8", "--size", "50"], "multiple of 16"),
        (["--format", "int8", "--size", "256"], "from 32 to 208"),
        (["--model", str(tmp_path)], "not a pstyle checkpoint"),
        (["--format", "pruned", "--channels", "16"], "does not prune a decoder of width 16"),
    ):
        code, _, err = run_pstyle("export", "--model", base, "--out", out, *args)
        assert code == 1 and message in err, err
        assert len(err.strip().splitlines()) == 1
    assert not out.exists()
    (tmp_path / "taken").mkdir()
    code, _, err = run_pstyle("export", "--model", base, "--out", tmp_path / "taken")
    assert code != 0 and "already exists" in err
    assert "variant" not in json.loads((base / "meta.json").read_text())  # the source is untouched


def test_compiled_variant_serves_zero_shot_like_eager(base: Path, tmp_path: Path) -> None:
    """A replica on the `compiled` export renders zero-shot batches through torch.compile (warmed up
    at start) and adapter batches through the eager bank; both match the fp32 replica's pixels."""
    from pstyle.config import ServeConfig
    from pstyle.serving.replica import AdapterServer, StylizeRequest

    registry = Registry(LocalStore(tmp_path / "store"))
    registry.publish_base("base", base, aliases=["production"])
    export_variant(base, tmp_path / "compiled", ExportConfig(format="compiled"), progress=False)
    registry.publish_base("fast", tmp_path / "compiled", aliases=["production"])
    registry.publish_adapter(
        "alice", write_adapter(base, "alice", 0, tmp_path / "alice"), aliases=["production"]
    )
    servers = {
        name: AdapterServer(ServeConfig(store=str(tmp_path / "store"), base=name, size=64))
        for name in ("base", "fast")
    }
    assert servers["fast"].compiled is not None and servers["base"].compiled is None
    gen = torch.Generator().manual_seed(0)
    styles = torch.rand(2, 3, 64, 64, generator=gen)
    requests = [
        StylizeRequest(
            "bob", torch.rand(3, 64, 64, generator=gen), styles=styles, styles_digest="s", strength=0.7
        ),
        StylizeRequest("alice", torch.rand(3, 64, 64, generator=gen)),
    ]
    out = {name: [r.image for r in server.run(requests)] for name, server in servers.items()}
    for fast, eager in zip(out["fast"], out["base"], strict=True):
        assert fast.shape == eager.shape and (fast - eager).abs().max() < 1e-3


def test_bench_variants_times_and_scores_every_export(base: Path, tmp_path: Path) -> None:
    from pstyle.bench.variants import bench_variants, variants_table

    for name, config in (
        ("int8", SMALL_EXPORT),
        ("pruned-6", dataclasses.replace(SMALL_EXPORT, format="pruned")),
    ):
        export_variant(base, tmp_path / "exported" / name, config, progress=False)
    (tmp_path / "exported" / ".pruned-8.tmp-abandoned").mkdir()  # an export that died half-way
    result = bench_variants(
        base,
        tmp_path / "exported",
        size=64,
        rounds=1,
        min_time=0.0,
        grid=tmp_path / "grid.png",
        photos=2,
        adapter_users=2,
    )
    assert set(result["speed"]) == {"fp32", "int8", "pruned-6"}
    assert (
        result["speed"]["fp32"]["x_fp32"] == 1.0
        and result["quality"]["relative_change"]["fp32"]["ssim"] == 0.0
    )
    assert (
        0 < result["quality"]["pixel_l1_vs_fp32"]["int8"] < result["quality"]["pixel_l1_vs_fp32"]["pruned-6"]
    )
    assert (tmp_path / "grid.png").stat().st_size > 0
    table = variants_table(result)
    assert len(table.splitlines()) == 8 and "pruned-6" in table
    paths = result["adapters_on_int8"]
    assert paths["fp32 grouped"]["l1_vs_fp32"] == 0.0
    assert all(0 < row["l1_vs_fp32"] < 0.05 for name, row in paths.items() if name.startswith("int8"))
