"""`pstyle data import`: any image folders, local or on S3, become the layout train-base reads."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
import torch

from pstyle.data.importer import import_folders
from pstyle.images import save_image
from pstyle.training.trainer import TrainingData
from tests.conftest import make_bucket


def _folders(root: Path) -> tuple[Path, Path]:
    g = torch.Generator().manual_seed(0)
    content, styles = root / "coco", root / "wikiart"
    for i in range(3):
        save_image(torch.rand(3, 80, 120, generator=g), content / "train2017" / f"{i:012d}.jpg")
    (content / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    for style, n in (("Ukiyo_e", 4), ("Cubism", 3), ("tiny", 2)):
        for j in range(n):
            save_image(torch.rand(3, 64, 64, generator=g), styles / style / f"{j}.png")
    return content, styles


def _check(out: Path) -> None:
    assert len(list((out / "content" / "images").glob("*.png"))) == 3  # the broken file is skipped
    assert sorted(p.name for p in (out / "styles").iterdir()) == ["Cubism", "Ukiyo_e"]  # "tiny" left out
    data = TrainingData(out, 32, photos=None)
    assert data.user_ids == ["Cubism", "Ukiyo_e"] and data.content.shape[1:] == (3, 32, 32)


def test_import_local_folders(tmp_path):
    content, styles = _folders(tmp_path)
    with pytest.warns(UserWarning, match="broken.jpg"):
        out = import_folders(str(content), str(styles), tmp_path / "data", size=48)
    _check(out)


def test_import_from_s3(tmp_path, s3_env):
    content, styles = _folders(tmp_path)
    bucket = make_bucket(s3_env)
    client = boto3.client("s3")
    for local, prefix in ((content, "coco"), (styles, "wikiart")):
        for path in local.rglob("*.*"):
            client.upload_file(str(path), bucket, f"sets/{prefix}/{path.relative_to(local).as_posix()}")
    with pytest.warns(UserWarning, match="broken.jpg"):
        out = import_folders(f"s3://{bucket}/sets/coco", f"s3://{bucket}/sets/wikiart", tmp_path / "data", 48)
    _check(out)


def test_import_refuses_folders_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        import_folders(str(tmp_path / "empty"), str(tmp_path / "empty"), tmp_path / "data")
