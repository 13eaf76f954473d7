"""The ingress's mapping of generator failures to HTTP answers, without Ray: a replica's death is
retried once, then a 503 with Retry-After; a full queue is a 503; nothing of Ray's becomes a 500."""

from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError

from pstyle.serving.replica import StylizeRequest, StylizeResult
from serve.app import ApiError, Ingress

DEATHS = [RayActorError(), ActorDiedError(), ActorUnavailableError("node gone", b"0" * 16)]


class Count:
    def __init__(self) -> None:
        self.n = 0

    def inc(self, value: float = 1.0, tags: dict | None = None) -> None:
        self.n += 1


class Generator:
    """A handle whose calls have the given outcomes, in order (an exception is raised)."""

    def __init__(self, *outcomes: object) -> None:
        self.outcomes, self.calls = list(outcomes), 0

    def options(self, **_: object) -> Generator:
        return self

    @property
    def stylize(self) -> Generator:
        return self

    def remote(self, _: StylizeRequest) -> object:
        self.calls += 1
        outcome = self.outcomes.pop(0)

        async def answer() -> object:
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return answer()


def ingress(generator: Generator) -> Ingress:
    """The ingress class as written (under Serve's ASGI wrapper), with the parts `_render` uses."""
    cls = Ingress.func_or_class.__mro__[1]
    this = cls.__new__(cls)
    this.generator, this.config = generator, type("C", (), {"multiplex_by": "user", "shards": 1})()
    this.replica_failures, this.errors = Count(), Count()
    return this


def render(this: Ingress) -> StylizeResult:
    return asyncio.run(this._render("alice", StylizeRequest("alice", image=None)))


@pytest.mark.parametrize("death", DEATHS, ids=lambda e: type(e).__name__)
def test_a_replica_death_is_retried_once(death: Exception) -> None:
    done = StylizeResult(None, version=1)
    this = ingress(Generator(death, done))
    assert render(this) is done
    assert this.generator.calls == 2 and this.replica_failures.n == 1


@pytest.mark.parametrize("death", DEATHS, ids=lambda e: type(e).__name__)
def test_a_second_death_is_a_503_with_retry_after(death: Exception) -> None:
    this = ingress(Generator(death, death))
    with pytest.raises(ApiError) as error:
        render(this)
    assert error.value.status == 503 and int(error.value.headers["Retry-After"]) > 0
    assert this.replica_failures.n == 2 and this.errors.n == 1


def test_a_full_queue_is_a_503_with_retry_after() -> None:
    this = ingress(Generator(BackPressureError(num_queued_requests=9, max_queued_requests=8)))
    with pytest.raises(ApiError) as error:
        render(this)
    assert error.value.status == 503 and error.value.headers["Retry-After"] == "1"
    assert this.generator.calls == 1  # overload is not retried: that would add to it
