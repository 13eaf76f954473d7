"""Store faults under load, on the real app (local Ray, Serve over loopback, moto_server behind a
fault proxy): `pstyle chaos`'s scenarios, short."""

from __future__ import annotations

import pytest
from conftest import make_bucket

from pstyle.bench.chaos import chaos_app, s3_outage, s3_slow, warm_up
from pstyle.bench.loopback_s3 import LOOPBACK_ENV


@pytest.fixture(scope="module")
def target(s3_server: str, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - a chaos Target
    with pytest.MonkeyPatch.context() as env:
        for name, value in LOOPBACK_ENV.items():
            env.setenv(name, value)
        bucket = make_bucket(s3_server)
        with chaos_app(s3_server, bucket, tmp_path_factory.mktemp("chaos"), users=3) as target:
            warm_up(target)  # user0000 and user0001; user0002 stays cold
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
