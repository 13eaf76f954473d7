"""The only Ingress replica killed under load, behind Serve's HAProxy ingress (a private Ray started
with `HAPROXY_INGRESS_ENV`, so in its own module: a Ray started without it cannot be reused)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_bucket

from pstyle.bench.chaos import chaos_app, ingress_killed, warm_up
from pstyle.bench.loopback_s3 import LOOPBACK_ENV


def test_behind_haproxy_a_killed_ingress_costs_no_500_and_its_buffered_ratings_land(
    s3_server: str, tmp_path: Path
) -> None:
    """Serve's HAProxy ingress (`HAPROXY_INGRESS_ENV`) retries the calls that were inside the
    Ingress replica when it died, so clients see 200s, connection errors or 503s, never a 500;
    the replacement replays the dead replica's spool."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in LOOPBACK_ENV.items():
            env.setenv(name, value)
        with chaos_app(s3_server, make_bucket(s3_server), tmp_path, users=3, haproxy=True) as target:
            *warm, _ = warm_up(target)
            row = ingress_killed(target, warm, flush_s=0.5, front="HAProxy")
    assert set(row["statuses"]) <= {200, 503, 0} and row["statuses"].get(200, 0) > 0, row
    assert row["recovery_s"] is not None and row["recovery_s"] < 30, row
    assert row["ratings_at_risk"] > 0 and row["lost"] == 0, row  # the replacement replayed the spool
