"""Model cards: what a shipped checkpoint is, how it was made and how good it is (JSON)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from reuse_analysis import __version__
from reuse_analysis._io import write_text_atomic
from reuse_analysis.checkpoint import load_checkpoint
from reuse_analysis.evaluation import evaluate_checkpoint
from reuse_analysis.runtime import hardware

__all__ = ["hardware", "make_card", "trained_on", "write_card"]


def make_card(
    model: str | os.PathLike[str],
    *,
    command: str,
    notes: str = "",
    data_dir: str = "data",
    device: str = "auto",
) -> dict[str, Any]:
    """Evaluate ``model`` on its data set's whole test split and describe it. ``hardware``
    is the machine that evaluated it; ``trained_on`` the machines and settings that trained
    it, epoch range by epoch range (see :func:`trained_on`)."""
    ckpt = load_checkpoint(model)
    result = evaluate_checkpoint(model, data_dir=data_dir, device=device, checkpoint=ckpt)
    meta = ckpt.meta
    history = meta.get("history", [])
    return {
        "model": Path(model).name,
        "arch": ckpt.arch,
        "config": ckpt.config,
        "data": meta.get("dataset"),
        "epochs": meta.get("epoch"),
        "training": meta.get("train_config"),
        "test_accuracy": round(result["accuracy"], 4),
        "test_error_percent": round(100 * (1 - result["accuracy"]), 2),
        "test_loss": round(result["loss"], 4),
        "test_images": result["images"],
        "history": history,
        "wall_time_s": round(sum(h.get("seconds", 0) for h in history), 1),
        "command": command,
        "trained_on": trained_on(history),
        "hardware": hardware(),
        "notes": notes,
        "toolkit": f"reuse-analysis {__version__}",
    }


#: The per-epoch fields of a training history that say how the epoch was trained.
SETTING_FIELDS = ("hardware", "precision", "compiled", "threads")


def trained_on(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive epochs trained with the same machine and settings, as one entry each:
    ``{"epochs": [first, last], "hardware": …, "precision": …, "compiled": …, "threads": …,
    "seconds": …}``. A run resumed across machines or flags has several entries; epochs
    logged before ``train`` recorded its settings count as ``"unrecorded"``."""
    segments: list[dict[str, Any]] = []
    for row in history:
        setting = {key: row.get(key, "unrecorded") for key in SETTING_FIELDS}
        epoch = int(row.get("epoch", 0))
        last = segments[-1] if segments else None
        if last is not None and all(last[k] == v for k, v in setting.items()):
            last["epochs"][1] = epoch
            last["seconds"] = round(last["seconds"] + float(row.get("seconds", 0)), 1)
        else:
            seconds = round(float(row.get("seconds", 0)), 1)
            segments.append({"epochs": [epoch, epoch], **setting, "seconds": seconds})
    return segments


def write_card(card: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the card as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    return Path(path)
