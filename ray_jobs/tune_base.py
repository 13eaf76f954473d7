r"""Ray job: multi-objective hyperparameter search of the base model.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python ray_jobs/tune_base.py --config tune.yaml --store s3://bucket/pstyle

Flags are the `flag` fields of `pstyle.config.TuneConfig` (the same as `pstyle tune`); --config and
--set fill the rest of that TuneConfig. The search is `pstyle.distributed.tune.run_search`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The job's working directory (this repo, uploaded by `--working-dir .`) provides `pstyle`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pstyle.config import TuneConfig  # noqa: E402
from pstyle.distributed.job_args import parse_job  # noqa: E402
from pstyle.distributed.tune import run_search  # noqa: E402

if __name__ == "__main__":
    config, _ = parse_job(TuneConfig, doc=__doc__)
    run_search(config)
