"""The pstyle Ray Serve application: a FastAPI ingress and a generator deployment.

    Ingress (FastAPI, stateless)   auth, upload validation, A/B assignment, events, image ids
      └─ StyleReplica (autoscaled) one base model + an AdapterBank per replica; @serve.batch mixes users

Batching across users: Serve's @serve.batch splits a batch per multiplexed model id, so the adapter
travels inside the request and the replica applies per-sample adapters itself (pstyle.serving.replica).
The multiplexed id is the user's *shard* (users hashed into `shards` buckets): routing then prefers
replicas that already served that shard (adapter locality) while one batch still mixes all the
shard's users. `multiplex_by: user` gives Serve's per-model-id batching, for comparison.

No `from __future__ import annotations` here: FastAPI must see real classes (Request) in the route
signatures of the ingress class.

Run: `serve run serve/config.yaml` (or `serve deploy`); everything that may change at run time is the
deployments' `user_config` (a pstyle.config.ServeConfig).
"""

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import time
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from ray.util import metrics

from pstyle.config import ServeConfig
from pstyle.images import ImageError, image_to_bytes, mask_to_tensor, open_image
from pstyle.ratings import parse_rating
from pstyle.serving.api_keys import ApiKeys, AuthError, Principal
from pstyle.serving.experiments import Experiment, ExperimentStore, Variant, assign, report
from pstyle.serving.regions import REGIONS
from pstyle.serving.replica import AdapterServer, StylizeRequest, StylizeResult, prepare_image
from pstyle.serving.signed_ids import ImageIds, load_secret
from pstyle.store import open_store
from pstyle.store.events import EventLog
from pstyle.store.registry import Registry, describe

FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class ApiError(Exception):
    """Anything the client did wrong or cannot have: becomes `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def shard_of(user_id: str, shards: int) -> str:
    return f"shard-{int(hashlib.sha256(user_id.encode()).hexdigest(), 16) % shards:04d}"


@serve.deployment(
    max_ongoing_requests=32,
    max_queued_requests=64,
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16},
    health_check_period_s=5,
)
class StyleReplica:
    """One base generator and many users' adapters; batches requests of any users together."""

    def __init__(self) -> None:
        self.server: AdapterServer | None = None
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = ServeConfig.from_dict(user_config)
        old = self.server.config if self.server else None
        if old is None or (old.store, old.base, old.base_ref) != (config.store, config.base, config.base_ref):
            self.server = AdapterServer(config, self.device)
        else:
            self.server.reconfigure(config)
        self.render.set_max_batch_size(config.max_batch_size)
        self.render.set_batch_wait_timeout_s(config.batch_wait_timeout_s)

    @serve.multiplexed(max_num_models_per_replica=100_000)
    async def locality(self, model_id: str) -> str:
        """Nothing to load per id (adapters load lazily per user): registering the id is what makes
        Serve route that shard's requests back to this replica."""
        return model_id

    async def stylize(self, request: StylizeRequest) -> StylizeResult:
        await self.locality(serve.get_multiplexed_model_id())
        return await self.render(request)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def render(self, requests: list[StylizeRequest]) -> list[StylizeResult]:
        return await asyncio.to_thread(self.server.run, requests)

    def stats(self) -> dict[str, float]:
        return {**self.server.stats(), "base_version": self.server.base_version}

    def check_health(self) -> None:
        if self.server is None:
            raise RuntimeError("base model not loaded")


app = FastAPI(
    title="pstyle",
    description="Personalized style transfer: each user's images rendered with their own adapter.",
    version="1",
)


@app.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)


@serve.deployment(
    max_ongoing_requests=64,
    max_queued_requests=128,
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 32},
    graceful_shutdown_timeout_s=10,
)
@serve.ingress(app)
class Ingress:
    """HTTP front door: who is calling, what they sent, which adapter variant they get."""

    def __init__(self, generator: DeploymentHandle) -> None:
        self.generator = generator
        self.events: EventLog | None = None
        self.exposures = metrics.Counter(
            "pstyle_exposures", "stylized images per experiment variant", tag_keys=("experiment", "variant")
        )
        self.errors = metrics.Counter("pstyle_errors", "failed stylize requests", tag_keys=("status",))
        self.latency = metrics.Histogram(
            "pstyle_latency_ms",
            "stylize latency per variant",
            boundaries=[5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000],
            tag_keys=("experiment", "variant"),
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.config = ServeConfig.from_dict(user_config)
        store = open_store(self.config.store)
        if self.events is not None:
            self.events.close()
        self.store = store
        self.keys = ApiKeys(store)
        self.experiments = ExperimentStore(store)
        self.registry = Registry(store)
        self.image_ids = ImageIds(load_secret(store))
        self.events = EventLog(store, flush_interval_s=self.config.event_flush_s, background=True)

    def __del__(self) -> None:
        """Graceful shutdown: buffered events reach the store."""
        if getattr(self, "events", None) is not None:
            self.events.close()

    # ---- helpers ----------------------------------------------------------------------------

    def _principal(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        key = header.removeprefix("Bearer ").strip() if header else request.headers.get("x-api-key")
        try:
            return self.keys.authenticate(key)
        except AuthError as exc:
            raise ApiError(401, str(exc), {"WWW-Authenticate": "Bearer"}) from None

    def _admin(self, request: Request) -> Principal:
        principal = self._principal(request)
        if not principal.admin:
            raise ApiError(403, "admin key required")
        return principal

    async def _upload(self, request: Request) -> dict[str, Any]:
        """Fields and file bytes from multipart or JSON (base64), with the size cap enforced."""
        cap = self.config.max_upload_bytes
        if int(request.headers.get("content-length") or 0) > cap + 64 * 1024:
            raise ApiError(413, f"upload larger than {cap} bytes")
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            form = await request.form(max_files=2, max_fields=10)
            fields: dict[str, Any] = {}
            for name, value in form.items():
                fields[name] = await value.read() if hasattr(value, "read") else value
            return fields
        if kind.startswith("application/json"):
            try:
                body = await request.json()
                fields = dict(body)
                for name in ("image", "mask"):
                    if fields.get(name) is not None:
                        fields[name] = base64.b64decode(fields[name], validate=True)
            except (ValueError, TypeError, binascii.Error) as exc:
                raise ApiError(400, f"malformed JSON body: {exc}") from None
            return fields
        raise ApiError(415, "send multipart/form-data (field 'image') or application/json (base64 'image')")

    def _variant(self, user_id: str) -> tuple[Experiment | None, Variant | None]:
        for experiment in self.experiments.active_for(user_id):
            variant = assign(experiment, user_id)
            if variant is not None:
                return experiment, variant
        return None, None

    def _record(self, kind: str, user_id: str, **fields: Any) -> None:
        self.events.append(kind, user_id, **fields)

    # ---- API --------------------------------------------------------------------------------

    @app.post("/v1/stylize", responses={200: {"content": {m: {} for m in FORMATS.values()}}})
    async def stylize(self, request: Request) -> Response:
        """Render the uploaded image with the caller's adapter. Fields: image (file), mask (file,
        with region=mask), strength (0-1), seed, region (all|subject|background|mask), size, format."""
        t0 = time.perf_counter()
        user = self._principal(request).user_id
        fields = await self._upload(request)
        req, fmt = self._parse(user, fields)
        experiment, variant = self._variant(user)
        if variant is not None:
            req.ref = variant.ref
        tags = {
            "experiment": experiment.name if experiment else "-",
            "variant": variant.name if variant else "-",
        }
        try:
            result: StylizeResult = await self.generator.options(
                multiplexed_model_id=self._model_id(user)
            ).stylize.remote(req)
        except BackPressureError:
            self.errors.inc(tags={"status": "503"})
            raise ApiError(503, "overloaded, retry shortly", {"Retry-After": "1"}) from None
        latency_ms = 1e3 * (time.perf_counter() - t0)
        if experiment is not None:
            self.exposures.inc(tags=tags)
            self.latency.observe(latency_ms, tags=tags)
            self._record("exposure", user, **tags, adapter_version=result.version, latency_ms=latency_ms,
                         error=result.error is not None)  # fmt: skip
        if result.error is not None:
            self.errors.inc(tags={"status": "404"})
            raise ApiError(404, f"{result.error}; train one with `pstyle personalize` (see /docs)")
        image_id = self.image_ids.issue(user=user, version=result.version, **tags)
        headers = {
            "X-Adapter-Version": str(result.version),
            "X-Experiment": tags["experiment"],
            "X-Variant": tags["variant"],
            "X-Image-Id": image_id,
        }
        return Response(image_to_bytes(result.image, fmt), media_type=FORMATS[fmt], headers=headers)

    def _model_id(self, user: str) -> str:
        return user if self.config.multiplex_by == "user" else shard_of(user, self.config.shards)

    def _parse(self, user: str, fields: dict[str, Any]) -> tuple[StylizeRequest, str]:
        image = fields.get("image")
        if not isinstance(image, bytes):
            raise ApiError(400, "missing image: send the file as field 'image'")
        if len(image) > self.config.max_upload_bytes:
            raise ApiError(413, f"image larger than {self.config.max_upload_bytes} bytes")
        try:
            strength = float(fields.get("strength", 1.0))
            seed = int(fields.get("seed", 0))
            size = int(fields.get("size", self.config.size))
        except (TypeError, ValueError):
            raise ApiError(400, "strength must be a number, seed and size integers") from None
        region, fmt = str(fields.get("region", "all")), str(fields.get("format", "png")).lower()
        if not 0.0 <= strength <= 1.0:
            raise ApiError(400, f"strength must be in [0, 1], got {strength}")
        if region not in REGIONS:
            raise ApiError(400, f"region must be one of {', '.join(REGIONS)}, got {region!r}")
        if fmt not in FORMATS:
            raise ApiError(400, f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        try:
            content = prepare_image(image, "image", size, self.config)
            mask = None
            if region == "mask":
                if not isinstance(fields.get("mask"), bytes):
                    raise ApiError(400, "region=mask needs a mask file in field 'mask'")
                mask_image = open_image(
                    fields["mask"], "mask", max_pixels=self.config.max_pixels, single_frame=True
                )
                mask = mask_to_tensor(mask_image)  # fitted to the content by `region_masks`
        except ImageError as exc:
            raise ApiError(400, str(exc)) from None
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        return StylizeRequest(user, content, self.config.adapter_alias, strength, seed, region, mask), fmt

    @app.post("/v1/feedback")
    async def feedback(self, request: Request) -> dict[str, Any]:
        """Rate an image you received: {"image_id": ..., "rating": 1-5}."""
        user = self._principal(request).user_id
        try:
            body = await request.json()
            image_id, rating = body["image_id"], parse_rating(body["rating"])
        except (ValueError, KeyError, TypeError):
            raise ApiError(400, 'send JSON {"image_id": "...", "rating": 1-5}') from None
        if rating is None:
            raise ApiError(400, f'rating must be 1-5, "up" or "down", got {body["rating"]!r}')
        try:
            issued = self.image_ids.verify(image_id)
        except ValueError:
            issued = None
        if issued is None or issued.get("user") != user:
            raise ApiError(404, "unknown image id")  # another user's id looks exactly like a forged one
        self._record("feedback", user, image_id=image_id, rating=rating, adapter_version=issued["version"],
                     experiment=issued["experiment"], variant=issued["variant"])  # fmt: skip
        return {"status": "recorded"}

    @app.get("/v1/me/adapters")
    async def my_adapters(self, request: Request) -> dict[str, Any]:
        user = self._principal(request).user_id
        numbers = self.registry.versions("adapter", user)
        versions = [self.registry.get("adapter", user, n) for n in numbers]
        return {"user": user, "versions": describe(versions, self.registry.aliases("adapter", user))}

    @app.get("/v1/health/live")
    async def live(self) -> dict[str, str]:
        return {"status": "live"}

    @app.get("/v1/health/ready")
    async def ready(self) -> JSONResponse:
        try:
            stats = await asyncio.wait_for(self.generator.stats.remote(), timeout=5)
        except Exception as exc:  # no replica, a replica without a model, a timeout: not ready
            return JSONResponse({"status": "not ready", "reason": repr(exc)}, status_code=503)
        return JSONResponse({"status": "ready", "base_version": stats["base_version"]})

    @app.get("/v1/admin/stats")
    async def stats(self, request: Request) -> dict[str, Any]:
        """One generator replica's adapter-cache counters (hit rate, cold loads)."""
        self._admin(request)
        return await self.generator.stats.remote()

    @app.post("/v1/admin/experiments")
    async def create_experiment(self, request: Request) -> dict[str, Any]:
        """{"name", "variants": [{"name", "ref", "weight"}], "percent", "users"}"""
        self._admin(request)
        try:
            experiment = Experiment.from_dict(await request.json())
            self.experiments.create(experiment)
        except (ValueError, KeyError, TypeError, FileExistsError) as exc:
            raise ApiError(400, f"bad experiment: {exc}") from None
        return experiment.to_dict()

    @app.post("/v1/admin/experiments/{name}/stop")
    async def stop_experiment(self, name: str, request: Request) -> dict[str, Any]:
        self._admin(request)
        return self._existing(lambda: self.experiments.stop(name)).to_dict()

    @app.get("/v1/admin/experiments/{name}/report")
    async def experiment_report(self, name: str, request: Request) -> dict[str, Any]:
        self._admin(request)
        self.events.flush()
        return self._existing(lambda: report(self.store, name))

    @staticmethod
    def _existing(call: Any) -> Any:
        try:
            return call()
        except (FileNotFoundError, KeyError, ValueError) as exc:
            raise ApiError(404, str(exc)) from None


def build_app(config: ServeConfig | None = None, **generator_options: Any) -> serve.Application:
    """The application with `config` as both deployments' user_config; `generator_options` override the
    generator deployment's (e.g. max_ongoing_requests) for tests and benchmarks."""
    user_config = dataclasses.asdict(config or ServeConfig())
    generator = StyleReplica.options(user_config=user_config, **generator_options).bind()
    return Ingress.options(user_config=user_config).bind(generator)


entrypoint = build_app()  # the import path in serve/config.yaml: serve.app:entrypoint
