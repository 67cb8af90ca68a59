"""Model cards: what a shipped checkpoint is, how it was made and how good it is (JSON)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from reuse_analysis import __version__
from reuse_analysis._io import write_text_atomic
from reuse_analysis.checkpoint import load_checkpoint
from reuse_analysis.evaluation import evaluate_checkpoint


def hardware() -> str:
    """A one-line description of the machine: CPU model and core count, GPU if any."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(
                line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}"


def make_card(
    model: str | os.PathLike[str],
    *,
    command: str,
    notes: str = "",
    data_dir: str = "data",
    device: str = "auto",
) -> dict[str, Any]:
    """Evaluate ``model`` on its data set's whole test split and describe it."""
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
        "hardware": hardware(),
        "notes": notes,
        "toolkit": f"reuse-analysis {__version__}",
    }


def write_card(card: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the card as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    return Path(path)
