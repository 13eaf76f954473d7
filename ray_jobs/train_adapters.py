"""Ray job: fine-tune and publish many users' adapters on Ray Train (issue 6).

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python ray_jobs/train_adapters.py --base base@production --users manifests/june.json \
        --store s3://bucket/pstyle --workers 4 --name adapters-june

Also runs directly (`python ray_jobs/train_adapters.py ...`). Thin on purpose: it is
`pstyle personalize --ray` with the same flags (see `pstyle personalize --help`); all logic lives in
`pstyle.adapter_jobs`. --users is a manifest key in the store, a local manifest file, or a local
folder of users (<dir>/<user>/*.png), uploaded first. Each adapter is published as a new version of
its user with the alias `candidate`; the summary is written to jobs/adapters/<name>/summary.json in
the store. Submitting the same --name again skips users already done.
"""

from __future__ import annotations

import sys
from pathlib import Path

# The job's working directory (this repo, uploaded by `--working-dir .`) provides `pstyle`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pstyle.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.argv[1:1] = ["personalize", "--ray"]
    main()
