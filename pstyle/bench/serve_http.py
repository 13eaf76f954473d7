"""`pstyle bench serve` (or `python -m pstyle.bench.serve_http`): the Serve app over loopback HTTP, bounded.

Three scenarios (`--scenario`), each on a private local Ray with one Generator replica:

- `users` (default): throughput and p50/p99 latency with 1, 8, 64 and 512 distinct users in flight
  (clients cycle over that many users, at most `concurrency` requests outstanding), cross-user
  batching (multiplexed by shard) against Serve's per-model-id batching (multiplexed by user),
  adapter cold-load latency and the adapter cache's hit rate.
- `head-of-line`: small 128 px stylize requests sent one after another, first with nothing else in
  flight (idle), then while `uploads` clients keep POSTing a large JPEG (4800x4800 from noise and
  gradients: a photo-sized file) to /v1/stylize. Whatever the ingress does on its event loop (decode,
  resize, encode, key checks, store reads) stalls every request behind it; the figure is the small
  requests' loaded p99 over their idle p99 (target: at most 2).
- `zero-shot`: users without an adapter. One sends style files with every request (a new set each
  time, so the style code is computed every time); the others store a set with `PUT /v1/me/styles`,
  then stylize: the first request computes their code, repeats use the cached one. Every answer
  must say `X-Adapter-Version: base`.

Setup: the default model (random weights: speed does not depend on them) published as the base, one
random rank-8 adapter per user where the scenario needs one, and an API key per user.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import inspect
import io
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import ray
import requests
import torch
from PIL import Image
from ray import serve

from pstyle.adapters import (
    AdapterConfig,
    adapter_state_dict,
    inject_adapter,
    load_adapter_state,
    save_adapter,
)
from pstyle.bench.adapters import random_state
from pstyle.bench.common import latency_ms, machine_description, write_result
from pstyle.config import ModelConfig, PStyleConfig, ServeConfig
from pstyle.distributed.runtime import ensure_ray, serve_on_loopback
from pstyle.models.style_model import StyleModel
from pstyle.serving.api_keys import create_user
from pstyle.store import LocalStore
from pstyle.store.registry import Registry
from pstyle.training.checkpoint import fingerprint, save_checkpoint
from serve.app import MAX_REQUEST_STYLES, build_app

APP = "bench"
HEAD_OF_LINE_TARGET = 2.0  # small-request p99 with large uploads in flight, over its idle p99


def populate(store: LocalStore, users: int, workdir: Path, adapters: bool = True) -> dict[str, str]:
    """The base, an API key per user and (with `adapters`) a random adapter each; returns user -> key."""
    torch.manual_seed(0)
    model = StyleModel(ModelConfig()).eval()
    save_checkpoint(workdir / "base", model, PStyleConfig(), {"kind": "random"})
    registry = Registry(store)
    registry.publish_base("base", workdir / "base", aliases=["production"])
    base_fingerprint = fingerprint(model)  # before the adapter wraps layers
    inject_adapter(model.generator, "u", AdapterConfig())
    shapes = {k: v.shape for k, v in adapter_state_dict(model.generator, "u").items()}
    keys = {}
    for i in range(users):
        user = f"user{i:04d}"
        if adapters:
            load_adapter_state(model.generator, "u", random_state(shapes, i))
            meta = {"user_id": user, "version": "bench", "base_fingerprint": base_fingerprint}
            save_adapter(workdir / "adapter", model.generator, "u", meta)
            registry.publish_adapter(user, workdir / "adapter", aliases=["production"])
        keys[user] = create_user(store, user)
    return keys


def noise_jpeg(side: int, seed: int, quality: int = 90) -> bytes:
    """A `side`² JPEG of colour gradients under pixel noise: it compresses about as badly as a photo
    (a flat colour would make a 23 MP upload a few hundred kB and its decode unrealistically cheap)."""
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    rgb = np.stack(np.broadcast_arrays(ramp[:, None], ramp[None, :], (ramp[:, None] + ramp[None, :]) / 2), -1)
    noise = np.random.default_rng(seed).integers(-17, 18, rgb.shape, dtype=np.int16)  # std ≈ 10
    pixels = np.clip(rgb.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=quality)
    return out.getvalue()


@contextmanager
def loopback_serve() -> Iterator[tuple[LocalStore, Path, str]]:
    """(store, work folder, URL): a temporary store, a private local Ray, Serve on loopback."""
    with tempfile.TemporaryDirectory() as tmp:
        ensure_ray("local")
        try:
            with serve_on_loopback() as url:
                yield LocalStore(Path(tmp) / "store"), Path(tmp), url
        finally:
            ray.shutdown()


def deploy(config: ServeConfig, concurrency: int) -> None:
    """The app as every scenario measures it: one Generator replica, no autoscaling, no queue cap."""
    app = build_app(
        config,
        max_ongoing_requests=2 * concurrency,
        max_queued_requests=-1,
        autoscaling_config=None,
        num_replicas=1,
    )
    serve.run(app, name=APP, route_prefix="/")


def stylize(
    session: requests.Session,
    url: str,
    key: str,
    image: bytes,
    styles: list[bytes] | None = None,
    size: int | None = None,
) -> tuple[float, requests.Response]:
    """(seconds, response) of one POST /v1/stylize; `styles` go as repeated `style` files."""
    files = [("image", ("content.jpg", image))]
    files += [("style", (f"style{i}.jpg", data)) for i, data in enumerate(styles or [])]
    data = {} if size is None else {"size": str(size)}
    t0 = time.perf_counter()
    r = session.post(
        f"{url}/v1/stylize", files=files, data=data, headers={"Authorization": f"Bearer {key}"}, timeout=300
    )
    return time.perf_counter() - t0, r


def expect(r: requests.Response, what: str, version: str | None = None) -> None:
    """Stop the scenario when the app does not answer as the scenario needs (its figures would be
    about error pages)."""
    if r.status_code != 200:
        raise RuntimeError(f"{what}: HTTP {r.status_code}: {r.text[:300]}")
    if version is not None and r.headers.get("X-Adapter-Version") != version:
        raise RuntimeError(
            f"{what}: X-Adapter-Version {r.headers.get('X-Adapter-Version')!r}, not {version!r}"
        )


# ------------------------------------------------------------------------------------------ users


def drive(url: str, keys: list[str], image: bytes, n: int, concurrency: int) -> dict:
    """`n` requests cycling over `keys`, `concurrency` outstanding; latency and throughput."""
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=concurrency))

    def one(i: int) -> tuple[float, int]:
        seconds, r = stylize(session, url, keys[i % len(keys)], image)
        return seconds, r.status_code

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    ok = [t for t, code in results if code == 200]
    return {"requests": n, "ok": len(ok), "images_per_s": len(ok) / wall, "latency_ms": latency_ms(ok)}


def bench_serve(
    users: tuple[int, ...] = (1, 8, 64, 512),
    size: int = 64,
    n_requests: int = 256,
    concurrency: int = 64,
) -> dict:
    rows = []
    image = io.BytesIO()
    Image.new("RGB", (size, size), (120, 80, 200)).save(image, "PNG")
    with loopback_serve() as (store, workdir, url):
        keys = populate(store, max(users), workdir)
        for multiplex_by in ("shard", "user"):
            config = ServeConfig(
                store=str(store.root),
                size=size,
                multiplex_by=multiplex_by,
                max_batch_size=concurrency,
                batch_wait_timeout_s=0.02,
            )
            deploy(config, concurrency)
            generator = serve.get_deployment_handle("StyleReplica", app_name=APP)
            all_keys = list(keys.values())
            warm = drive(url, all_keys, image.getvalue(), len(all_keys), concurrency)  # first touch
            cold = generator.stats.remote().result()
            for n_users in users if multiplex_by == "shard" else (64,):
                before = generator.stats.remote().result()
                result = drive(url, all_keys[:n_users], image.getvalue(), n_requests, concurrency)
                after = generator.stats.remote().result()
                hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
                rows.append(
                    {
                        "multiplex_by": multiplex_by,
                        "distinct_users": n_users,
                        **result,
                        "cache_hit_rate": hits / max(1, hits + misses),
                    }
                )
            if multiplex_by == "shard":
                first_touch = {
                    "users": len(all_keys),
                    "cold_loads": cold["misses"],
                    "replica_cold_load_ms_p50": cold["cold_load_ms_p50"],
                    "first_request_latency_ms": warm["latency_ms"],
                }
            # Start the next app afresh: redeployed in place, the ingress keeps the replica count
            # its autoscaler reached, which may not fit in the CPUs beside the new generator.
            serve.delete(APP)
    by = {(r["multiplex_by"], r["distinct_users"]): r["images_per_s"] for r in rows}
    result = {
        "benchmark": "serve",
        "machine": machine_description(torch.device("cpu")),
        "size": size,
        "concurrency": concurrency,
        "rows": rows,
        "first_touch": first_touch,
        "personalization_cost": by[("shard", 64)] / by[("shard", 1)],
        "cross_user_vs_per_user_batching_64": by[("shard", 64)] / by[("user", 64)],
        "config": dataclasses.asdict(ServeConfig()),
    }
    return result


def serve_table(result: dict) -> str:
    lines = [f"{'multiplex':<9}{'users':>6}{'img/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'hit rate':>10}"]
    for r in result["rows"]:
        lat = r["latency_ms"]
        lines.append(
            f"{r['multiplex_by']:<9}{r['distinct_users']:>6}{r['images_per_s']:>8.1f}"
            f"{lat['p50']:>9.1f}{lat['p99']:>9.1f}{r['cache_hit_rate']:>10.2f}"
        )
    ft = result["first_touch"]
    lines.append(f"personalization cost (64 users / 1 user throughput): {result['personalization_cost']:.2f}")
    lines.append(
        f"cross-user / per-user batching at 64 users: {result['cross_user_vs_per_user_batching_64']:.2f}x"
    )
    lines.append(
        f"cold adapter load in the replica: p50 {ft['replica_cold_load_ms_p50']:.1f} ms "
        f"({ft['cold_loads']} loads for {ft['users']} users)"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- head-of-line


def sequential(session: requests.Session, url: str, key: str, image: bytes, n: int, size: int) -> list[float]:
    """Seconds of `n` stylize requests sent one after another (each must succeed)."""
    seconds = []
    for i in range(n):
        t, r = stylize(session, url, key, image, size=size)
        expect(r, f"small request {i}")
        seconds.append(t)
    return seconds


@contextmanager
def uploads_in_flight(url: str, keys: list[str], image: bytes) -> Iterator[list[tuple[float, int]]]:
    """One client per key POSTing `image` to /v1/stylize over and over until the block ends; yields
    the (seconds, status) of the uploads (status 0: no answer), complete once the block has ended
    (the uploads in flight then finish)."""
    done: list[tuple[float, int]] = []
    stop = threading.Event()
    started = threading.Barrier(len(keys) + 1)

    def client(key: str) -> None:
        session = requests.Session()
        started.wait()
        while not stop.is_set():
            try:
                seconds, r = stylize(session, url, key, image)
                done.append((seconds, r.status_code))
            except requests.RequestException:  # counted as not ok; the client goes on
                done.append((float("nan"), 0))

    threads = [threading.Thread(target=client, args=(key,), daemon=True) for key in keys]
    for thread in threads:
        thread.start()
    started.wait()
    time.sleep(0.2)  # the first uploads are on the wire and being read
    try:
        yield done
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def head_of_line_summary(
    idle: list[float], loaded: list[float], uploads: list[tuple[float, int]]
) -> dict[str, Any]:
    """Latencies of both phases, the loaded/idle ratios and how the uploads fared."""
    idle_ms, loaded_ms = latency_ms(idle), latency_ms(loaded)
    ok = [seconds for seconds, status in uploads if status == 200]
    return {
        "idle_latency_ms": idle_ms,
        "loaded_latency_ms": loaded_ms,
        "p50_ratio": loaded_ms["p50"] / idle_ms["p50"],
        "p99_ratio": loaded_ms["p99"] / idle_ms["p99"],
        "target_p99_ratio": HEAD_OF_LINE_TARGET,
        "uploads_answered": len(uploads),
        "uploads_ok": len(ok),
        "upload_latency_ms": latency_ms(ok) if len(ok) > 1 else None,
    }


def bench_head_of_line(
    n_requests: int = 300, size: int = 128, uploads: int = 4, upload_side: int = 4800, warmup: int = 5
) -> dict:
    """Small-request latency, idle and with `uploads` large uploads in flight (see the module doc)."""
    if n_requests < 2 or uploads < 1:
        raise ValueError("head-of-line needs at least 2 small requests per phase and 1 upload client")
    config = ServeConfig(size=size)
    large, small = noise_jpeg(upload_side, seed=1), noise_jpeg(size, seed=2)
    if len(large) > config.max_upload_bytes or upload_side**2 > config.max_pixels:
        raise ValueError(f"a {upload_side}² upload of {len(large)} bytes exceeds the app's upload limits")
    with loopback_serve() as (store, workdir, url):
        keys = list(populate(store, 1 + uploads, workdir).values())
        deploy(dataclasses.replace(config, store=str(store.root)), concurrency=1 + uploads)
        session = requests.Session()
        sequential(session, url, keys[0], small, warmup, size)  # first batch, adapter load
        idle = sequential(session, url, keys[0], small, n_requests, size)
        with uploads_in_flight(url, keys[1:], large) as answered:
            loaded = sequential(session, url, keys[0], small, n_requests, size)
    return {
        "benchmark": "serve-head-of-line",
        "machine": machine_description(torch.device("cpu")),
        "size": size,
        "requests_per_phase": n_requests,
        "upload": {"clients": uploads, "side": upload_side, "bytes": len(large), "format": "jpeg"},
        **head_of_line_summary(idle, loaded, answered),
        "config": dataclasses.asdict(config),
    }


def head_of_line_table(result: dict) -> str:
    up = result["upload"]
    lines = [
        f"{result['size']} px requests, one at a time; loaded: {up['clients']} clients uploading a "
        f"{up['side']}x{up['side']} JPEG ({up['bytes'] / 2**20:.1f} MiB) to /v1/stylize meanwhile",
        f"{'phase':<8}{'requests':>9}{'p50 ms':>9}{'p99 ms':>9}",
    ]
    for phase in ("idle", "loaded"):
        lat = result[f"{phase}_latency_ms"]
        lines.append(f"{phase:<8}{lat['n']:>9}{lat['p50']:>9.1f}{lat['p99']:>9.1f}")
    met = "met" if result["p99_ratio"] <= result["target_p99_ratio"] else "NOT met"
    lines.append(
        f"loaded / idle: p99 {result['p99_ratio']:.2f}x (target <= {result['target_p99_ratio']:g}x: {met}), "
        f"p50 {result['p50_ratio']:.2f}x"
    )
    uploads = result["upload_latency_ms"]
    timing = f", p50 {uploads['p50']:.0f} ms" if uploads else ""
    lines.append(f"large uploads answered: {result['uploads_answered']} ({result['uploads_ok']} ok{timing})")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------- zero-shot


def style_files(set_number: int, n: int, side: int) -> list[bytes]:
    """Set `set_number`'s `n` style images: a different set number gives different bytes (and so a
    different set digest, which the server caches codes by)."""
    return [noise_jpeg(side, seed=set_number * MAX_REQUEST_STYLES + i) for i in range(n)]


def put_styles(session: requests.Session, url: str, key: str, styles: list[bytes]) -> float:
    """Seconds of one PUT /v1/me/styles storing `styles` as the caller's style set."""
    files = [("style", (f"style{i}.jpg", data)) for i, data in enumerate(styles)]
    t0 = time.perf_counter()
    r = session.put(
        f"{url}/v1/me/styles", files=files, headers={"Authorization": f"Bearer {key}"}, timeout=300
    )
    seconds = time.perf_counter() - t0
    expect(r, "PUT /v1/me/styles")
    return seconds


ZERO_SHOT_CASES = {
    "in_request": "style files in the request (new set)",
    "first": "stored set, first request",
    "cached": "stored set, repeats (cached code)",
    "put": "PUT /v1/me/styles",
}


def zero_shot_summary(timings: dict[str, list[float]]) -> dict[str, Any]:
    """Latency per case (keys of ZERO_SHOT_CASES) and how much the cached code saves."""
    lat = {case: latency_ms(timings[case]) for case in ZERO_SHOT_CASES}
    return {
        "latency_ms": lat,
        "first_vs_cached_p50": lat["first"]["p50"] / lat["cached"]["p50"],
        "in_request_vs_cached_p50": lat["in_request"]["p50"] / lat["cached"]["p50"],
    }


def bench_zero_shot(
    n_requests: int = 10, size: int = 128, new_users: int = 8, styles: int = 4, style_side: int = 256
) -> dict:
    """New users' latency, style files in each request vs a stored set (see the module doc)."""
    if n_requests < 2 or new_users < 2 or not 1 <= styles <= MAX_REQUEST_STYLES:
        raise ValueError(f"zero-shot needs >= 2 requests and new users and 1-{MAX_REQUEST_STYLES} styles")
    config = ServeConfig(size=size)
    content = noise_jpeg(size, seed=0)
    timings: dict[str, list[float]] = {case: [] for case in ZERO_SHOT_CASES}
    with loopback_serve() as (store, workdir, url):
        keys = list(populate(store, 1 + new_users, workdir, adapters=False).values())
        deploy(dataclasses.replace(config, store=str(store.root)), concurrency=1)
        session = requests.Session()

        def render(key: str, what: str, style_set: list[bytes] | None = None) -> float:
            seconds, r = stylize(session, url, key, content, style_set, size)
            expect(r, what, version="base")
            return seconds

        render(keys[0], "warm-up", style_files(0, styles, style_side))  # the first batch of the replica
        for i in range(1, n_requests + 1):
            timings["in_request"].append(
                render(keys[0], "stylize with style files", style_files(i, styles, style_side))
            )
        for u, key in enumerate(keys[1:], start=n_requests + 1):
            timings["put"].append(put_styles(session, url, key, style_files(u, styles, style_side)))
            timings["first"].append(render(key, "first stylize from a stored set"))
            timings["cached"] += [render(key, "repeat stylize from a stored set") for _ in range(n_requests)]
    return {
        "benchmark": "serve-zero-shot",
        "machine": machine_description(torch.device("cpu")),
        "size": size,
        "styles": {"per_set": styles, "side": style_side},
        "new_users": new_users,
        **zero_shot_summary(timings),
        "config": dataclasses.asdict(config),
    }


def zero_shot_table(result: dict) -> str:
    st = result["styles"]
    lines = [
        f"users without an adapter, {result['size']} px; "
        f"{st['per_set']} style images of {st['side']} px per set",
        f"{'case':<40}{'requests':>9}{'p50 ms':>9}{'p99 ms':>9}",
    ]
    for case, label in ZERO_SHOT_CASES.items():
        lat = result["latency_ms"][case]
        lines.append(f"{label:<40}{lat['n']:>9}{lat['p50']:>9.1f}{lat['p99']:>9.1f}")
    lines.append(
        f"p50 first / cached: {result['first_vs_cached_p50']:.2f}x; "
        f"style files in the request / cached: {result['in_request_vs_cached_p50']:.2f}x"
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main

SCENARIOS: dict[str, tuple[Callable[..., dict], Callable[[dict], str]]] = {
    "users": (bench_serve, serve_table),
    "head-of-line": (bench_head_of_line, head_of_line_table),
    "zero-shot": (bench_zero_shot, zero_shot_table),
}


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _flag(dest: str) -> str:
    """The option that fills parameter `dest` (`n_requests`: not `requests`, which is the HTTP module)."""
    return "--requests" if dest == "n_requests" else f"--{dest.replace('_', '-')}"


def parse(argv: list[str] | None = None) -> tuple[str, dict[str, Any], Path]:
    """(scenario, the options given for it, output folder). Defaults live in the scenario functions'
    signatures; an option the chosen scenario does not take is an error, not silently ignored."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenario", choices=tuple(SCENARIOS), default="users", help="what to measure [users]"
    )
    parser.add_argument("--size", type=int, help="stylize output side in px [users 64, others 128]")
    parser.add_argument("--requests", dest="n_requests", type=int,
                        help="users: requests per row; head-of-line: small requests per phase; "
                             "zero-shot: requests per case and user")  # fmt: skip
    parser.add_argument(
        "--users", type=_ints, help="users: distinct users in flight per row, e.g. 1,8,64,512"
    )
    parser.add_argument("--concurrency", type=int, help="users: requests in flight")
    parser.add_argument("--uploads", type=int, help="head-of-line: clients uploading the large JPEG")
    parser.add_argument("--upload-side", type=int, help="head-of-line: the large JPEG's side in px")
    parser.add_argument("--new-users", type=int, help="zero-shot: users who store a style set")
    parser.add_argument(
        "--styles", type=int, help=f"zero-shot: style images per set (1-{MAX_REQUEST_STYLES})"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args(argv)
    options = {k: v for k, v in vars(args).items() if v is not None and k not in ("scenario", "out")}
    accepted = inspect.signature(SCENARIOS[args.scenario][0]).parameters
    unknown = [_flag(name) for name in options if name not in accepted]
    if unknown:
        parser.error(f"--scenario {args.scenario} does not take {', '.join(unknown)}")
    return args.scenario, options, args.out


def main(argv: list[str] | None = None) -> None:
    scenario, options, out = parse(argv)
    run, table_of = SCENARIOS[scenario]
    result = run(**options)
    table = table_of(result)
    print(table)
    print(f"wrote {write_result(result, table, out)}")


if __name__ == "__main__":
    main()
