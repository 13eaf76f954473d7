"""Shared by the Tune tests: a tiny search configuration and clean-up of processes a test started."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

from pstyle.config import ModelConfig, PStyleConfig
from pstyle.tune_config import Param, TuneConfig

REPO = Path(__file__).resolve().parents[1]


def tiny_tune_config(
    model: ModelConfig, store: str | Path, data: str | Path | None, name: str, **overrides: Any
) -> TuneConfig:
    """2-4 trials of `model` (tests pass conftest's narrow `small_model_cfg`) on 32 px images, a few
    steps per iteration: seconds per trial."""
    base = PStyleConfig(model=model)
    base.train.image_size = 32
    base.train.batch_size = 4
    base.train.style_images = 2
    settings: dict[str, Any] = {
        "name": name,
        "store": str(store),
        "data": str(data) if data else None,
        "num_samples": 4,
        "iterations": 3,
        "steps_per_iteration": 2,
        "grace_period": 1,
        "reduction_factor": 2,
        "eval_users": 2,
        "eval_content": 4,
        "max_failures": 1,
        "synth_content": 8,
        "synth_users": 4,
        "synth_images_per_user": 4,
        "base": base,
        "space": {
            "train.lr_g": Param(1e-4, 2e-3, log=True),
            "train.lr_d": Param(1e-4, 4e-3, log=True),
            "loss.content": Param(0.1, 3.0, log=True),
            "loss.style": Param(30.0, 3000.0, log=True),
            "model.w_dim": Param(choices=[16, 32]),
        },
    }
    settings.update(overrides)
    return TuneConfig(**settings)


def kill_session(leader: int, grace_s: float = 5.0) -> None:
    """End every process in the session that `leader` (a process this test started with
    `start_new_session=True`) leads: SIGTERM, then SIGKILL what is left. Ray's workers get their
    own process groups but stay in the session, so a process-group kill would miss them."""

    def members() -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    if os.getsid(int(entry.name)) == leader:
                        pids.append(int(entry.name))
        return pids

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in members():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _alive(members()):
            time.sleep(0.2)


def _alive(pids: list[int]) -> bool:
    """True if any pid is still running (zombies awaiting their parent do not count)."""
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if state != "Z":
            return True
    return False
