"""Ray job: multi-objective hyperparameter search of the base model (issue 5).

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python ray_jobs/tune_base.py --config tune.yaml --store s3://bucket/pstyle

Also runs directly (`python ray_jobs/tune_base.py ...`). Thin on purpose: it is `pstyle tune` with
the same flags (see `pstyle tune --help`); all logic lives in `pstyle.tuning`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The job's working directory (this repo, uploaded by `--working-dir .`) provides `pstyle`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pstyle.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.argv[1:1] = ["tune"]
    main()
