r"""Ray job: fine-tune and publish many users' adapters on Ray Data actors.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python ray_jobs/train_adapters.py --base base@production --users manifests/june.json \
        --store s3://bucket/pstyle --workers 4 --name adapters-june --set steps=200

Flags are the fields of `pstyle.config.AdapterJobConfig` (the same as `pstyle personalize --ray`);
--config and --set give the adapter recipe, a PersonalizeConfig. --users is a manifest key in the
store, a local manifest file, or a local folder of users (<dir>/<user>/*.png), uploaded first. Each
adapter is published as a new version of its user with the alias `candidate`; the summary is written
to jobs/adapters/<name>/summary.json in the store. Submitting the same --name again skips users
already done. Exits 1 if any user failed to train.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The job's working directory (this repo, uploaded by `--working-dir .`) provides `pstyle`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pstyle.config import AdapterJobConfig, PersonalizeConfig  # noqa: E402
from pstyle.distributed.adapter_jobs import run_adapter_job  # noqa: E402
from pstyle.distributed.job_args import parse_job  # noqa: E402

if __name__ == "__main__":
    job, recipe = parse_job(AdapterJobConfig, PersonalizeConfig, doc=__doc__)
    sys.exit(1 if run_adapter_job(job, recipe)["failed"] else 0)
