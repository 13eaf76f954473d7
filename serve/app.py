"""The pstyle Ray Serve application: a FastAPI ingress and a generator deployment.

    Ingress (FastAPI, stateless)   auth, upload validation, A/B assignment, events, image ids
      ├─ StyleReplica (autoscaled) one base model + an AdapterBank per replica; @serve.batch mixes users
      └─ Personalizer (1 replica)  admits personalization jobs (bounded FIFO) and runs them as Ray tasks

The ingress's event loop only awaits: body parsing, decoding, encoding, key checks and store I/O run
in threads (`asyncio.to_thread`). Large uploads are parsed and decoded in a pool of `large_decodes`
idle-class threads (pstyle.serving.background), so they never stall the small requests behind them.

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
import dataclasses
import hashlib
import json
import logging
import re
import time
from typing import Any

import torch
from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPBearer
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from ray.util import metrics
from starlette.exceptions import HTTPException

from pstyle.config import ServeConfig
from pstyle.distributed.personalize_service import run_personalize_job
from pstyle.images import ImageError, image_to_bytes, mask_to_tensor, open_image, to_tensor
from pstyle.ratings import parse_rating
from pstyle.serving.api_keys import ApiKeys, AuthError, Principal
from pstyle.serving.background import background_pool
from pstyle.serving.decisions import decide
from pstyle.serving.experiments import (
    Experiment,
    ExperimentError,
    ExperimentStore,
    Variant,
    assign,
    promote,
    report,
)
from pstyle.serving.kept_outputs import KeptOutputs
from pstyle.serving.personalize_jobs import JobQueue, JobRecords, JobRefused, PersonalizeJob, new_job
from pstyle.serving.regions import REGIONS
from pstyle.serving.replica import STORE_DOWN, AdapterServer, StylizeRequest, StylizeResult, prepare_image
from pstyle.serving.signed_ids import ImageIds, load_secret
from pstyle.serving.style_sets import (
    MAX_STYLE_IMAGES,
    StyleSetError,
    StyleSets,
    decode_styles,
    outputs_prefix,
)
from pstyle.serving.upload_form import FormError, parse_form
from pstyle.serving.web_ui import SECURITY_HEADERS, ui_file
from pstyle.store import StoreError, open_store
from pstyle.store.event_spool import spool_folder
from pstyle.store.events import EventLog
from pstyle.store.layout import adapter_progress_key
from pstyle.store.registry import Registry, describe

log = logging.getLogger("ray.serve")  # replica logs: Serve ships them to its log files
FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
MAX_REQUEST_STYLES = 4  # style files one stylize request may carry (zero-shot override)
STYLE_IMAGE_ID = re.compile(r"[0-9a-f]{64}")  # a style image's id: the sha256 of its PNG
bearer = HTTPBearer(auto_error=False, description="your API key (psk.<user>.<secret>); or header X-API-Key")
AUTH = [Security(bearer)]  # documents the scheme in /docs; the key itself is checked by ApiKeys


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
        server = self.server
        return {**server.stats(), "base_version": server.base_version, "base_variant": server.variant}

    def check_health(self) -> None:
        if self.server is None:
            raise RuntimeError("base model not loaded")


app = FastAPI(
    title="pstyle",
    description=(
        "Personalized style transfer. Upload your style images (PUT /v1/me/styles) and stylize photos at "
        "once with the base model; ask for personalization (POST /v1/me/personalize) and your own adapter "
        "serves you when it is ready. Rate results (POST /v1/feedback) and they shape your next adapter."
    ),
    version="1",
)


@app.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)


@app.exception_handler(HTTPException)
async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    """FastAPI's own 404/405/... in the API's one error shape."""
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)


@app.exception_handler(StoreError)
async def _store_error(_: Request, exc: StoreError) -> JSONResponse:
    """The store is unreachable (or refusing): the request may succeed later, so 503, never 500."""
    log.warning("store error: %s", exc)
    return JSONResponse({"error": STORE_DOWN}, status_code=503, headers={"Retry-After": "5"})


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return JSONResponse({"error": detail}, status_code=422)


def _multipart_schema(fields: dict[str, dict[str, Any]], required: list[str]) -> dict[str, Any]:
    """An OpenAPI request body for a multipart route (the routes read the form themselves)."""
    schema = {"type": "object", "properties": fields, "required": required}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


FILE = {"type": "string", "format": "binary"}
STYLIZE_BODY = _multipart_schema(
    {
        "image": FILE,
        "style": {"type": "array", "items": FILE, "maxItems": MAX_REQUEST_STYLES,
                  "description": "style images for this call only (zero-shot, overrides your adapter)"},
        "mask": FILE,
        "strength": {"type": "number", "minimum": 0, "maximum": 1, "default": 1},
        "seed": {"type": "integer", "default": 0},
        "region": {"type": "string", "enum": list(REGIONS), "default": "all"},
        "size": {"type": "integer"},
        "format": {"type": "string", "enum": list(FORMATS), "default": "png"},
    },
    ["image"],
)  # fmt: skip
STYLES_BODY = _multipart_schema(
    {"style": {"type": "array", "items": FILE, "minItems": 1, "maxItems": MAX_STYLE_IMAGES}}, ["style"]
)
FEEDBACK_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["image_id", "rating"],
                    "properties": {
                        "image_id": {"type": "string", "description": "X-Image-Id of a stylize answer"},
                        "rating": {"oneOf": [{"type": "integer", "minimum": 1, "maximum": 5},
                                             {"type": "string", "enum": ["up", "down"]}]},
                    },
                }
            }
        },
    }
}  # fmt: skip


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
class Personalizer:
    """Admits personalization jobs (one live job per user, a bounded queue) and runs each as a Ray
    task; one replica, so the queue has one owner. The jobs' records live in the store."""

    def __init__(self) -> None:
        self.queue: JobQueue | None = None
        self.watchers: set[asyncio.Task] = set()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.user_config = user_config
        self.config = ServeConfig.from_dict(user_config)
        store = open_store(self.config.store)
        self.records, self.style_sets = JobRecords(store), StyleSets(store)
        if self.queue is None:
            self.queue = JobQueue(self.config.max_personalize_jobs)
        self.queue.capacity = self.config.max_personalize_jobs

    async def submit(self, user_id: str) -> dict[str, Any]:
        """The queued job, or {"refused": {"status", "error", "retry_after_s"}} when it cannot be taken."""
        style_set = await asyncio.to_thread(self.style_sets.get, user_id)
        try:
            if style_set is None:
                raise JobRefused(409, "no style set to learn from: PUT your style images to /v1/me/styles")
            job = self.queue.submit(new_job(user_id, style_set.digest))
        except JobRefused as exc:
            return {
                "refused": {"status": exc.status, "error": exc.message, "retry_after_s": exc.retry_after_s}
            }
        await asyncio.to_thread(self.records.save, job)
        self._start_ready()
        return job.to_dict()

    def _start_ready(self) -> None:
        while (job := self.queue.start_next(self.config.max_running_personalize_jobs)) is not None:
            watcher = asyncio.get_running_loop().create_task(self._watch(job))
            self.watchers.add(watcher)
            watcher.add_done_callback(self.watchers.discard)

    async def _watch(self, job: PersonalizeJob) -> None:
        try:
            await run_personalize_job.remote(self.user_config, job.to_dict())
        except Exception as exc:  # the task itself died (worker lost): the record says so
            job.state, job.error, job.finished = "failed", f"job lost: {exc!r}"[:500], time.time()
            await asyncio.to_thread(self.records.save, job)
        finally:
            self.queue.finished(job)
            self._start_ready()


@serve.deployment(
    max_ongoing_requests=64,
    max_queued_requests=128,
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 32},
    graceful_shutdown_timeout_s=10,
    health_check_period_s=2,  # a dead ingress is noticed and replaced in seconds (its check is trivial)
)
@serve.ingress(app)
class Ingress:
    """HTTP front door: who is calling, what they sent, which adapter variant they get."""

    def __init__(self, generator: DeploymentHandle, personalizer: DeploymentHandle) -> None:
        self.generator, self.personalizer = generator, personalizer
        self.events: EventLog | None = None
        self.exposures = metrics.Counter(
            "pstyle_exposures", "stylized images per experiment variant", tag_keys=("experiment", "variant")
        )
        self.errors = metrics.Counter("pstyle_errors", "failed stylize requests", tag_keys=("status",))
        self.replica_failures = metrics.Counter(
            "pstyle_replica_failures", "stylize calls whose generator replica died mid-request"
        )
        self.latency = metrics.Histogram(
            "pstyle_latency_ms",
            "stylize latency per variant",
            boundaries=[5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000],
            tag_keys=("experiment", "variant"),
        )

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.config = ServeConfig.from_dict(user_config)
        store = open_store(self.config.store, interactive=True)
        if self.events is not None:
            self.events.close()
        self.store = store
        grace = self.config.stale_if_error_s
        self.keys = ApiKeys(store, ttl_s=self.config.auth_ttl_s, max_stale_s=grace)
        self.experiments = ExperimentStore(store, max_stale_s=grace)
        self.outputs = KeptOutputs(store)
        self.registry = Registry(store)
        self.style_sets = StyleSets(store)
        self.jobs = JobRecords(store)
        self.image_ids = ImageIds(load_secret(store))
        self.large_decodes = background_pool(self.config.large_decodes, "large-decode")
        spool = spool_folder(store.uri) if self.config.event_spool else None
        flush_s = self.config.event_flush_s
        self.events = EventLog(store, flush_interval_s=flush_s, background=True, spool=spool)
        if self.events.recovered:
            log.warning("took over %d events a stopped ingress had buffered", self.events.recovered)

    def __del__(self) -> None:
        """Graceful shutdown: buffered events reach the store."""
        if getattr(self, "events", None) is not None:
            self.events.close()

    # ---- helpers ----------------------------------------------------------------------------

    async def _principal(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        key = header.removeprefix("Bearer ").strip() if header else request.headers.get("x-api-key")
        try:
            return await asyncio.to_thread(self.keys.authenticate, key)
        except AuthError as exc:
            raise ApiError(401, str(exc), {"WWW-Authenticate": "Bearer"}) from None

    async def _admin(self, request: Request) -> Principal:
        principal = await self._principal(request)
        if not principal.admin:
            raise ApiError(403, "admin key required")
        return principal

    async def _body(self, request: Request, max_bytes: int) -> bytes:
        """The whole request body, refused with 413 as soon as it passes `max_bytes` (plus room for
        the multipart framing), whatever Content-Length claimed."""
        limit = max_bytes + 64 * 1024
        if int(request.headers.get("content-length") or 0) > limit:
            raise ApiError(413, f"upload larger than {max_bytes} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"upload larger than {max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _form(self, request: Request, body: bytes, max_files: int) -> dict[str, Any]:
        """`parse_form` with its errors as ApiErrors (runs in a thread)."""
        try:
            return parse_form(body, request.headers.get("content-type", ""), max_parts=10 + max_files)
        except FormError as exc:
            raise ApiError(exc.status, str(exc)) from None

    def _variant(self, user_id: str) -> tuple[Experiment | None, Variant | None]:
        for experiment in self.experiments.active_for(user_id):
            variant = assign(experiment, user_id)
            if variant is not None:
                return experiment, variant
        return None, None

    def _record(self, kind: str, user_id: str, **fields: Any) -> None:
        self.events.append(kind, user_id, **fields)

    def _output_key(self, user: str, image_id: str) -> str:
        return f"{outputs_prefix(user)}/{hashlib.sha256(image_id.encode()).hexdigest()[:32]}.png"

    # ---- API --------------------------------------------------------------------------------

    @app.post(
        "/v1/stylize",
        dependencies=AUTH,
        openapi_extra=STYLIZE_BODY,
        responses={200: {"content": {m: {} for m in FORMATS.values()}}},
    )
    async def stylize(self, request: Request) -> Response:
        """Render `image` in your style: with your adapter when you have one, else zero-shot from your
        style set (`X-Adapter-Version: base`); `style` files sent here override both for this call."""
        t0 = time.perf_counter()
        user = (await self._principal(request)).user_id
        body = await self._body(request, self.config.max_upload_bytes)
        req, fmt = await self._decode(user, request, body)
        experiment, variant = await asyncio.to_thread(self._variant, user)
        if variant is not None and req.styles is None:
            req.ref = variant.ref
        else:
            experiment = None
        tags = {
            "experiment": experiment.name if experiment else "-",
            "variant": variant.name if experiment else "-",
        }
        result = await self._render(user, req)
        latency_ms = 1e3 * (time.perf_counter() - t0)
        if experiment is not None:
            self.exposures.inc(tags=tags)
            self.latency.observe(latency_ms, tags=tags)
            self._record("exposure", user, **tags, adapter_version=result.version, latency_ms=latency_ms,
                         error=result.error is not None)  # fmt: skip
        if result.unavailable:  # the store could not be read for a cold load
            raise self._unavailable(result.error, retry_after_s=5)
        if result.error is not None:  # nothing servable for this user (404), or a broken artifact (500)
            status = 500 if result.server_fault else 404
            self.errors.inc(tags={"status": str(status)})
            raise ApiError(status, result.error)
        image_id = self.image_ids.issue(user=user, version=result.version, **tags)
        body = await asyncio.to_thread(self._deliver, user, image_id, result, fmt)
        headers = {
            "X-Adapter-Version": str(result.version),
            "X-Experiment": tags["experiment"],
            "X-Variant": tags["variant"],
            "X-Image-Id": image_id,
        }
        return Response(body, media_type=FORMATS[fmt], headers=headers)

    async def _render(self, user: str, req: StylizeRequest) -> StylizeResult:
        """The generator's answer. A replica that dies mid-request is retried once on whichever replica
        Serve routes to (a render is idempotent: same input, seed and version give the same pixels);
        a second death, or a full queue, is a 503 with Retry-After, never a 500."""
        handle = self.generator.options(multiplexed_model_id=self._model_id(user))
        try:
            try:
                return await handle.stylize.remote(req)
            except RayActorError:
                self.replica_failures.inc()
            return await handle.stylize.remote(req)  # once more: another replica, or the replacement
        except BackPressureError:
            raise self._unavailable("overloaded, retry shortly", retry_after_s=1) from None
        except RayActorError:
            self.replica_failures.inc()
            raise self._unavailable("a generator replica failed, retry shortly", retry_after_s=2) from None

    def _unavailable(self, message: str, retry_after_s: int) -> ApiError:
        self.errors.inc(tags={"status": "503"})
        return ApiError(503, message, {"Retry-After": str(retry_after_s)})

    def _deliver(self, user: str, image_id: str, result: StylizeResult, fmt: str) -> bytes:
        """The response body; the PNG is also kept (keep_outputs, in the background) so a rating can
        train on it."""
        body = image_to_bytes(result.image, fmt)
        if self.config.keep_outputs:
            kept = body if fmt == "png" else image_to_bytes(result.image, "png")
            self.outputs.keep(self._output_key(user, image_id), kept)
        return body

    def _model_id(self, user: str) -> str:
        return user if self.config.multiplex_by == "user" else shard_of(user, self.config.shards)

    async def _decode(self, user: str, request: Request, body: bytes) -> tuple[StylizeRequest, str]:
        """The body parsed and decoded in one thread; a large one goes to the low-priority pool of
        `large_decodes` threads, so it waits there rather than taking the cores from small ones."""

        def parse_and_decode() -> tuple[StylizeRequest, str]:
            return self._parse(user, self._form(request, body, 2 + MAX_REQUEST_STYLES))

        if len(body) > self.config.large_upload_bytes:
            return await asyncio.get_running_loop().run_in_executor(self.large_decodes, parse_and_decode)
        return await asyncio.to_thread(parse_and_decode)

    def _parse(self, user: str, fields: dict[str, Any]) -> tuple[StylizeRequest, str]:
        """The request to render and the output format (runs in a thread: it decodes images)."""
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
            styles, digest = self._request_styles(fields.get("style") or [])
        except (ImageError, StyleSetError) as exc:
            raise ApiError(400, str(exc)) from None
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        req = StylizeRequest(user, content, self.config.adapter_alias, strength, seed, region, mask)
        req.styles, req.styles_digest = styles, digest
        return req, fmt

    def _request_styles(self, files: list[tuple[str, bytes]]) -> tuple[torch.Tensor | None, str]:
        """Style files sent with a stylize request, as an encoder batch, and their cache digest."""
        if not files:
            return None, ""
        images = decode_styles(files, self.config.max_pixels, MAX_REQUEST_STYLES)
        digest = hashlib.sha256(b"".join(hashlib.sha256(data).digest() for _, data in files)).hexdigest()[:32]
        return torch.stack([to_tensor(im, self.config.style_size) for im in images]), f"request-{digest}"

    @app.put("/v1/me/styles", dependencies=AUTH, openapi_extra=STYLES_BODY)
    async def put_styles(self, request: Request) -> dict[str, Any]:
        """Replace your style set (1-16 images, field `style`): all of it is stored, or none."""
        user = (await self._principal(request)).user_id
        body = await self._body(request, MAX_STYLE_IMAGES * self.config.max_upload_bytes)
        fields = await asyncio.to_thread(self._form, request, body, MAX_STYLE_IMAGES + 1)
        files = fields.get("style") or []
        if any(len(data) > self.config.max_upload_bytes for _, data in files):
            raise ApiError(413, f"a style image is larger than {self.config.max_upload_bytes} bytes")
        try:
            style_set = await asyncio.to_thread(self.style_sets.put, user, files, self.config.max_pixels)
        except StyleSetError as exc:
            raise ApiError(400, str(exc)) from None
        return self._describe_set(style_set)

    @app.get("/v1/me/styles", dependencies=AUTH)
    async def get_styles(self, request: Request) -> dict[str, Any]:
        """Your current style set: its digest and its images (id = content hash, and file name)."""
        user = (await self._principal(request)).user_id
        style_set = await asyncio.to_thread(self.style_sets.get, user)
        if style_set is None:
            raise ApiError(404, "no style set yet: PUT 1-16 images (field 'style') to /v1/me/styles")
        return self._describe_set(style_set)

    @app.get("/v1/me/styles/{image_id}", dependencies=AUTH, responses={200: {"content": {"image/png": {}}}})
    async def style_image(self, image_id: str, request: Request) -> Response:
        """One image of your current style set, as PNG (its id from GET /v1/me/styles)."""
        user = (await self._principal(request)).user_id
        data = None
        if STYLE_IMAGE_ID.fullmatch(image_id):
            data = await asyncio.to_thread(self.style_sets.image, user, image_id)
        if data is None:
            raise ApiError(404, "no such image in your style set")
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/v1/me", dependencies=AUTH)
    async def me(self, request: Request) -> dict[str, Any]:
        """Who this key belongs to, and the upload limits a client can check before sending."""
        principal = await self._principal(request)
        limits = {
            "max_upload_bytes": self.config.max_upload_bytes,
            "max_pixels": self.config.max_pixels,
            "size": self.config.size,
            "max_size": self.config.max_size,
            "max_style_images": MAX_STYLE_IMAGES,
            "max_request_styles": MAX_REQUEST_STYLES,
        }
        return {"user": principal.user_id, "admin": principal.admin, "limits": limits}

    @staticmethod
    def _describe_set(style_set: Any) -> dict[str, Any]:
        images = [
            {"id": key.rsplit("/", 1)[-1].removesuffix(".png"), "name": name}
            for key, name in zip(style_set.images, style_set.names, strict=True)
        ]
        return {"set": style_set.digest, "images": images, "created": style_set.created}

    @app.post("/v1/me/personalize", dependencies=AUTH, status_code=202)
    async def personalize(self, request: Request) -> JSONResponse:
        """Train your own adapter from your style set and your ratings; poll /v1/me/jobs/{id}."""
        user = (await self._principal(request)).user_id
        job = await self.personalizer.submit.remote(user)
        if "refused" in job:
            refused = job["refused"]
            headers = {"Retry-After": str(refused["retry_after_s"])} if refused.get("retry_after_s") else None
            raise ApiError(refused["status"], refused["error"], headers)
        return JSONResponse(job, status_code=202, headers={"Location": f"/v1/me/jobs/{job['id']}"})

    @app.get("/v1/me/jobs/{job_id}", dependencies=AUTH)
    async def job(self, job_id: str, request: Request) -> dict[str, Any]:
        """One of your personalization jobs: state, progress (step/total), held-out metrics, decision."""
        user = (await self._principal(request)).user_id

        def read() -> PersonalizeJob | None:
            job = self.jobs.get(user, job_id)
            return job and self.jobs.progress(job, adapter_progress_key(job.adapter_job, user))

        job = await asyncio.to_thread(read)
        if job is None:
            raise ApiError(404, f"no job {job_id!r}")
        return job.to_dict()

    @app.post("/v1/feedback", dependencies=AUTH, openapi_extra=FEEDBACK_BODY)
    async def feedback(self, request: Request) -> dict[str, Any]:
        """Rate an image you received: {"image_id": ..., "rating": 1-5}."""
        user = (await self._principal(request)).user_id
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
        kept = {"image": self._output_key(user, image_id)} if self.config.keep_outputs else {}
        self._record("feedback", user, image_id=image_id, rating=rating, adapter_version=issued["version"],
                     experiment=issued["experiment"], variant=issued["variant"], **kept)  # fmt: skip
        return {"status": "recorded"}

    @app.get("/v1/me/adapters", dependencies=AUTH)
    async def my_adapters(self, request: Request) -> dict[str, Any]:
        user = (await self._principal(request)).user_id

        def read() -> list[dict[str, Any]]:
            versions = [
                self.registry.get("adapter", user, n) for n in self.registry.versions("adapter", user)
            ]
            return describe(versions, self.registry.aliases("adapter", user))

        return {"user": user, "versions": await asyncio.to_thread(read)}

    @app.get("/ui", include_in_schema=False)
    async def ui_root(self) -> RedirectResponse:
        return RedirectResponse("ui/", status_code=308)  # relative: works under any route prefix

    @app.get("/ui/", include_in_schema=False)
    async def ui_index(self) -> Response:
        return self._ui("index.html")

    @app.get("/ui/{name}", include_in_schema=False)
    async def ui_asset(self, name: str) -> Response:
        return self._ui(name)

    @staticmethod
    def _ui(name: str) -> Response:
        """One of the web page's files, with its security headers (pstyle.serving.web_ui)."""
        found = ui_file(name)
        if found is None:
            raise ApiError(404, "no such page")
        body, media_type = found
        return Response(body, media_type=media_type, headers=SECURITY_HEADERS)

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

    @app.get("/v1/admin/stats", dependencies=AUTH)
    async def stats(self, request: Request) -> dict[str, Any]:
        """One generator replica's adapter-cache counters (hit rate, cold loads), and this ingress
        replica's store-facing ones (events waiting for the store, outputs kept or not)."""
        await self._admin(request)
        ingress = {
            "events_pending": self.events.pending,
            "outputs_kept": self.outputs.kept,
            "outputs_not_kept": self.outputs.not_kept,
            "stale_reads": self.keys.stale_served + self.experiments.stale_served,
        }
        return {**await self.generator.stats.remote(), "ingress": ingress}

    @app.post("/v1/admin/experiments", dependencies=AUTH)
    async def create_experiment(self, request: Request) -> dict[str, Any]:
        """{"name", "variants": [{"name", "ref", "weight"}], "percent", "users"}"""
        await self._admin(request)
        try:
            experiment = Experiment.from_dict(await request.json())
            await asyncio.to_thread(self.experiments.create, experiment)
        except (ValueError, KeyError, TypeError, FileExistsError) as exc:
            raise ApiError(400, f"bad experiment: {exc}") from None
        return experiment.to_dict()

    @app.post("/v1/admin/experiments/{name}/stop", dependencies=AUTH)
    async def stop_experiment(self, name: str, request: Request) -> dict[str, Any]:
        await self._admin(request)
        return (await self._existing(lambda: self.experiments.stop(name))).to_dict()

    @app.get("/v1/admin/experiments", dependencies=AUTH)
    async def list_experiments(self, request: Request) -> dict[str, Any]:
        """Every experiment, running and stopped, newest first."""
        await self._admin(request)
        experiments = await asyncio.to_thread(self.experiments.list)
        return {"experiments": [e.to_dict() for e in reversed(experiments)]}

    @app.get("/v1/admin/experiments/{name}/report", dependencies=AUTH)
    async def experiment_report(self, name: str, request: Request) -> dict[str, Any]:
        """Per-variant counts, ratings (mean, 95% CI), errors and latency; for a running experiment,
        also what `pstyle ab decide` would do now and why (`policy`, a dry run: no alpha spent)."""
        await self._admin(request)
        await asyncio.to_thread(self.events.flush)

        def read() -> dict[str, Any]:
            rep = report(self.store, name)
            if rep["status"] == "running":
                (verdict,) = decide(self.store, name=name, dry_run=True)
                rep["policy"] = {"action": verdict.action, "reason": verdict.reason}
            return rep

        return await self._existing(read)

    @app.post("/v1/admin/experiments/{name}/promote", dependencies=AUTH)
    async def promote_experiment(self, name: str, request: Request) -> dict[str, Any]:
        """Move each exposed user's production to a variant and stop the experiment. Body (optional):
        {"variant": name}; without one, only a significant winner is promoted."""
        await self._admin(request)
        try:
            body = json.loads(await request.body() or b"{}")
            variant = body.get("variant")
        except (ValueError, AttributeError):
            raise ApiError(400, 'send no body or JSON {"variant": "..."}') from None
        await asyncio.to_thread(self.events.flush)

        def act() -> dict[str, Any]:
            self.experiments.get(name)  # an unknown name is a 404 (through `_existing`) ...
            try:
                return promote(self.store, self.registry, name, force_variant=variant)
            except ExperimentError as exc:  # ... no winner, or no such variant: 409
                raise ApiError(409, str(exc)) from None

        return await self._existing(act)

    @staticmethod
    async def _existing(call: Any) -> Any:
        try:
            return await asyncio.to_thread(call)
        except (FileNotFoundError, KeyError, ValueError) as exc:
            raise ApiError(404, str(exc)) from None


def build_app(config: ServeConfig | None = None, **generator_options: Any) -> serve.Application:
    """The application with `config` as every deployment's user_config; `generator_options` override
    the generator deployment's (e.g. max_ongoing_requests) for tests and benchmarks."""
    config = config or ServeConfig()
    user_config = dataclasses.asdict(config)
    generator_options.setdefault("ray_actor_options", {"num_gpus": config.num_gpus})
    generator = StyleReplica.options(user_config=user_config, **generator_options).bind()
    personalizer = Personalizer.options(user_config=user_config).bind()
    return Ingress.options(user_config=user_config).bind(generator, personalizer)


entrypoint = build_app()  # the import path in serve/config.yaml: serve.app:entrypoint
