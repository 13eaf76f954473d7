"""`python -m pstyle.demo.traffic --spec FILE`: the demo's serving stages, as real HTTP clients.

`pstyle demo` runs this in a subprocess (the core never imports `serve/`), on the demo's Ray cluster:

1. deploy the Serve app (`serve.app.build_app`) with the demo's store, HTTP on 127.0.0.1;
   a new user with no adapter uploads a style set and gets their first image zero-shot, from the
   base (`<out>/served/newcomer.png`), then the same request again (its style code now cached);
2. every user stylizes the demo content images with their own API key (their `production` adapter);
3. an admin starts an A/B experiment over HTTP (`production` vs `candidate` adapter, the cohort
   split by `pstyle.serving.experiments.assign`); the cohort sends traffic and rates every image it gets;
4. the admin reads the experiment report and stops the experiment; the app is shut down, which
   flushes the event log.

Ratings come from a simulated user whose taste is their own style: a returned image scores the SWD
to the user's held-out style images (`pstyle.quality.metrics.swd`), and the rating is 3 stars plus one per 5 %
lower SWD than the mean of what that user got in stage 2, clipped to 1-5. Everything measured goes
to `<out>/serving.json`; the first image each user received in stage 2 to `<out>/served/<user>.png`.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import requests
import torch
from PIL import Image
from ray import serve

from pstyle.config import ServeConfig
from pstyle.distributed.adapter_jobs import user_split
from pstyle.distributed.runtime import ensure_ray, serve_on_loopback
from pstyle.images import to_tensor
from pstyle.quality.metrics import swd
from pstyle.store import open_store
from serve.app import build_app

STARS_PER_GAIN = 0.05  # one star per 5 % lower SWD than the user's stage-2 mean


class Rater:
    """A simulated user: rates images by how close they are to the user's held-out style images
    (those their adapters never trained on)."""

    def __init__(self, store: str, manifest: str, users: list[str], size: int) -> None:
        store_obj = open_store(store)
        self.held = {u: user_split(store_obj, manifest, u, size)[1] for u in users}
        self.reference: dict[str, float] = {}

    def distance(self, user: str, png: bytes) -> float:
        image = to_tensor(Image.open(io.BytesIO(png)).convert("RGB")).unsqueeze(0)
        return swd(image, self.held[user], seed=0)["mean"]

    def rating(self, user: str, distance: float) -> int:
        gain = (self.reference[user] - distance) / self.reference[user]
        return int(min(5, max(1, round(3 + gain / STARS_PER_GAIN))))


class Client:
    """One API key's HTTP session against the app."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.session = url, requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"

    def stylize(self, image: bytes, seed: int) -> tuple[requests.Response, float]:
        t0 = time.perf_counter()
        r = self.session.post(
            f"{self.url}/v1/stylize",
            files={"image": ("content.png", image)},
            data={"seed": seed},
            timeout=120,
        )
        return r, time.perf_counter() - t0

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.session.request(method, f"{self.url}{path}", timeout=60, **kwargs)
        if r.status_code != 200:
            raise RuntimeError(f"{method} {path}: HTTP {r.status_code} {r.text[:300]}")
        return r.json()


def request_row(user: str, response: requests.Response, seconds: float, stage: str) -> dict[str, Any]:
    if response.status_code != 200:
        raise RuntimeError(f"{user}: POST /v1/stylize -> HTTP {response.status_code} {response.text[:300]}")
    h = response.headers
    return {
        "user": user,
        "stage": stage,
        "latency_ms": 1e3 * seconds,
        "adapter_version": int(h["X-Adapter-Version"]),
        "experiment": h["X-Experiment"],
        "variant": h["X-Variant"],
        "image_id": h["X-Image-Id"],
    }


def first_result(client: Client, styles: list[str], content: str, out: Path) -> dict[str, Any]:
    """A new user's first minute: upload a style set, stylize (zero-shot), stylize again."""
    files = [("style", (Path(p).name, Path(p).read_bytes())) for p in styles]
    image = Path(content).read_bytes()
    client.call("PUT", "/v1/me/styles", files=files)
    latencies = []
    for _ in range(2):
        response, seconds = client.stylize(image, seed=0)
        if response.status_code != 200 or response.headers["X-Adapter-Version"] != "base":
            raise RuntimeError(f"newcomer: HTTP {response.status_code} {response.text[:300]}")
        latencies.append(1e3 * seconds)
    (out / "served" / "newcomer.png").write_bytes(response.content)
    return {"styles": styles, "content": content, "first_ms": latencies[0], "cached_ms": latencies[1]}


def drive(spec: dict[str, Any], url: str, out: Path) -> dict[str, Any]:
    """Stages 2-4 against a running app at `url`; returns what `serving.json` holds."""
    images = [Path(p).read_bytes() for p in spec["content"]]
    clients = {user: Client(url, key) for user, key in spec["keys"].items()}
    admin = Client(url, spec["admin_key"])
    rater = Rater(spec["store"], spec["manifest"], list(spec["keys"]), spec["size"])
    rows: list[dict[str, Any]] = []
    (out / "served").mkdir(parents=True, exist_ok=True)
    newcomer = first_result(
        Client(url, spec["newcomer"]["key"]), spec["newcomer"]["styles"], spec["content"][0], out
    )

    for user, client in clients.items():  # stage 2: each user's production adapter
        distances = []
        for i in range(spec["requests"]):
            response, seconds = client.stylize(images[i % len(images)], seed=i)
            rows.append(request_row(user, response, seconds, "users") | {"content": i % len(images)})
            distances.append(rater.distance(user, response.content))
            if i == 0:
                (out / "served" / f"{user}.png").write_bytes(response.content)
        rater.reference[user] = sum(distances) / len(distances)

    ab = spec["ab"]
    admin.call("POST", "/v1/admin/experiments", json=ab)
    for i in range(spec["ab_requests"]):  # stage 3: the cohort's traffic, every image rated
        for user in ab["users"]:
            response, seconds = clients[user].stylize(images[i % len(images)], seed=1000 + i)
            row = request_row(user, response, seconds, "ab")
            row["swd"] = rater.distance(user, response.content)
            row["rating"] = rater.rating(user, row["swd"])
            clients[user].call(
                "POST", "/v1/feedback", json={"image_id": row["image_id"], "rating": row["rating"]}
            )
            rows.append(row)
    report = admin.call("GET", f"/v1/admin/experiments/{ab['name']}/report")
    admin.call("POST", f"/v1/admin/experiments/{ab['name']}/stop")
    return {
        "url": url,
        "requests": rows,
        "reference_swd": rater.reference,
        "newcomer": newcomer,
        "ab_report": report,
        "cache": admin.call("GET", "/v1/admin/stats"),
    }


def deploy_demo_app(store: str, **changes: Any) -> ServeConfig:
    """The app on the running Serve instance, one replica per deployment, with the short alias TTL
    and event flush a demo wants (changes happen within a second); returns its config."""
    config = ServeConfig(store=store, alias_ttl_s=1.0, event_flush_s=0.5, **changes)
    serve.run(build_app(config, autoscaling_config=None, num_replicas=1), name="pstyle", route_prefix="/")
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True, help="JSON written by pstyle.demo.pipeline")
    parser.add_argument("--address", required=True, help="the running Ray cluster (GCS address)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    spec = json.loads(args.spec.read_text())
    torch.set_num_threads(1)  # the rater only: the replicas have the CPUs
    ensure_ray(args.address, include_dashboard=False, log_to_driver=False)
    with serve_on_loopback() as url:
        config = deploy_demo_app(spec["store"], size=spec["size"])
        result = drive(spec, url, args.out)
    result["config"] = asdict(config)
    (args.out / "serving.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out / 'serving.json'}: {len(result['requests'])} requests")


if __name__ == "__main__":
    main()
