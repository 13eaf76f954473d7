"""The core stays pure PyTorch: importing any of it never imports Ray."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_core_never_imports_ray():
    modules = (
        "pstyle, pstyle.cli, pstyle.train, pstyle.personalize, pstyle.adapters, pstyle.evaluate, "
        "pstyle.demo, pstyle.demo_report, pstyle.serving, pstyle.tuning, pstyle.train_ray, "
        "pstyle.adapter_jobs"
    )
    code = f"import sys, {modules}; bad = [m for m in sys.modules if m.split('.')[0] == 'ray']; print(bad)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]", proc.stdout
