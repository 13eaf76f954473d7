"""The Serve app end to end over real HTTP on a local Ray: users, adapters, hostile input, A/B, ops."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import time
from pathlib import Path

import numpy as np
import pytest
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
from pstyle.config import ServeConfig, cpu_preset
from pstyle.distributed.runtime import free_port
from pstyle.models.style_model import StyleModel
from pstyle.serving.api_keys import create_user
from pstyle.serving.stylize import stylize_file
from pstyle.store import LocalStore
from pstyle.store.events import read_events
from pstyle.store.registry import Registry
from pstyle.training.checkpoint import fingerprint, load_checkpoint, save_checkpoint
from serve.app import build_app

TTL_S = 1.0


def write_adapter(base_dir: Path, user: str, seed: int, out: Path) -> Path:
    """A non-zero adapter for the base (what `pstyle personalize` would save, faster)."""
    model, _ = load_checkpoint(base_dir)
    base_fingerprint = fingerprint(model)  # of the base weights, before the adapter wraps layers
    inject_adapter(model.generator, user, AdapterConfig())
    shapes = {k: v.shape for k, v in adapter_state_dict(model.generator, user).items()}
    state = random_state(shapes, seed)
    state = {k: v * 10 if k.endswith("lora_up") else v for k, v in state.items()}  # visibly personal
    load_adapter_state(model.generator, user, state)
    save_adapter(
        out,
        model.generator,
        user,
        {"user_id": user, "version": "test", "base_fingerprint": base_fingerprint},
    )
    return out


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained base of the CPU preset's size: serving does not care how good the weights are."""
    torch.manual_seed(0)
    config = cpu_preset(64)
    out = tmp_path_factory.mktemp("base") / "base"
    save_checkpoint(out, StyleModel(config.model), config, {"kind": "random"})
    return out


@pytest.fixture(scope="module")
def deployment(base_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201

    root = tmp_path_factory.mktemp("serve")
    store = LocalStore(root / "store")
    registry = Registry(store)
    registry.publish_base("base", base_dir, aliases=["production"])
    adapters = {}
    for seed, user in enumerate(["alice", "bob"]):
        adapters[user] = write_adapter(base_dir, user, seed, root / user)
        registry.publish_adapter(user, adapters[user], aliases=["production"])
    keys = {user: create_user(store, user) for user in ("alice", "bob", "carol")}
    keys["root"] = create_user(store, "root", admin=True)
    config = ServeConfig(
        store=str(store.root),
        alias_ttl_s=TTL_S,
        size=64,
        max_upload_bytes=2**20,
        max_pixels=4_000_000,
        event_flush_s=0.5,
    )
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(config), name="pstyle", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    yield {
        "url": url,
        "keys": keys,
        "store": store,
        "registry": registry,
        "adapters": adapters,
        "base": base_dir,
        "config": config,
        "root": root,
    }
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def content_png(synth_dir: Path) -> bytes:
    return sorted((synth_dir / "content" / "images").glob("*.png"))[0].read_bytes()


def call(d: dict, user: str | None, files: dict | None = None, data: dict | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {d['keys'][user]}"} if user else {}
    return requests.post(f"{d['url']}/v1/stylize", files=files, data=data or {}, headers=headers, timeout=60)


def decode(response: requests.Response) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), dtype=np.float32) / 255


def test_users_get_their_own_adapter_matching_offline(deployment, content_png, tmp_path: Path) -> None:
    outs = {}
    for user in ("alice", "bob"):
        r = call(deployment, user, files={"image": ("c.png", content_png)}, data={"seed": "3", "user": "bob"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png" and r.headers["X-Adapter-Version"] == "1"
        outs[user] = decode(r)
        (tmp_path / "c.png").write_bytes(content_png)
        offline = stylize_file(
            tmp_path / "c.png",
            deployment["base"],
            [],
            tmp_path / f"{user}.png",
            seed=3,
            size=64,
            adapter_dir=deployment["adapters"][user],
        )
        expected = offline.permute(1, 2, 0).numpy()
        assert np.abs(outs[user] - expected).max() <= 2 / 255  # PNG rounding only
    assert np.abs(outs["alice"] - outs["bob"]).mean() > 0.01  # the "user" field did not switch adapters


def test_auth_and_cross_user_access(deployment, content_png) -> None:
    assert call(deployment, None, files={"image": ("c.png", content_png)}).status_code == 401
    bad = requests.post(
        f"{deployment['url']}/v1/stylize",
        headers={"Authorization": "Bearer psk.alice.nope"},
        files={"image": ("c.png", content_png)},
        timeout=30,
    )
    assert bad.status_code == 401 and "error" in bad.json()
    carol = call(deployment, "carol", files={"image": ("c.png", content_png)})
    assert carol.status_code == 404 and "no adapter" in carol.json()["error"]
    alice = call(deployment, "alice", files={"image": ("c.png", content_png)})
    image_id = alice.headers["X-Image-Id"]
    as_bob = requests.post(
        f"{deployment['url']}/v1/feedback",
        json={"image_id": image_id, "rating": 5},
        headers={"Authorization": f"Bearer {deployment['keys']['bob']}"},
        timeout=30,
    )
    assert as_bob.status_code == 404
    mine = requests.get(
        f"{deployment['url']}/v1/me/adapters",
        headers={"Authorization": f"Bearer {deployment['keys']['bob']}"},
        timeout=30,
    )
    assert mine.json()["user"] == "bob" and [v["version"] for v in mine.json()["versions"]] == [1]
    admin_only = requests.get(
        f"{deployment['url']}/v1/admin/stats",
        headers={"Authorization": f"Bearer {deployment['keys']['bob']}"},
        timeout=30,
    )
    assert admin_only.status_code == 403


def hostile_uploads() -> dict[str, tuple[bytes, str]]:
    good = png(Image.new("RGB", (64, 64), (200, 10, 10)))
    gif = io.BytesIO()
    frames = [Image.new("RGB", (64, 64), (i * 60, 0, 0)) for i in range(3)]
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    tiff = io.BytesIO()
    frames[0].save(tiff, "TIFF", save_all=True, append_images=frames[1:])
    return {
        "zero-byte": (b"", "zero-byte"),
        "truncated": (good[: len(good) // 2], "truncated"),
        "corrupt": (good[:60] + bytes(b ^ 0xFF for b in good[60:-20]) + good[-20:], "corrupt"),
        "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>', "not an image"),
        "text": (b"hello, I am not an image", "not an image"),
        "animated": (gif.getvalue(), "animated"),
        "multi-page": (tiff.getvalue(), "multi-page"),
        "bomb": (png(Image.new("1", (2500, 2500))), "too many pixels"),
        "oversize": (good + bytes(2**20), "larger than"),
        "tiny": (png(Image.new("RGB", (8, 8))), "too small"),
    }


@pytest.mark.parametrize("case", list(hostile_uploads()))
def test_hostile_upload_is_4xx_and_service_survives(deployment, content_png, case: str) -> None:
    data, message = hostile_uploads()[case]
    r = call(deployment, "alice", files={"image": ("x.png", data)})
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert message in r.json()["error"]
    assert call(deployment, "alice", files={"image": ("c.png", content_png)}).status_code == 200


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"strength": "2"}, "strength"),
        ({"region": "sky"}, "region"),
        ({"format": "bmp"}, "format"),
        ({"size": "30"}, "size"),
        ({"region": "mask"}, "mask file"),
    ],
)
def test_bad_fields_are_400(deployment, content_png, data: dict, message: str) -> None:
    r = call(deployment, "alice", files={"image": ("c.png", content_png)}, data=data)
    assert r.status_code == 400 and message in r.json()["error"]


def test_converted_modes_regions_and_formats(deployment, content_png) -> None:
    rgb = Image.open(io.BytesIO(content_png)).convert("RGB")
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: a 96x64 file is a 64x96 (portrait) photo
    rgb.resize((96, 64)).save(rotated, "JPEG", exif=exif)
    for upload in (
        png(rgb.convert("L")),
        png(rgb.convert("P")),
        png(rgb.convert("RGBA")),
        rotated.getvalue(),
    ):
        r = call(deployment, "alice", files={"image": ("x", upload)}, data={"format": "webp"})
        assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    portrait = Image.open(
        io.BytesIO(call(deployment, "alice", files={"image": ("x", rotated.getvalue())}).content)
    )
    assert portrait.size == (64, 96)
    full = decode(call(deployment, "alice", files={"image": ("c.png", content_png)}))
    none = decode(call(deployment, "alice", files={"image": ("c.png", content_png)}, data={"strength": "0"}))
    original = (
        np.asarray(Image.open(io.BytesIO(content_png)).convert("RGB").resize((64, 64)), np.float32) / 255
    )
    assert np.abs(none - original).max() <= 2 / 255 < np.abs(full - original).mean()
    mask = png(Image.new("L", (64, 64), 0))  # an all-black mask: nothing is stylized
    masked = call(
        deployment,
        "alice",
        files={"image": ("c.png", content_png), "mask": ("m.png", mask)},
        data={"region": "mask"},
    )
    assert np.abs(decode(masked) - original).max() <= 2 / 255
    for region in ("subject", "background"):
        assert call(deployment, "alice", files={"image": ("c.png", content_png)}, data={"region": region}).ok


def test_feedback_lands_in_the_store(deployment, content_png) -> None:
    r = call(deployment, "bob", files={"image": ("c.png", content_png)})
    sent = requests.post(
        f"{deployment['url']}/v1/feedback",
        json={"image_id": r.headers["X-Image-Id"], "rating": 4},
        headers={"Authorization": f"Bearer {deployment['keys']['bob']}"},
        timeout=30,
    )
    assert sent.status_code == 200
    deadline = time.monotonic() + 20
    while not (events := list(read_events(deployment["store"], "feedback", user_id="bob"))):
        assert time.monotonic() < deadline, "feedback event never reached the store"
        time.sleep(0.5)  # the ingress flushes every event_flush_s
    assert events[0]["rating"] == 4 and events[0]["adapter_version"] == 1


def test_graceful_shutdown_flushes_buffered_events(deployment, content_png) -> None:
    """A second copy of the app that only flushes on shutdown: its buffered feedback reaches the store
    when the app is deleted (Serve runs the replicas' destructors), not before."""
    config = dataclasses.replace(deployment["config"], event_flush_s=3600.0)
    serve.run(build_app(config), name="flush", route_prefix="/flush")
    url, auth = f"{deployment['url']}/flush", {"Authorization": f"Bearer {deployment['keys']['alice']}"}
    r = requests.post(f"{url}/v1/stylize", files={"image": ("c.png", content_png)}, headers=auth, timeout=60)
    image_id = r.headers["X-Image-Id"]
    sent = requests.post(
        f"{url}/v1/feedback", json={"image_id": image_id, "rating": 2}, headers=auth, timeout=30
    )
    assert sent.status_code == 200

    def stored() -> list[dict]:
        return [
            e
            for e in read_events(deployment["store"], "feedback", user_id="alice")
            if e["image_id"] == image_id
        ]

    time.sleep(1.0)
    assert stored() == []  # still buffered in the replica
    serve.delete("flush")
    assert [e["rating"] for e in stored()] == [2]


def test_alias_moves_and_rollbacks_land_within_ttl(deployment, content_png) -> None:
    registry = deployment["registry"]
    new = write_adapter(deployment["base"], "bob", 7, deployment["root"] / "bob-v2")
    registry.publish_adapter("bob", new, aliases=["production"])
    time.sleep(TTL_S + 0.2)
    assert (
        call(deployment, "bob", files={"image": ("c.png", content_png)}).headers["X-Adapter-Version"] == "2"
    )
    registry.rollback("adapter", "bob", "production")
    time.sleep(TTL_S + 0.2)
    assert (
        call(deployment, "bob", files={"image": ("c.png", content_png)}).headers["X-Adapter-Version"] == "1"
    )


def test_experiment_assignment_is_sticky_and_reported(deployment, content_png) -> None:
    admin = {"Authorization": f"Bearer {deployment['keys']['root']}"}
    new = write_adapter(deployment["base"], "alice", 11, deployment["root"] / "alice-v2")
    deployment["registry"].publish_adapter("alice", new, aliases=["candidate"])
    spec = {
        "name": "exp1",
        "users": ["alice"],
        "variants": [
            {"name": "control", "ref": "production", "weight": 1},
            {"name": "treatment", "ref": "candidate", "weight": 1},
        ],
    }
    assert requests.post(f"{deployment['url']}/v1/admin/experiments", json=spec, headers=admin, timeout=30).ok
    time.sleep(5.5)  # experiment lists are cached for 5 s per ingress replica
    seen = {
        call(deployment, "alice", files={"image": ("c.png", content_png)}).headers["X-Variant"]
        for _ in range(3)
    }
    assert len(seen) == 1 and seen <= {"control", "treatment"}
    rep = requests.get(f"{deployment['url']}/v1/admin/experiments/exp1/report", headers=admin, timeout=30)
    assert rep.status_code == 200
    assert requests.post(f"{deployment['url']}/v1/admin/experiments/exp1/stop", headers=admin, timeout=30).ok


def test_health_endpoints(deployment) -> None:
    assert requests.get(f"{deployment['url']}/v1/health/live", timeout=10).status_code == 200
    ready = requests.get(f"{deployment['url']}/v1/health/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["base_version"] == 1
    assert "/v1/stylize" in requests.get(f"{deployment['url']}/openapi.json", timeout=10).json()["paths"]


def test_killed_replica_is_replaced(deployment, content_png) -> None:
    names = [
        a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "StyleReplica" in a["name"]
    ]
    assert names, "no generator replica found"
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    deadline = time.monotonic() + 90
    while call(deployment, "alice", files={"image": ("c.png", content_png)}).status_code != 200:
        assert time.monotonic() < deadline, "no replica came back"
        time.sleep(1)


def test_overload_is_503_not_a_hang(deployment, content_png) -> None:
    """Last: redeploys the generator with a one-request queue, then floods it."""
    serve.run(
        build_app(
            deployment["config"],
            max_ongoing_requests=1,
            max_queued_requests=1,
            autoscaling_config={"min_replicas": 1, "max_replicas": 1},
        ),
        name="pstyle",
        route_prefix="/",
    )
    big = png(Image.open(io.BytesIO(content_png)).resize((256, 256)))
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        futures = [
            pool.submit(call, deployment, "alice", {"image": ("c.png", big)}, {"size": "256"})
            for _ in range(48)
        ]
        codes = [f.result(timeout=120).status_code for f in futures]
    assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) > 0
    busy = next(f.result() for f in futures if f.result().status_code == 503)
    assert busy.headers["Retry-After"] == "1" and "overloaded" in busy.json()["error"]
    assert call(deployment, "alice", files={"image": ("c.png", content_png)}).status_code == 200
