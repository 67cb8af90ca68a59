"""The report's cover: what the data set is and how the weights were trained, as recorded."""

from __future__ import annotations

import pypdf
import torch
from click.testing import CliRunner

from reuse_analysis.checkpoint import save_checkpoint
from reuse_analysis.cli import cli
from reuse_analysis.models import create_model

CIFAR = {"name": "imagefolder:../shared/data/cifar10", "train_size": 50000, "test_size": 10000}
RECIPE = {"lr": 0.1, "batch_size": 64, "augment": True, "seed": 0, "label_smoothing": 0.0}


def _model(path, **meta):
    torch.manual_seed(0)
    model = create_model("densenet40", block_config=(3, 3))
    if meta:
        save_checkpoint(
            path, model.state_dict(), arch="densenet40", config=model.config.to_dict(), **meta
        )
    else:
        torch.save(model.state_dict(), path)  # weights alone: nothing recorded
    return path


def _cover(tmp_path, *models) -> list[str]:
    """The cover's text, one model's block per entry, with the wrapping undone."""
    out = tmp_path / "r.pdf"
    result = CliRunner().invoke(cli, ["report", *map(str, models), "-o", str(out)])
    assert result.exit_code == 0, result.output
    text = pypdf.PdfReader(out).pages[0].extract_text()
    blocks = " ".join(text.split()).split("Model: ")[1:]
    assert len(blocks) == len(models)
    return blocks


def test_cover_of_a_model_trained_on_a_fixed_subset(tmp_path):
    subset = _model(
        tmp_path / "subset.pt",
        dataset=CIFAR,
        epoch=30,
        train_config={
            **RECIPE,
            "epochs": 30,
            "limit_train": 8000,
            "schedule": "onecycle",
            "label_smoothing": 0.1,
        },
    )
    (cover,) = _cover(tmp_path, subset)
    assert (
        "data set: imagefolder:../shared/data/cifar10 (50,000 training images and 10,000 test "
        "images)"
    ) in cover
    assert (
        "trained on: 8,000 training images of 50,000 (a fixed random subset, seed 0), 30 epochs "
        "recipe: one-cycle lr (15 % warm-up to 0.1, cosine to 0), batch 64, "
        "label smoothing 0.1, random crops and flips"
    ) in cover
    assert "training images of 50,000" in cover and "(50000 training images)" not in cover


def test_cover_of_a_snapshot_of_a_paper_schedule_a_recipe_from_before_schedules_and_bare_weights(
    tmp_path,
):
    snapshot = _model(
        tmp_path / "snap.pt",
        dataset=CIFAR,
        epoch=10,
        train_config={**RECIPE, "epochs": 300, "limit_train": None, "schedule": "paper"},
    )
    # written before train had --schedule and --label-smoothing: the paper's schedule
    older = _model(
        tmp_path / "older.pt",
        dataset={"name": "cifar10", "train_size": 50000},
        epoch=5,
        train_config={"lr": 0.1, "batch_size": 64, "augment": False, "epochs": 5, "seed": 0},
    )
    bare = _model(tmp_path / "bare.pt")
    snap_cover, older_cover, bare_cover = _cover(tmp_path, snapshot, older, bare)
    assert (
        "trained on: all 50,000 training images, 10 of 300 planned epochs (saved before the end "
        "of the run) recipe: lr 0.1, ÷10 at 50 % and 75 % of the epochs (the paper's schedule), "
        "batch 64, random crops and flips"
    ) in snap_cover
    assert (
        "trained on: all 50,000 training images, 5 epochs recipe: lr 0.1, ÷10 at 50 % and 75 % of "
        "the epochs (the paper's schedule), batch 64, no augmentation"
    ) in older_cover
    assert "data set: cifar10 (50,000 training images)" in older_cover
    assert "data set: not recorded in the checkpoint" in bare_cover
    assert (
        "trained on: not recorded in the checkpoint recipe: not recorded in the checkpoint"
    ) in bare_cover
