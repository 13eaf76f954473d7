"""serve/config.yaml is what `serve build` makes of the code, and its user_config is a ServeConfig."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pstyle.config import ServeConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "serve" / "config.yaml"


def test_config_matches_serve_build(tmp_path: Path) -> None:
    out = tmp_path / "built.yaml"
    serve_cli = Path(sys.executable).with_name("serve")
    subprocess.run(
        [str(serve_cli), "build", "serve.app:entrypoint", "-o", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    built, ours = yaml.safe_load(out.read_text()), yaml.safe_load(CONFIG.read_text())
    assert ours["http_options"] == built["http_options"]
    (app,), (built_app,) = ours["applications"], built["applications"]
    assert app["import_path"] == built_app["import_path"] == "serve.app:entrypoint"
    assert app["deployments"] == built_app["deployments"]


def test_user_config_is_a_serve_config() -> None:
    for deployment in yaml.safe_load(CONFIG.read_text())["applications"][0]["deployments"]:
        assert ServeConfig.from_dict(deployment["user_config"]) == ServeConfig()


def test_path_rule_override_is_validated() -> None:
    config = ServeConfig.from_dict({"grouped_max_fraction": {"cuda": 0.125}})
    assert config.grouped_max_fraction == {"cuda": 0.125}
    with pytest.raises(ValueError, match=r"grouped_max_fraction\['cpu'\] must be in \[0, 1\]"):
        ServeConfig.from_dict({"grouped_max_fraction": {"cpu": 2.0}})
    with pytest.raises(ValueError, match="grouped_max_fraction"):
        ServeConfig.from_dict({"grouped_max_fraction": {"cuda": "fast"}})
