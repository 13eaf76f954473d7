"""`runs/demo/report.html`: what the demo did, for a person to look at. One self-contained file
(every image embedded as a data URI), plus the PNGs beside it.

Per user: a grid (content | the user's training style images | base output | adapter output |
adapter inside the subject only) and held-out metrics of the adapter against the base and two
learning-free baselines (identity, Reinhard colour transfer). Then the Tune Pareto plot and trial
table, the serving latency histogram, the A/B report and the stage times.

Adapter outputs come from `pstyle.serving.replica.AdapterServer`, the code a Serve replica runs, with the
user's `production` adapter at the end of the demo.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pstyle.config import ServeConfig
from pstyle.data.folders import ContentFolder
from pstyle.data.photos import photo_crops
from pstyle.distributed.adapter_jobs import user_split
from pstyle.images import open_image, save_image, to_tensor
from pstyle.quality.baselines import identity, reinhard
from pstyle.quality.metrics import diversity, ssim, style_distance, swd
from pstyle.serving.experiments import format_report
from pstyle.serving.replica import AdapterServer, StylizeRequest
from pstyle.store import open_store

SEEDS = (0, 1, 2)  # noise seeds: outputs are averaged over them; diversity compares them
N_CONTENT = 8
METHODS = ("identity", "colour transfer", "base", "adapter")


def write_report(out: Path, store: str, state: dict[str, Any], timings: dict[str, float], size: int) -> Path:
    out = Path(out)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    server = AdapterServer(ServeConfig(store=store, size=size))
    scenes = [item["image"] for item in ContentFolder(out / "data" / "content", size)][: N_CONTENT // 2]
    content = torch.cat([photo_crops(N_CONTENT - len(scenes), size), torch.stack(scenes)])  # photos first
    store_obj = open_store(store)
    sections, metrics = [], {}
    for user in sorted(state["adapters"]["production"]):
        train, held = user_split(store_obj, state["manifest"], user, size)  # the adapters' own split
        metrics[user] = user_metrics(server, user, content, train, held)
        grid = figures / f"{user}.png"
        save_image(user_grid(server, user, content[:1], train), grid, nrow=4 + len(train[:3]))
        sections.append(user_section(user, grid, metrics[user], server.registry.aliases("adapter", user)))
    serving = json.loads((out / "serving.json").read_text())
    latency_png = latency_histogram(serving["requests"], figures / "latency.png")
    tune_name = state["tune"]["name"]
    pareto_png = figures / "pareto.png"
    pareto_png.write_bytes(store_obj.get_bytes(f"tune/{tune_name}/pareto.png"))
    trials = json.loads(store_obj.get_bytes(f"tune/{tune_name}/trials.json"))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    body = [
        "<h1>pstyle demo</h1>",
        f"<p>Run <code>{html.escape(state['run'])}</code>, store <code>{html.escape(state['store'])}</code>, "
        f"{size}&times;{size} px. Held-out metrics: SWD to the user's held-out style images "
        "(&times;10<sup>3</sup>, lower is closer to the style), feature-statistics style distance "
        "on the pretrained network (lower is closer), content SSIM (higher keeps more structure), "
        "diversity (mean L1 between noise seeds); "
        f"{N_CONTENT} content images (real photo crops, then procedural scenes), seeds {SEEDS}.</p>",
        stage_table(timings),
        "<h2>Users</h2>",
        *sections,
        "<h2>Hyperparameter search (Ray Tune)</h2>",
        img(pareto_png, "Pareto front"),
        trials_table(trials, state["tune"]),
        "<h2>Serving</h2>",
        newcomer_section(
            serving["newcomer"], out / "served" / "newcomer.png", figures / "newcomer.png", size
        ),
        serving_summary(serving),
        img(latency_png, "latency histogram"),
        "<h2>A/B experiment</h2>",
        f"<pre>{html.escape(format_report(serving['ab_report']))}</pre>",
        promotion(state.get("serve", {})),
    ]
    path = out / "report.html"
    path.write_text(PAGE.format(body="\n".join(body)))
    return path


# ---- figures -------------------------------------------------------------------------------------


@torch.no_grad()
def render(server: AdapterServer, user: str, content: Tensor, seed: int, region: str = "all") -> Tensor:
    """The user's production adapter on `content` (B, 3, S, S), as a Serve replica renders it."""
    requests = [StylizeRequest(user, image, "production", seed=seed, region=region) for image in content]
    results = server.run(requests)
    if results[0].error is not None:
        raise RuntimeError(results[0].error)
    return torch.stack([r.image for r in results])


@torch.no_grad()
def user_metrics(server: AdapterServer, user: str, content: Tensor, train: Tensor, held: Tensor) -> dict:
    """Per method: SWD to `held`, content SSIM and diversity, averaged over SEEDS for the generative
    methods (the baselines are deterministic: one output, diversity 0)."""
    model = server.model
    outputs = {
        "identity": [identity(content, train)],
        "colour transfer": [reinhard(content, train)],
        "base": [model.stylize(content, train, seed=s).clamp(0, 1) for s in SEEDS],
        "adapter": [render(server, user, content, s) for s in SEEDS],
    }
    scores = {}
    for name, outs in outputs.items():
        scores[name] = {
            "swd": sum(swd(o, held, seed=0)["mean"] for o in outs) / len(outs),
            "style": sum(style_distance(o, held).mean().item() for o in outs) / len(outs),
            "ssim": sum(ssim(o, content).mean().item() for o in outs) / len(outs),
            "diversity": diversity(torch.stack(outs)) if len(outs) > 1 else 0.0,
        }
    return scores


@torch.no_grad()
def user_grid(server: AdapterServer, user: str, content: Tensor, train: Tensor) -> Tensor:
    """content | up to 3 training style images | base | adapter | adapter on the subject only."""
    base = server.model.stylize(content, train, seed=0).clamp(0, 1)
    adapter = render(server, user, content, 0)
    subject = render(server, user, content, 0, region="subject")
    return torch.cat([content, train[:3], base, adapter, subject])


def latency_histogram(requests: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    for stage, label in (("users", "per-user traffic"), ("ab", "A/B traffic")):
        values = [r["latency_ms"] for r in requests if r["stage"] == stage]
        if values:
            ax.hist(values, bins=20, alpha=0.6, label=f"{label} ({len(values)})")
    ax.set_xlabel("end-to-end latency over HTTP (ms)")
    ax.set_ylabel("requests")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ---- HTML ----------------------------------------------------------------------------------------


def img(path: Path, alt: str, css_class: str = "") -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img class="{css_class}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else html.escape(str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def user_section(user: str, grid: Path, scores: dict, aliases: dict[str, int]) -> str:
    rows = [
        [m, scores[m]["style"], scores[m]["swd"], scores[m]["ssim"], scores[m]["diversity"]] for m in METHODS
    ]
    change = scores["adapter"]["style"] / scores["base"]["style"] - 1
    return (
        f"<h3>{html.escape(user)}</h3><p>adapter aliases now: "
        + ", ".join(f"{a} v{v}" for a, v in sorted(aliases.items()))
        + f"; held-out style distance of the production adapter vs the base: {100 * change:+.1f}%.</p>"
        + "<p class=cap>content (a real photo) | training style images | base | adapter | adapter, "
        "subject only</p>"
        + img(grid, f"{user} grid", "grid")
        + table(["method", "style distance", "SWD", "SSIM", "diversity"], rows)
    )


def stage_table(timings: dict[str, float]) -> str:
    rows = [[name, f"{seconds:.1f}"] for name, seconds in timings.items()]
    rows.append(["total (before the report)", f"{sum(timings.values()):.1f}"])
    return "<h2>Stages</h2>" + table(["stage", "seconds"], rows)


def trials_table(trials: list[dict[str, Any]], tune: dict[str, Any]) -> str:
    keys = list(tune["chosen"])
    rows = [
        [t["trial_id"], t["status"], t["iterations"], t["swd"], t["ssim"], t["score"], *(t[k] for k in keys)]
        for t in sorted(trials, key=lambda t: (t["score"] is None, t["score"]))
    ]
    chosen = ", ".join(f"{k} = {v:.3g}" for k, v in tune["chosen"].items())
    return f"<p>Chosen (base v{tune['version']}): {html.escape(chosen)}</p>" + table(
        ["trial", "status", "iterations", "SWD", "SSIM", "score", *keys], rows
    )


def newcomer_section(newcomer: dict[str, Any], served: Path, path: Path, size: int) -> str:
    """A new user's first result, zero-shot from the base: content, their style images, the output."""
    images = [newcomer["content"], *newcomer["styles"][:4], served]
    save_image(torch.stack([to_tensor(open_image(p), size) for p in images]), path, nrow=len(images))
    return (
        "<h3>A new user's first result</h3>"
        f"<p>No adapter yet: the base model renders with the code of the {len(newcomer['styles'])} "
        "style images they uploaded (content, style images, output). "
        f"First request {newcomer['first_ms']:.0f} ms, "
        f"the same again with the style code cached {newcomer['cached_ms']:.0f} ms.</p>"
        + img(path, "newcomer")
    )


def serving_summary(serving: dict[str, Any]) -> str:
    from pstyle.bench.common import latency_ms

    rows = []
    for stage in ("users", "ab"):
        values = [r["latency_ms"] / 1e3 for r in serving["requests"] if r["stage"] == stage]
        if values:
            lat = latency_ms(values)
            rows.append([stage, lat["n"], lat["p50"], lat["p99"], lat["mean"]])
    cache = serving["cache"]
    return table(["traffic", "requests", "p50 ms", "p99 ms", "mean ms"], rows) + (
        f"<p>Adapter cache of the replica: {cache.get('hits', 0)} hits, {cache.get('misses', 0)} "
        "cold loads.</p>"
    )


def promotion(serve: dict[str, Any]) -> str:
    promoted = serve.get("promoted")
    if not promoted:
        return "<p>No variant was promoted: production stays where it was.</p>"
    return (
        f"<p>Promoted <b>{html.escape(promoted['variant'])}</b> to production for "
        f"{promoted['moved']} users ({html.escape(promoted['verdict'])}).</p>"
    )


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pstyle demo report</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; }}
img {{ max-width: 100%; image-rendering: pixelated; display: block; margin: .5em 0; }}
table {{ border-collapse: collapse; margin: .5em 0 1.5em; font-variant-numeric: tabular-nums; }}
td, th {{ border: 1px solid #ccc; padding: .2em .6em; text-align: right; }}
th {{ background: #f4f4f4; }} td:first-child {{ text-align: left; }}
img.grid {{ width: min(100%, 960px); }}
pre {{ background: #f7f7f7; padding: .8em; overflow-x: auto; }} .cap {{ color: #555; margin: 0; }}
</style></head><body>
{body}
</body></html>
"""
