"""`python -m pstyle.demo.keep_serving --spec FILE`: the demo's app left up for a person to try.

`pstyle demo --keep-serving` runs this after the report, in a subprocess on the demo's Ray cluster
(the core never imports `serve/`). It serves the demo's store on loopback, prints the web page's URL
and the demo users' API keys, and stops cleanly on Ctrl-C (SIGINT) or SIGTERM: Serve shuts down
gracefully, so the replicas flush the feedback they buffered.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path

from pstyle.demo.traffic import deploy_demo_app
from pstyle.distributed.runtime import ensure_ray, serve_on_loopback


def keys_text(spec: dict) -> str:
    """The demo's keys, one per line: adapter users, the newcomer (zero-shot) and the admin."""
    lines = [f"  {user:<24} {key}" for user, key in spec["keys"].items()]
    lines.append(f"  {'newcomer (no adapter)':<24} {spec['newcomer']['key']}")
    lines.append(f"  {'admin (Operator page)':<24} {spec['admin_key']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True, help="serve-spec.json of a demo run")
    parser.add_argument("--address", required=True, help="the running Ray cluster (GCS address)")
    args = parser.parse_args()
    spec = json.loads(args.spec.read_text())
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    ensure_ray(args.address, include_dashboard=False, log_to_driver=False)
    with serve_on_loopback() as url:
        deploy_demo_app(spec["store"])
        print(f"\nThe demo's app is up: {url}/ui/ (API docs: {url}/docs). Sign in with one of these keys:")
        print(keys_text(spec))
        print("Ctrl-C stops it.", flush=True)
        # Short waits: Python runs signal handlers between this thread's bytecodes, and a signal
        # that lands on one of Ray's threads interrupts no blocking wait here.
        while not stop.wait(timeout=0.5):
            pass
        print("stopping the app ...", flush=True)


if __name__ == "__main__":
    main()
