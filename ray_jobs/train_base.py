"""Ray job: data-parallel base training on Ray Train (issue 6).

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python ray_jobs/train_base.py --data /shared/data --store s3://bucket/pstyle \
        --name base-2024-06 --workers 4 --gpu --set train.steps=20000

Also runs directly (`python ray_jobs/train_base.py ...`). Thin on purpose: it is
`pstyle train-base --ray` with the same flags (see `pstyle train-base --help`); all logic lives in
`pstyle.train_ray`. Submitting the same --name and --store again resumes from the run's latest
checkpoint; the result is published to the registry as base --model-name, alias `candidate`.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The job's working directory (this repo, uploaded by `--working-dir .`) provides `pstyle`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pstyle.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.argv[1:1] = ["train-base", "--ray"]
    main()
