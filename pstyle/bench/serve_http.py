"""`pstyle bench serve` (or `python -m pstyle.bench.serve_http`): the Serve app over loopback HTTP, bounded.

Measures throughput and p50/p99 latency with 1, 8, 64 and 512 distinct users in flight (clients
cycle over that many users, at most `concurrency` requests outstanding), cross-user batching
(multiplexed by shard) against Serve's per-model-id batching (multiplexed by user), adapter
cold-load latency and the adapter cache's hit rate. Setup: the default model (random weights: speed
does not depend on them) published as the base, one random rank-8 adapter per user, API keys with a
cheap scrypt cost (the server caches verified keys, so the cost is paid once per user either way).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import io
import json
import tempfile
import time
from pathlib import Path

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
from pstyle.serving.api_keys import hash_record, record_key
from pstyle.store import LocalStore
from pstyle.store.registry import Registry
from pstyle.training.checkpoint import fingerprint, save_checkpoint
from serve.app import build_app

CHEAP_SCRYPT = {"n": 2**10, "r": 8, "p": 1}


def populate(store: LocalStore, users: int, workdir: Path) -> dict[str, str]:
    """Base + one adapter and one API key per user; returns user -> key."""
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
        load_adapter_state(model.generator, "u", random_state(shapes, i))
        meta = {"user_id": user, "version": "bench", "base_fingerprint": base_fingerprint}
        save_adapter(workdir / "adapter", model.generator, "u", meta)
        registry.publish_adapter(user, workdir / "adapter", aliases=["production"])
        key = f"psk.{user}.bench-{i:06d}-{'x' * 24}"
        store.put_bytes(record_key(user), json.dumps(hash_record(key, False, CHEAP_SCRYPT)).encode())
        keys[user] = key
    return keys


def drive(url: str, keys: list[str], image: bytes, n: int, concurrency: int) -> dict:
    """`n` requests cycling over `keys`, `concurrency` outstanding; latency and throughput."""
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=concurrency))

    def one(i: int) -> tuple[float, int]:
        t0 = time.perf_counter()
        r = session.post(
            f"{url}/v1/stylize",
            files={"image": ("c.png", image)},
            headers={"Authorization": f"Bearer {keys[i % len(keys)]}"},
            timeout=120,
        )
        return time.perf_counter() - t0, r.status_code

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    ok = [t for t, code in results if code == 200]
    return {"requests": n, "ok": len(ok), "images_per_s": len(ok) / wall, "latency_ms": latency_ms(ok)}


def bench_serve(
    users: tuple[int, ...] = (1, 8, 64, 512),
    size: int = 64,
    requests_per_run: int = 256,
    concurrency: int = 64,
) -> dict:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp) / "store")
        keys = populate(store, max(users), Path(tmp))
        image = io.BytesIO()
        Image.new("RGB", (size, size), (120, 80, 200)).save(image, "PNG")
        ensure_ray("local")
        try:
            with serve_on_loopback() as url:
                for multiplex_by in ("shard", "user"):
                    config = ServeConfig(
                        store=str(store.root),
                        size=size,
                        multiplex_by=multiplex_by,
                        max_batch_size=concurrency,
                        batch_wait_timeout_s=0.02,
                    )
                    serve.run(
                        build_app(
                            config,
                            max_ongoing_requests=2 * concurrency,
                            max_queued_requests=-1,
                            autoscaling_config=None,
                            num_replicas=1,
                        ),
                        name="bench",
                        route_prefix="/",
                    )
                    generator = serve.get_deployment_handle("StyleReplica", app_name="bench")
                    all_keys = list(keys.values())
                    warm = drive(url, all_keys, image.getvalue(), len(all_keys), concurrency)  # first touch
                    cold = generator.stats.remote().result()
                    for n_users in users if multiplex_by == "shard" else (64,):
                        before = generator.stats.remote().result()
                        result = drive(
                            url, all_keys[:n_users], image.getvalue(), requests_per_run, concurrency
                        )
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
                    serve.delete("bench")
        finally:
            ray.shutdown()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="1,8,64,512")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args()
    users = tuple(int(u) for u in args.users.split(","))
    result = bench_serve(users, args.size, args.requests, args.concurrency)
    table = serve_table(result)
    print(table)
    print(f"wrote {write_result(result, table, args.out)}")


if __name__ == "__main__":
    main()
