"""A seeded short training run on synthetic data honestly improves SWD to the users' held-out styles."""

from __future__ import annotations

from conftest import BASE_STEPS

from pstyle.baselines import identity
from pstyle.checkpoint import load_checkpoint
from pstyle.config import cpu_preset
from pstyle.evaluate import evaluate, model_method
from pstyle.train import BaseTrainer


def test_short_training_beats_untrained_generator_and_identity(synth_dir, trained_base):
    untrained = BaseTrainer(cpu_preset(64, BASE_STEPS)).model.eval()  # the run's exact initialisation
    trained, meta = load_checkpoint(trained_base)
    assert meta["step"] == BASE_STEPS
    methods = {
        "untrained": model_method(untrained),
        "trained": model_method(trained.eval()),
        "identity": identity,
    }
    scores = evaluate(methods, synth_dir, 64, n_users=6, n_content=8)
    swd = {name: s["swd"] for name, s in scores.items()}
    assert swd["trained"] < 0.95 * swd["untrained"], swd
    assert swd["trained"] < 0.8 * swd["identity"], swd
