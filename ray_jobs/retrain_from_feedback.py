r"""Ray job: one run of the feedback loop (retrain from new ratings, A/B test, decide).

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python ray_jobs/retrain_from_feedback.py --store s3://bucket/pstyle --base base@production \
        --workers 4 --min-new-ratings 5 --set personalize.steps=200 --set decide.alpha=0.05

Flags are the fields of `pstyle.config.LoopConfig` (the same as `pstyle loop run`); --config and
--set reach every LoopConfig setting, the adapter recipe (`personalize.*`) and the decision rule
(`decide.*`) too. Users with at least --min-new-ratings ratings since their last retrain get a new
adapter, published as `candidate` and put into the running loop experiment (production vs
candidate); then every running experiment is decided. The watermark in the store
(`loop/state.json`) moves only when retraining succeeded, so a failed or repeated run is safe.
Exits 1 if any user failed to train (they are retried by the next run).
"""

from __future__ import annotations

import sys
from pathlib import Path

# The job's working directory (this repo, uploaded by `--working-dir .`) provides `pstyle`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pstyle.config import LoopConfig  # noqa: E402
from pstyle.distributed.feedback_loop import run_loop  # noqa: E402
from pstyle.distributed.job_args import parse_job  # noqa: E402

if __name__ == "__main__":
    job, _ = parse_job(LoopConfig, doc=__doc__)
    sys.exit(1 if run_loop(job)["failed"] else 0)
