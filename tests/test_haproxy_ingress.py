"""The only Ingress replica killed under load, behind Serve's HAProxy ingress (a private Ray started
with `HAPROXY_INGRESS_ENV`, so in its own module: a Ray started without it cannot be reused)."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from conftest import make_bucket

from pstyle.bench.chaos import FRONT_500, chaos_app, ingress_killed, warm_up
from pstyle.bench.loopback_s3 import LOOPBACK_ENV


def test_behind_haproxy_a_killed_ingress_fails_only_calls_before_its_replacement_and_loses_no_rating(
    s3_server: str, tmp_path: Path
) -> None:
    """Behind Serve's HAProxy ingress (`HAPROXY_INGRESS_ENV`) a killed Ingress replica costs only the
    calls HAProxy could not replay (it replays only a request it had wholly read before forwarding
    it): connection errors, 503s, or HAProxy's own 500 page. Serve itself never answers 500, every
    call after the replacement's first answer succeeds, and the replacement replays the dead
    replica's spool."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in LOOPBACK_ENV.items():
            env.setenv(name, value)
        with chaos_app(s3_server, make_bucket(s3_server), tmp_path, users=3, haproxy=True) as target:
            *warm, _ = warm_up(target)
            # what tells an error Serve wrote from HAProxy's own page
            missing = requests.get(f"{target.url}/v1/no-such-route", timeout=30)
            assert missing.status_code == 404 and "x-request-id" in missing.headers, missing.headers
            row = ingress_killed(target, warm, flush_s=0.5, front="HAProxy")
    assert set(row["statuses"]) <= {200, 503, 0, FRONT_500} and row["statuses"].get(200, 0) > 0, row
    assert row["failed_after_recovery"] == 0, row
    assert row["recovery_s"] is not None and row["recovery_s"] < 30, row
    assert row["ratings_at_risk"] > 0 and row["lost"] == 0, row  # the replacement replayed the spool
