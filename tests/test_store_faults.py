"""Store faults under load, on the real app (local Ray, Serve over loopback, moto_server behind a
fault proxy): `pstyle chaos`'s scenarios, short."""

from __future__ import annotations

import pytest
import requests
from conftest import make_bucket

from pstyle.bench.chaos import chaos_app, s3_outage, s3_slow, stylize
from pstyle.bench.loopback_s3 import LOOPBACK_ENV


@pytest.fixture(scope="module")
def target(s3_server: str, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - a chaos Target
    with pytest.MonkeyPatch.context() as env:
        for name, value in LOOPBACK_ENV.items():
            env.setenv(name, value)
        bucket = make_bucket(s3_server)
        with chaos_app(s3_server, bucket, tmp_path_factory.mktemp("chaos"), users=3) as target:
            for user in ("user0000", "user0001"):
                call, _ = stylize(requests.Session(), target, user)
                assert call.status == 200, call
            yield target


def test_s3_down_cached_users_keep_working_cold_ones_get_503_and_no_rating_is_lost(target) -> None:
    row = s3_outage(target, ["user0000", "user0001"], "user0002", down_s=5.0, lead_s=1.0)
    assert set(row["statuses_during"]) == {200}, row  # warm users never noticed
    assert row["statuses_during"][200] >= 4, row
    assert 500 not in row["cold_statuses"] and row["cold_statuses"].get(503, 0) >= 2, row  # with Retry-After
    assert row["recovery_s"] is not None and row["recovery_s"] < 10, row
    assert row["ratings_acknowledged"] >= 4 and row["lost"] == 0, row


def test_a_slow_store_never_holds_up_cached_users(target) -> None:
    """Every chunk sent to S3 waits 2 s; the aliases, key records and experiments cached users need are
    re-read in the background and their outputs are kept after the response, so no request waits."""
    row = s3_slow(target, ["user0000", "user0001"], delay_s=2.0, phase_s=5.0)
    assert set(row["statuses"]) == {200}, row
    assert row["max_ms"] < 2000, row


def test_a_killed_ingress_is_replaced_and_its_buffered_ratings_land(target) -> None:
    from pstyle.bench.chaos import ingress_killed

    row = ingress_killed(target, ["user0000", "user0001"], flush_s=0.5)
    assert set(row["statuses"]) <= {200, 500, 503, 0}, row
    # Serve's proxy answers 500 for a request inside the ingress when it dies (Ray maps RayActorError
    # to 500 there): at most the two clients' calls in flight; every later one waits for the replacement.
    assert row["statuses"].get(500, 0) <= 2 and row["statuses"].get(200, 0) > 0, row
    assert row["recovery_s"] is not None and row["recovery_s"] < 30, row
    assert row["ratings_at_risk"] > 0 and row["lost"] == 0, row  # the replacement replayed the spool
