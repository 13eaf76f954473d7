"""A seeded short training run honestly improves on its initialisation: held-out style distance and
content kept both get better, and the output is much closer to the users' styles than the content is."""

from __future__ import annotations

from conftest import BASE_STEPS

from pstyle.config import cpu_preset
from pstyle.evaluation.synthetic import evaluate, model_method
from pstyle.quality.baselines import identity
from pstyle.training.checkpoint import load_checkpoint
from pstyle.training.trainer import BaseTrainer


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
    style = {name: s["style"] for name, s in scores.items()}
    content = {name: s["content"] for name, s in scores.items()}
    assert style["trained"] < 0.8 * style["untrained"], style
    assert style["trained"] < 0.8 * style["identity"], style
    assert content["trained"] < content["untrained"], content
