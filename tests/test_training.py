"""A seeded short training run on synthetic data honestly improves SWD to the users' held-out styles."""

from __future__ import annotations

from pstyle.baselines import identity
from pstyle.checkpoint import load_checkpoint
from pstyle.config import cpu_preset
from pstyle.evaluate import evaluate, model_method
from pstyle.train import BaseTrainer, train_base

STEPS = 100  # ~65 s on 2 CPUs at 64 px


def test_short_training_beats_untrained_generator_and_identity(synth_dir, tmp_path):
    config = cpu_preset(image_size=64, steps=STEPS)
    untrained = BaseTrainer(config).model.eval()  # the exact initialisation the run starts from
    trained, _ = load_checkpoint(train_base(config, synth_dir, tmp_path / "base", progress=False))
    methods = {
        "untrained": model_method(untrained),
        "trained": model_method(trained.eval()),
        "identity": identity,
    }
    scores = evaluate(methods, synth_dir, 64, n_users=6, n_content=8)
    swd = {name: s["swd"] for name, s in scores.items()}
    assert swd["trained"] < 0.95 * swd["untrained"], swd
    assert swd["trained"] < 0.8 * swd["identity"], swd
