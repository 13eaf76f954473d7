r"""Ray job: data-parallel base training on Ray Train.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python ray_jobs/train_base.py --data /shared/data --store s3://bucket/pstyle \
        --name base-2024-06 --workers 4 --gpu --set train.steps=20000

Flags are the fields of `pstyle.config.TrainJob` (the same as `pstyle train-base --ray`); --config
and --set give the model's PStyleConfig. Submitting the same --name and --store again resumes from
the run's latest checkpoint; the result is published as base --model-name, alias `candidate`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The job's working directory (this repo, uploaded by `--working-dir .`) provides `pstyle`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pstyle.config import PStyleConfig, TrainJob  # noqa: E402
from pstyle.distributed.job_args import parse_job  # noqa: E402
from pstyle.distributed.train import run_base_training  # noqa: E402

if __name__ == "__main__":
    job, config = parse_job(TrainJob, PStyleConfig, doc=__doc__)
    run_base_training(config, job)
