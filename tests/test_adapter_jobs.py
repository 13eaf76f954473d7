"""The Ray Data adapter job: many users' adapters fine-tuned, checked on held-out images, published;
failed tries retried a bounded number of times; after a SIGKILLed actor the job goes on without
training any user twice or losing one."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from fixtures.tiny import tiny_config

from pstyle.adapters import load_adapter, set_active_adapter, style_code
from pstyle.adapters.personalize import GroupPersonalizer
from pstyle.config import AdapterJobConfig, PersonalizeConfig
from pstyle.data.folders import StyleUsers
from pstyle.data.splits import holdout_split
from pstyle.data.synth import scene_tensors
from pstyle.distributed.adapter_jobs import (
    AdapterJob,
    UserDataError,
    UserTrainer,
    actor_gpus,
    build_manifest,
    fetch_base,
    load_manifest,
    load_user_data,
    run_adapter_job,
    save_manifest,
)
from pstyle.quality.metrics import style_distance
from pstyle.store import LocalStore
from pstyle.store.layout import adapter_progress_key
from pstyle.store.registry import Registry
from pstyle.training.checkpoint import fingerprint, load_checkpoint

USERS = ["stripes-000", "dots-001", "mosaic-004", "halftone-007"]  # four different style families
CORRUPT = "corrupt-user"
STEPS = 40  # most of the held-out gain comes in the first 20-40 steps (docs/benchmarks.md)


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def users_dir(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four synthetic users, plus one whose every 'image' is corrupt (truncated PNG, not an image)."""
    root = tmp_path_factory.mktemp("users")
    for user in USERS:
        shutil.copytree(synth_dir / "styles" / user, root / user)
    bad = root / CORRUPT
    bad.mkdir()
    png = next((synth_dir / "styles" / USERS[0]).glob("*.png")).read_bytes()
    (bad / "0.png").write_bytes(png[: len(png) // 3])
    (bad / "1.png").write_bytes(b"not an image at all")
    (bad / "2.jpg").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def job(local_ray, trained_base: Path, users_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One job through the CLI (`pstyle personalize --ray`): 2 actors, groups of 2 users."""
    from pstyle.cli.main import cli

    root = tmp_path_factory.mktemp("job")
    store = LocalStore(root / "store")
    Registry(store).publish_base("base", trained_base)
    args = ["personalize", "--ray", "--users", str(users_dir), "--base", "base@latest", "--store",
            str(store.root), "--workers", "2", "--name", "job-1", "--steps", str(STEPS),
            "--summary", str(root / "summary.json"), "--ray-address", "local"]  # fmt: skip
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return store, json.loads((root / "summary.json").read_text()), result.output


def test_job_publishes_one_candidate_version_per_user(job):
    store, summary, output = job
    registry = Registry(store)
    assert summary["published"] == sorted(USERS) and not summary["failed"]
    for user in USERS:
        record = summary["users"][user]
        assert registry.versions("adapter", user) == [record["version"]]
        assert registry.aliases("adapter", user) == {"candidate": record["version"]}
        manifest = registry.get("adapter", user, record["version"]).manifest
        assert manifest["metrics"]["before"]["swd"] == record["before"]["swd"]
        assert manifest["metrics"]["base"] == "base@1" and manifest["metrics"]["job"] == "job-1"
        assert user in output  # the printed table has one line per user
    assert summary["gpus_per_worker"] == 0  # a CPU-only cluster: no GPU asked for
    stored = json.loads(store.get_bytes("jobs/adapters/job-1/summary.json"))
    assert stored["published"] == summary["published"]
    progress = json.loads(store.get_bytes("jobs/adapters/job-1/progress.json"))
    assert progress["done"] == progress["total"] == len(USERS) + 1  # the corrupt user is done too: skipped
    assert (progress["published"], progress["skipped"], progress["failed"]) == (len(USERS), 1, 0)
    assert f"{len(USERS) + 1}/{len(USERS) + 1} users done" in output


def test_each_published_adapter_moves_heldout_outputs_toward_the_style(
    job, trained_base: Path, synth_dir: Path, tmp_path: Path
):
    """Recomputed from the published files: the user's held-out images, the report content batch.

    Per user, the job's own criterion (pretrained-feature style distance) must fall; pixel-patch SWD
    must fall on average over the users (one family, halftone, sits within run-to-run noise of 0 on it).
    """
    store, summary, _ = job
    registry = Registry(store)
    base, _ = load_checkpoint(trained_base)
    cfg = PersonalizeConfig()
    content = scene_tensors(32, 64)[cfg.batch_size : 2 * cfg.batch_size]  # the job's report batch
    styles = StyleUsers(synth_dir / "styles", 64)
    noise = base.generator.make_noise(content, seed=cfg.seed)
    swd_before, swd_after = [], []
    for user in USERS:
        record = summary["users"][user]
        assert record["after"]["style"] < 0.95 * record["before"]["style"], (user, record)
        assert record["improved"], (user, record)
        swd_before.append(record["before"]["swd"])
        swd_after.append(record["after"]["swd"])
        train, held = holdout_split(styles.images(user), user, cfg.holdout, cfg.seed)
        gen = base.generator.__class__(base.cfg)
        gen.load_state_dict(base.generator.state_dict())
        adapter_dir = registry.fetch(registry.get("adapter", user, record["version"]), tmp_path / user)
        load_adapter(adapter_dir, gen, user, fingerprint(base))
        with torch.no_grad():
            set_active_adapter(gen, None)
            base_code = base.encoder(train)[0].expand(len(content), -1)
            before = style_distance(gen(content, base_code, noise).clamp(0, 1), held).mean().item()
            set_active_adapter(gen, user)
            learned = style_code(gen, user).detach().expand(len(content), -1)
            after = style_distance(gen(content, learned, noise).clamp(0, 1), held).mean().item()
        assert after < before, (user, before, after)
    assert sum(swd_after) < 0.95 * sum(swd_before), (swd_before, swd_after)


def test_corrupt_user_is_skipped_and_named(job):
    store, summary, output = job
    assert summary["skipped"] == [CORRUPT]
    reason = summary["users"][CORRUPT]["reason"]
    assert reason.startswith("no valid style images (3 unusable") and "corrupt" in reason, reason
    assert CORRUPT in output and "no valid style images" in output
    assert Registry(store).versions("adapter", CORRUPT) == []


def test_resubmitting_the_job_trains_nobody_again(job):
    """A redone batch (or the same --name submitted again) finds every user's record and skips it."""
    store, summary, _ = job
    _, entries = load_manifest(store, summary["manifest"])
    again = AdapterJob("job-1", str(store.root), "base", 1, PersonalizeConfig(steps=STEPS).to_dict())
    records = UserTrainer(again, log=lambda _: None).train(entries)
    assert sorted(records) == sorted([*USERS, CORRUPT]) and all(r["resumed"] for r in records.values())
    assert all(Registry(store).versions("adapter", u) == [summary["users"][u]["version"]] for u in USERS)


@pytest.fixture(scope="module")
def tiny_base(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base trained for a few steps at 32 px: the fault tests check the bookkeeping, not quality."""
    from pstyle.training.trainer import train_base

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-base") / "base"
    return train_base(tiny_config(), synth_dir, out, progress=False)


class WorkerKilled(BaseException):
    """Stands for a SIGKILL in a test without Ray: nothing in the job catches it."""


def quiet(_: str) -> None:
    """A log that prints nothing."""


def test_a_user_published_but_not_recorded_is_recorded_not_retrained(
    tiny_base: Path, users_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """An actor dies after claiming a user's version but before its alias and record: the redone
    batch records that version (and its alias) instead of training and publishing the user again."""
    store = LocalStore(tmp_path / "store")
    registry = Registry(store)
    registry.publish_base("base", tiny_base)
    _, entries = load_manifest(store, users_dir)
    entries = {u: entries[u] for u in ["dots-001", "halftone-007"]}
    job = AdapterJob("cut", str(store.root), "base", 1, PersonalizeConfig(steps=2, eval_every=1).to_dict(),
                     group_size=1)  # fmt: skip
    set_alias = Registry.set_alias

    def die_on_halftone(self: Registry, kind: str, owner: str, alias: str, number: int) -> None:
        if owner == "halftone-007":
            raise WorkerKilled
        set_alias(self, kind, owner, alias, number)

    monkeypatch.setattr(Registry, "set_alias", die_on_halftone)
    with pytest.raises(WorkerKilled):
        UserTrainer(job, log=quiet).train(entries)
    assert registry.versions("adapter", "halftone-007") == [1]
    assert not store.exists(job.record_key("halftone-007"))
    monkeypatch.setattr(Registry, "set_alias", set_alias)
    fitted = count_fits(monkeypatch)
    records = UserTrainer(job, log=quiet).train(entries)  # the restarted actor
    assert fitted == []  # dots-001 has its record, halftone-007 its version: nobody is trained again
    assert records["dots-001"]["resumed"] and records["halftone-007"]["recovered"]
    recorded = json.loads(store.get_bytes(job.record_key("halftone-007")))
    assert recorded["status"] == "published" and recorded["version"] == 1 and recorded["job"] == "cut"
    for user in entries:
        assert registry.versions("adapter", user) == [1]
        assert registry.aliases("adapter", user) == {"candidate": 1}


def count_fits(monkeypatch: pytest.MonkeyPatch, fail: dict[str, int] | None = None) -> list[list[str]]:
    """Every `GroupPersonalizer.fit_users` call's users, in order. `fail`: {user: n} makes a fit of a
    group holding the user raise its first n times (-1: always)."""
    fitted: list[list[str]] = []
    fit = GroupPersonalizer.fit_users
    left = dict(fail or {})

    def counted_fit(self: GroupPersonalizer, *args: Any, **kwargs: Any) -> dict[str, dict]:
        fitted.append(list(self.user_ids))
        for user in self.user_ids:
            if left.get(user, 0) != 0:
                left[user] -= 1
                raise RuntimeError(f"simulated divergence of {user}")
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(GroupPersonalizer, "fit_users", counted_fit)
    return fitted


def test_failed_tries_are_retried_alone_then_the_user_is_failed(
    tiny_base: Path, users_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """halftone-007's fit raises twice, then works: it is published on its third try. mosaic-004's
    always raises: failed with the reason after 1 + user_retries tries. dots-001 shared a group with
    halftone-007's first failure: retried alone and published; stripes-000 is untouched."""
    store = LocalStore(tmp_path / "store")
    registry = Registry(store)
    registry.publish_base("base", tiny_base)
    _, entries = load_manifest(store, users_dir)
    users = ["dots-001", "halftone-007", "mosaic-004", "stripes-000"]
    cfg = PersonalizeConfig(steps=2, eval_every=1)
    job = AdapterJob("retries", str(store.root), "base", 1, cfg.to_dict(), group_size=2, user_retries=2)
    fitted = count_fits(monkeypatch, fail={"halftone-007": 2, "mosaic-004": -1})
    records = UserTrainer(job, log=quiet).train({u: entries[u] for u in users})
    assert fitted == [
        ["dots-001", "halftone-007"],  # halftone-007 raises (1)
        ["mosaic-004", "stripes-000"],  # mosaic-004 raises (1)
        ["dots-001"],
        ["halftone-007"],  # raises (2)
        ["mosaic-004"],  # raises (2)
        ["stripes-000"],
        ["halftone-007"],  # works
        ["mosaic-004"],  # raises (3): no tries left
    ]
    failed = records["mosaic-004"]
    assert failed["status"] == "failed" and failed["attempts"] == 3
    assert failed["reason"] == "training failed: RuntimeError: simulated divergence of mosaic-004"
    assert registry.versions("adapter", "mosaic-004") == []
    for user, attempts in [("dots-001", 2), ("halftone-007", 3), ("stripes-000", 2)]:
        assert records[user]["status"] == "published" and records[user]["attempts"] == attempts, user
        assert registry.versions("adapter", user) == [1], user
    stored = json.loads(store.get_bytes(job.record_key("mosaic-004")))
    assert stored == failed


def test_tries_cut_short_by_a_dead_actor_count(
    tiny_base: Path, users_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A redone batch after actor deaths: a user whose tries all started and never ended (it kills
    its actor each time) is failed without a fourth try; one with a try cut short trains alone, so
    it cannot take a fresh user down with it."""
    store = LocalStore(tmp_path / "store")
    Registry(store).publish_base("base", tiny_base)
    _, entries = load_manifest(store, users_dir)
    users = ["dots-001", "halftone-007", "mosaic-004", "stripes-000"]
    job = AdapterJob("deaths", str(store.root), "base", 1, PersonalizeConfig(steps=2, eval_every=1).to_dict(),
                     group_size=2, user_retries=2)  # fmt: skip
    for user, attempt in [("dots-001", 1), ("stripes-000", 3)]:
        progress = {"step": 0, "total": 2, "attempt": attempt}
        store.put_bytes(adapter_progress_key("deaths", user), json.dumps(progress).encode())
    fitted = count_fits(monkeypatch)
    records = UserTrainer(job, log=quiet).train({u: entries[u] for u in users})
    assert fitted == [["halftone-007", "mosaic-004"], ["dots-001"]]
    assert records["stripes-000"]["status"] == "failed" and records["stripes-000"]["attempts"] == 3
    assert "never ended" in records["stripes-000"]["reason"]
    assert records["dots-001"]["status"] == "published" and records["dots-001"]["attempts"] == 2
    assert json.loads(store.get_bytes(adapter_progress_key("deaths", "dots-001")))["attempt"] == 2


def test_resumed_job_trains_only_the_users_without_a_record(
    local_ray, tiny_base: Path, users_dir: Path, tmp_path: Path
):
    """The same job name over a larger manifest: the users recorded by the first run are not sent to
    the actors (records unchanged, one version each); the others are trained."""
    store = LocalStore(tmp_path / "store")
    registry = Registry(store)
    registry.publish_base("base", tiny_base)
    _, entries = load_manifest(store, users_dir)
    recipe = PersonalizeConfig(steps=2, eval_every=1, batch_size=4)
    first, rest = USERS[:2], USERS[2:]
    for users in (first, USERS):
        spec = AdapterJobConfig(users=save_manifest(store, f"m{len(users)}", {u: entries[u] for u in users}),
                                base="base@1", store=str(store.root), name="resume", workers=2, group_size=1,
                                n_content=8, ray_address="local")  # fmt: skip
        if users == USERS:
            before = {u: store.get_bytes(f"jobs/adapters/resume/users/{u}.json") for u in first}
        summary = run_adapter_job(spec, recipe, log=quiet)
    assert summary["published"] == sorted(USERS)
    for user in first:
        assert summary["users"][user]["resumed"]
        assert store.get_bytes(f"jobs/adapters/resume/users/{user}.json") == before[user]
    for user in rest:
        assert not summary["users"][user].get("resumed")
    assert all(registry.versions("adapter", u) == [1] for u in USERS)


def map_actors(state: str | None = None) -> dict[str, dict]:
    """This module's Ray's adapter-job actors (Ray Data's map workers around `UserTrainer`) by actor
    id (`state`: only those in it), with pids, restarts and start times, from the GCS actor table:
    `ray.util.state` needs the dashboard, which this Ray lacks."""
    from ray._private.state import actors

    table = actors(actor_state_name=state).items()
    return {actor: info for actor, info in table if "(UserTrainer)" in info["ActorClassName"]}


def _wait_gone(pid: int, timeout: float = 10) -> None:
    """Until `pid` has exited (a zombie awaiting its parent counts as exited)."""
    deadline = time.monotonic() + timeout
    stat = Path(f"/proc/{pid}/stat")
    while time.monotonic() < deadline:
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} still runs {timeout} s after SIGKILL")


def test_killed_actor_is_restarted_without_training_a_user_twice_or_losing_one(
    local_ray, tiny_base: Path, users_dir: Path, tmp_path: Path
):
    """Fault row: a Ray Data actor dies during an adapter job. One of the two actors is SIGKILLed as
    soon as the first user is recorded; Ray Data restarts it and redoes the batch it held, and the
    job finishes: every user published exactly once, the users recorded before the kill untouched."""
    store = LocalStore(tmp_path / "store")
    registry = Registry(store)
    registry.publish_base("base", tiny_base)
    _, entries = load_manifest(store, users_dir)
    manifest = save_manifest(store, "four", {u: entries[u] for u in USERS})
    records = "jobs/adapters/killed/users/"
    earlier = set(map_actors())  # the module's other jobs' actors
    seen: dict[str, Any] = {}

    def kill_an_actor_once_a_user_is_recorded() -> None:
        deadline = time.monotonic() + 240
        while not list(store.list(records)) and time.monotonic() < deadline:
            time.sleep(0.02)
        alive = {a: info["Pid"] for a, info in map_actors("ALIVE").items() if a not in earlier}
        seen["actor"] = actor = min(alive)
        os.kill(alive[actor], signal.SIGKILL)
        seen["at"], seen["alive"], seen["pid"] = time.monotonic(), alive, alive[actor]
        _wait_gone(alive[actor])
        seen["recorded"] = {key: store.get_bytes(key) for key in store.list(records)}
        while time.monotonic() < deadline:  # until the actor runs again, in a new process
            if map_actors("ALIVE").get(actor, {}).get("Pid", seen["pid"]) != seen["pid"]:
                seen["back"] = time.monotonic()
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_an_actor_once_a_user_is_recorded, daemon=True)
    killer.start()
    spec = AdapterJobConfig(users=manifest, base="base@1", store=str(store.root), name="killed", workers=2,
                            group_size=1, n_content=8, ray_address="local")  # fmt: skip
    recipe = PersonalizeConfig(steps=40, eval_every=20, batch_size=4)  # outlasts an actor restart
    summary = run_adapter_job(spec, recipe, log=quiet)
    ended = time.monotonic()
    killer.join(timeout=10)
    assert len(seen.get("alive", ())) == 2 and "back" in seen, (
        seen
    )  # both actors were running when one was killed

    assert summary["published"] == sorted(USERS) and not summary["failed"] and not summary["skipped"]
    assert sorted(store.list(records)) == sorted(f"{records}{u}.json" for u in USERS)  # one record each
    for user in USERS:  # none lost, none published twice
        version = summary["users"][user]["version"]
        assert registry.versions("adapter", user) == [version], user
        assert registry.aliases("adapter", user) == {"candidate": version}, user
    recorded = seen["recorded"]
    assert 1 <= len(recorded) < len(USERS), sorted(recorded)  # the kill came mid-job
    for key, data in recorded.items():  # done before the kill: never trained or recorded again
        assert store.get_bytes(key) == data, key
    killed = f"{socket.gethostname()}:{seen['pid']}"
    assert {u for u in USERS if summary["users"][u]["worker"] == killed} <= {
        json.loads(data)["user"] for data in recorded.values()
    }  # the killed process recorded nothing after its death
    actors = map_actors()
    assert set(actors) - earlier == set(seen["alive"])  # restarted in place: no new actor
    restarted = actors[seen["actor"]]
    assert restarted["NumRestarts"] == 1 and restarted["Pid"] != seen["pid"], restarted
    print(f"kill -> actor back {seen['back'] - seen['at']:.1f} s, -> job end {ended - seen['at']:.1f} s; "
          f"{len(recorded)} of {len(USERS)} users recorded before the kill")  # fmt: skip


def test_batched_group_trains_and_a_failing_group_spares_the_others(
    trained_base: Path, users_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Without Ray: two users share one mixed-forward group; a user whose fit always raises is
    failed after its retries and the job carries on."""
    store = LocalStore(tmp_path / "store")
    Registry(store).publish_base("base", trained_base)
    _, entries = load_manifest(store, users_dir)
    entries = {u: entries[u] for u in ["dots-001", "halftone-007", "mosaic-004"]}
    count_fits(monkeypatch, fail={"mosaic-004": -1})
    cfg = PersonalizeConfig(steps=2, eval_every=1)
    job = AdapterJob("batched", str(store.root), "base", 1, cfg.to_dict(), group_size=2, forward="mixed")
    records = UserTrainer(job, log=quiet).train(entries)
    assert (
        records["mosaic-004"]["status"] == "failed"
        and "simulated divergence" in records["mosaic-004"]["reason"]
    )
    for user in ["dots-001", "halftone-007"]:
        assert records[user]["status"] == "published" and records[user]["group"] == [
            "dots-001",
            "halftone-007",
        ]
        assert Registry(store).aliases("adapter", user) == {"candidate": records[user]["version"]}


def test_manifest_sources_and_bad_entries(tmp_path: Path, users_dir: Path):
    store = LocalStore(tmp_path / "store")
    key = build_manifest(store, users_dir, "june")
    assert key == "manifests/june.json" and build_manifest(store, users_dir, "june") == key  # idempotent
    _, users = load_manifest(store, key)
    assert sorted(users) == sorted([*USERS, CORRUPT]) and all(
        k.startswith("users/") for k in users[USERS[0]]["styles"]
    )
    local = tmp_path / "m.yaml"
    local.write_text(f"users:\n  {USERS[0]}:\n    styles: {users[USERS[0]]['styles']}\n")
    assert load_manifest(store, local)[1] == {USERS[0]: {"styles": users[USERS[0]]["styles"]}}
    with pytest.raises(FileNotFoundError):
        load_manifest(store, "manifests/nope.json")
    data = load_user_data(store, USERS[0], users[USERS[0]], 32, holdout=2)
    assert data.styles.shape == (5, 3, 32, 32) and data.feedback is None and not data.bad_images
    for user, entry, reason in [
        ("../evil", {"styles": []}, "invalid user id"),
        ("bob", {"styles": "x.png"}, "list of store keys"),
        ("bob", {"styles": users[USERS[0]]["styles"][:2]}, "needs more than 2"),
        (CORRUPT, users[CORRUPT], "no valid style images"),
    ]:
        with pytest.raises(UserDataError, match=reason):
            load_user_data(store, user, entry, 32, holdout=2)


def test_feedback_in_manifest_is_loaded(tmp_path: Path, users_dir: Path):
    folder = tmp_path / "users"
    shutil.copytree(users_dir / USERS[1], folder / USERS[1])
    (folder / USERS[1] / "feedback").mkdir()
    shutil.copy(next((users_dir / USERS[1]).glob("*.png")), folder / USERS[1] / "feedback" / "liked.png")
    (folder / USERS[1] / "feedback.json").write_text('[{"image": "feedback/liked.png", "rating": "up"}]')
    store = LocalStore(tmp_path / "store")
    _, users = load_manifest(store, folder)
    data = load_user_data(store, USERS[1], users[USERS[1]], 32, holdout=2)
    assert data.styles.shape[0] == 5 and data.feedback.weights.tolist() == [1.0]


def test_mixed_forward_matches_one_pass_per_user(small_config):
    """The batched multi-user forward (per-sample adapters) equals running each user's adapter alone,
    in outputs and in gradients."""
    from pstyle.models.style_model import StyleModel

    base = StyleModel(small_config.model)
    users = ["a", "b", "c"]
    styles = {u: torch.rand(4, 3, 32, 32) for u in users}
    results = {}
    for forward in ("mixed", "grouped"):
        group = GroupPersonalizer(base, small_config, PersonalizeConfig(), users, forward=forward)
        group._prepare(styles, None)
        torch.manual_seed(1)
        for u in users:
            for p in group.weights[u]:
                torch.nn.init.normal_(p, std=0.1)
        x = torch.rand(6, 3, 32, 32)
        codes = torch.cat([group.codes[u].expand(2, -1) for u in users])
        out = group._render(x, codes, group.generator.make_noise(x, seed=0), users)
        out.square().mean().backward()
        grads = [p.grad for u in users for p in [*group.weights[u], group.codes[u]]]
        results[forward] = (out.detach(), grads)
    torch.testing.assert_close(results["mixed"][0], results["grouped"][0], atol=1e-5, rtol=1e-4)
    for a, b in zip(results["mixed"][1], results["grouped"][1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_a_users_adapter_does_not_depend_on_earlier_draws_or_on_its_group(small_config):
    """Every random draw made for a user comes from their own generator. Trained alone after different
    global draws, a user ends its steps with the bit-identical adapter; trained second in a group, with
    the same one up to float rounding (batch-size-dependent kernels, amplified by Adam's sign-like
    first steps: about 1e-4 here, where different draws move weights by the learning rate, 5e-3)."""
    from pstyle.adapters import adapter_state_dict
    from pstyle.models.style_model import StyleModel

    torch.manual_seed(0)
    base = StyleModel(small_config.model)
    gen = torch.Generator().manual_seed(0)
    styles = {u: torch.rand(4, 3, 32, 32, generator=gen) for u in ("a", "b")}
    content = torch.rand(6, 3, 32, 32, generator=gen)
    cfg = PersonalizeConfig(steps=3, eval_every=3, batch_size=2)

    def train(users: list[str], global_seed: int) -> dict[str, torch.Tensor]:
        """User b's adapter after the last step, whatever early stopping then keeps."""
        torch.manual_seed(global_seed)
        group = GroupPersonalizer(base, small_config, cfg, users, forward="grouped")
        final: dict[str, torch.Tensor] = {}
        group.fit_users(
            content,
            {u: styles[u] for u in users},
            progress=False,
            on_eval=lambda step, steps: final.update(
                {k: v.clone() for k, v in adapter_state_dict(group.generator, "b").items()}
            ),
        )
        return final

    alone, alone_again, second = train(["b"], 1), train(["b"], 2), train(["a", "b"], 3)
    assert any("lora_up" in k and v.abs().max() > 0 for k, v in alone.items()), "the adapter never moved"
    assert alone.keys() == alone_again.keys() == second.keys()
    for key in alone:
        assert torch.equal(alone[key], alone_again[key]), key
        torch.testing.assert_close(alone[key], second[key], atol=1e-3, rtol=0, msg=key)


def test_personalize_ray_needs_users_and_entrypoint_help():
    from pstyle.cli.main import cli

    result = CliRunner().invoke(cli, ["personalize", "--ray", "--base", "base"])
    assert result.exit_code == 2 and "--users" in result.output
    result = CliRunner().invoke(cli, ["personalize", "--base", "b"])
    assert result.exit_code == 2 and "required without --ray" in result.output
    script = Path(__file__).resolve().parents[1] / "ray_jobs" / "train_adapters.py"
    run = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "--users" in run.stdout and "--group-size" in run.stdout


def test_base_cache_follows_the_weights_not_the_store_address(trained_base: Path, tmp_path: Path):
    """A store deleted and rebuilt at the same path reuses `base` v1 for other weights: the worker's
    cached copy of the old v1 must not be used for the new one."""
    other = tmp_path / "other-base"
    shutil.copytree(trained_base, other)
    meta = json.loads((other / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps({**meta, "created": "rebuilt"}))
    fetched = []
    for checkpoint in (trained_base, other):
        shutil.rmtree(tmp_path / "store", ignore_errors=True)
        store = LocalStore(tmp_path / "store")
        Registry(store).publish_base("base", checkpoint)
        fetched.append(fetch_base(store, "base", 1))
    assert fetched[0] != fetched[1]
    assert json.loads((fetched[1] / "meta.json").read_text())["created"] == "rebuilt"


@pytest.mark.parametrize(
    ("actors", "gpus", "cluster_gpus", "expected_gpus"),
    [
        (2, None, 0, 0.0),  # CPU cluster: CPU actors
        (2, None, 4, 1.0),  # enough GPUs: one each
        (4, None, 1, 0.25),  # fewer GPUs than actors: shares that pack onto the GPUs there are
        (3, None, 2, 0.5),
        (3, None, 1, 0.3333),  # rounded down to Ray's precision: three still fit on one GPU
        (2, 0.0, 8, 0.0),  # explicit: CPU even on a GPU cluster
        (2, 1.0, 0, 1.0),  # explicit: wait for GPU nodes an autoscaler has yet to start
    ],
)
def test_actor_gpus_follow_the_cluster_unless_asked(
    actors: int, gpus: float | None, cluster_gpus: float, expected_gpus: float
) -> None:
    share = actor_gpus(actors, gpus, cluster_gpus)
    assert share == expected_gpus
    if gpus is None and cluster_gpus:  # every actor finds room: each GPU holds floor(1/share) of them
        assert int(cluster_gpus) * math.floor(1 / share) >= actors
