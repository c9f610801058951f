"""``task.protocol=study`` end to end: a file in the study's own format, evaluated through ``mode=eval``, scores
each synthetic C3VD frame as the study's eval_depth.py would, model outputs and preprocessing computed
here without ssl4gie code (the study's decoder from its key names, PIL square padding)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import compose_config, task_overrides
from helpers.checkpoints import (
    random_like,
    study_file,
    study_resnet_depth_forward,
    study_resnet_depth_names,
    tiny_backbone,
)
from helpers.depth_reference import study_reference
from PIL import Image

from ssl4gie.errors import ConfigError
from ssl4gie.run.pipeline import execute
from ssl4gie.utils.conf import instantiate_checked

SIZE = 64  # task.input_size of the FAST overrides
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def make_square(image: Image.Image, mode: str) -> Image.Image:
    """The study's padding: a black max(W, H) square with the frame pasted at (int((S−W)/2), int((S−H)/2))."""
    side = max(image.size)
    canvas = Image.new(mode, (side, side), 0)
    canvas.paste(image, (int((side - image.width) / 2), int((side - image.height) / 2)))
    return canvas


def study_inputs(color: Path, depth: Path) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(normalised 1×3×s×s input, s×s target / 65535, native target / 65536) as the study's eval dataset."""
    rgb = make_square(Image.open(color).convert("RGB"), "RGB").resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    x = (np.asarray(rgb, dtype=np.float64) / 255 - MEAN) / STD
    raw = Image.open(depth)
    # NEAREST: the default of Pillow 9.1 (the study's) for I;16; newer Pillow would pick another filter.
    small = make_square(raw, "I;16").resize((SIZE, SIZE), Image.Resampling.NEAREST)
    target = np.asarray(small, dtype=np.float64) / 65535
    native = np.asarray(raw, dtype=np.float64) / 65536
    return torch.from_numpy(x.transpose(2, 0, 1)[None]).float(), target, native


def test_study_resnet_depth_file_scored_by_the_study_protocol(tmp_paths: list[str], tmp_path: Path) -> None:
    overrides = task_overrides("depth", tmp_paths, "backbone=resnet50")
    cfg = compose_config(overrides)
    model = instantiate_checked(cfg.task, _recursive_=False).build_model(
        cfg.backbone, cfg.pretraining, False, str(tmp_path)
    )
    torch.manual_seed(5)
    study = study_resnet_depth_names(random_like(model.state_dict()))
    for key in [k for k in study if k.endswith("running_var")]:
        study[key] = study[key].abs() + 0.5
    path = tmp_path / "depth_resnet.pt"
    study_file(path, study)

    out = tmp_path / "eval"
    execute(compose_config([*overrides, "mode=eval", f"ckpt={path}", "task.protocol=study"], out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == "study" and metrics["n_test"] == 6
    assert {k for k in metrics if k.startswith("test/")} == {
        "test/rmse",
        "test/med_rel",
        "test/mae",
        "test/ssi_mse",
    }
    rows = pd.read_csv(out / "per_image_test.csv")
    assert list(rows["name"]) == [
        f"{v}_{n:04d}" for v in ("t2v2", "c4v3") for n in range(3)
    ]  # the study's order

    encoder = tiny_backbone("resnet", img_size=SIZE)
    encoder.load_state_dict(
        {k: v for k, v in study.items() if not k.startswith(("decoder_levels", "output_conv"))}
    )
    encoder.eval()
    root = Path(cfg.dataset.root)
    for row in rows.itertuples():
        video, number = row.name.split("_")
        (folder,) = root.glob(f"*/{video}")
        x, target, native = study_inputs(folder / f"{number}_color.png", folder / f"{number}_depth.tiff")
        with torch.no_grad():
            feats = encoder.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
            output = study_resnet_depth_forward(study, feats)[0, 0].double().numpy()
        expected = study_reference(output, target, native)
        for key, value in expected.items():
            assert getattr(row, key) == pytest.approx(value, rel=1e-5, abs=1e-6), (row.name, key)
    for key in ("rmse", "med_rel", "mae"):
        assert metrics[f"test/{key}"] == pytest.approx(rows[key].mean(), rel=1e-9)


def test_an_unknown_depth_protocol_is_one_config_error(tmp_paths: list[str]) -> None:
    cfg = compose_config(task_overrides("depth", tmp_paths, "task.protocol=paper"))
    with pytest.raises(ConfigError, match=r"^task.protocol must be one of ssl4gie, study, got 'paper'$"):
        instantiate_checked(cfg.task, _recursive_=False)
