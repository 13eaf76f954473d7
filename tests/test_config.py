"""Config: one source of truth, serialisable, strict about typos."""

from __future__ import annotations

import pytest

from pstyle.config import PStyleConfig


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_round_trip(tmp_path, suffix):
    cfg = PStyleConfig().with_overrides(
        {"train.steps": 7, "model.channels": 16, "features.vgg19_weights": "s3://b/k"}
    )
    path = tmp_path / f"cfg{suffix}"
    cfg.save(path)
    assert PStyleConfig.load(path) == cfg


def test_unknown_keys_are_errors():
    with pytest.raises(KeyError, match="train.stepz"):
        PStyleConfig().with_overrides({"train.stepz": 1})
    with pytest.raises(KeyError, match="unknown ModelConfig keys"):
        PStyleConfig.from_dict({"model": {"chanels": 3}})


def test_ints_accepted_for_floats_and_validation():
    assert PStyleConfig.from_dict({"loss": {"style": 2}}).loss.style == 2.0
    with pytest.raises(ValueError, match="odd"):
        PStyleConfig().with_overrides({"model.mask_feather": 4})


def test_every_config_shares_one_override_rule():
    """`ConfigFile.with_overrides` reaches nested keys of any config and refuses what is not a key."""
    from pstyle.config import AdapterJobConfig, PersonalizeConfig, TrainJob, TuneConfig

    tune = TuneConfig().with_overrides({"base.train.steps": 3, "space.train.lr_g": None, "iterations": 2})
    assert (tune.base.train.steps, tune.iterations, "train.lr_g" in tune.space) == (3, 2, False)
    assert PersonalizeConfig().with_overrides({"adapter.rank": 4}).adapter.rank == 4
    assert TrainJob().with_overrides({"workers": 4}).workers == 4
    with pytest.raises(KeyError, match="unknown AdapterJobConfig key"):
        AdapterJobConfig().with_overrides({"wrokers": 2})
    with pytest.raises(KeyError, match="unknown PStyleConfig key"):
        PStyleConfig().with_overrides({"train..steps": 2})
    with pytest.raises(ValueError, match="is a section"):
        PStyleConfig().with_overrides({"train": 5})
