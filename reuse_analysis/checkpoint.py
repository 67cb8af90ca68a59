"""Reading and writing checkpoints: the only module that knows file formats and key layouts.

Everything a user may point the tool at ends up as a flat ``{name: tensor}`` state_dict
on the CPU, plus whatever configuration and metadata the file carried. Loading uses
``weights_only=True``; running a pickle's code requires ``trust_pickle=True``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reuse_analysis._io import atomic_path
from reuse_analysis.errors import CheckpointError
from reuse_analysis.structure import count_parameters  # re-exported: it lives with the shapes

#: Marks files written by this toolkit, so that later commands rebuild the model from them.
FORMAT_TAG = "reuse-analysis/1"

# Keys under which training scripts commonly store the weights, most specific first.
_WRAPPER_KEYS = (
    "state_dict",
    "model_state_dict",
    "model_state",
    "model",
    "net",
    "network",
    "weights",
    "module",
)
# Prefixes added by DataParallel/DDP, torch.compile and Lightning-style wrappers.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "net.", "network.")
# torchvision's own fix-up for files saved before its module names lost their dots
# ("denselayer1.norm.1.weight" became "denselayer1.norm1.weight").
_LEGACY_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)
_HINT = "point the command at a PyTorch checkpoint (.pt/.pth/.ckpt) holding a DenseNet"


@dataclass
class LoadedCheckpoint:
    """Weights on the CPU, with what the file said about them."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    #: How the weights were stored, for ``info`` ("raw state_dict", "'state_dict' in a dict", …).
    container: str
    #: Architecture name and config dict when the file was written by this toolkit.
    arch: str | None = None
    config: dict[str, Any] | None = None
    #: Plain-data metadata found beside the weights (epoch, accuracy, data set, …).
    meta: dict[str, Any] = field(default_factory=dict)


def _safe_globals() -> list[Any]:
    """Harmless types that training scripts save beside weights, allowed without opt-in."""
    allowed: list[Any] = [argparse.Namespace, pathlib.PosixPath, pathlib.WindowsPath]
    allowed += [np.dtype, np.ndarray]
    allowed += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    reconstruct = (
        np._core.multiarray._reconstruct
        if hasattr(np, "_core")
        else np.core.multiarray._reconstruct
    )
    # Files written under numpy 1.x name the same functions under ``numpy.core``.
    allowed += [
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        (reconstruct, "numpy._core.multiarray._reconstruct"),
    ]
    return allowed


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; {_HINT}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes); re-save or re-download it")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _looks_like_text(path: Path) -> str | None:
    head = path.read_bytes()[:512]
    stripped = head.lstrip()
    if stripped[:1] in (b"{", b"["):
        return "JSON"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "text"


def _unsafe_globals(path: Path) -> list[str]:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:
        return []
    # The user's own classes say more about the file than torch's building blocks.
    return sorted(names, key=lambda n: (n.startswith("torch."), n))


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    """``torch.load`` to the CPU, translating every failure into a CheckpointError."""
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            if zipfile.is_zipfile(path):
                # Memory-mapped: tensors are read from disk only when used.
                return torch.load(
                    path, map_location="cpu", weights_only=not trust_pickle, mmap=True
                )
            return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except (pickle.UnpicklingError, KeyError) as exc:
        text = str(exc)
        names = _unsafe_globals(path) if "Weights only load failed" in text else []
        if names or "Unsupported global" in text:
            what = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
            what = what or "Python objects"
            raise CheckpointError(
                f"{path} contains pickled Python objects ({what}) that safe loading refuses; "
                "if you trust the file, rerun with --trust-pickle (it executes code from the file)"
            ) from None
        raise _not_a_checkpoint(path) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, EOFError) or "zip archive" in first or "central directory" in first:
            raise CheckpointError(
                f"{path} is truncated or corrupted ({first}); re-save or re-download it"
            ) from None
        raise CheckpointError(f"{path} could not be read as a checkpoint ({first})") from None
    except (AttributeError, ModuleNotFoundError, ImportError) as exc:
        # Only reachable with --trust-pickle: the pickle names code that is not importable.
        raise CheckpointError(
            f"{path} needs Python code that is not available here to unpickle ({exc}); "
            "save the model's state_dict() instead of the whole model"
        ) from None
    except Exception:
        raise _not_a_checkpoint(path) from None


def _not_a_checkpoint(path: Path) -> CheckpointError:
    kind = _looks_like_text(path)
    if kind:
        return CheckpointError(f"{path} is a {kind} file, not a PyTorch checkpoint; {_HINT}")
    return CheckpointError(f"{path} is not a PyTorch checkpoint (unreadable data); {_HINT}")


def _load_torchscript(path: Path) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: TorchScript archive could not be loaded ({first})"
        ) from None
    return dict(module.state_dict())


def _is_tensor_mapping(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and any(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _plain(value: Any) -> Any:
    """``value`` as JSON-friendly data, or None when it is not plain data."""
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else None
    if isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return items if all(i is not None for i in items) else None
    if isinstance(value, Mapping):
        return {str(k): p for k, v in value.items() if (p := _plain(v)) is not None}
    return None


# Nested records worth keeping beside the weights: training args, data set, metrics history,
# and the connections `reuse-analysis prune` cut.
_META_RECORDS = (
    "meta",
    "args",
    "hyper_parameters",
    "dataset",
    "train_config",
    "history",
    "prune",
)


def _plain_meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-friendly scalars and records beside the weights (epoch, accuracy, args)."""
    meta: dict[str, Any] = {}
    for key, value in obj.items():
        if key in ("state_dict", "config", "optimizer", "scheduler", "rng", "scaler"):
            continue
        plain = _plain(value)
        if plain is None:
            continue
        if not isinstance(plain, (dict, list)) or key in _META_RECORDS:
            meta[str(key)] = plain
    return meta


def _unwrap(obj: Any, path: Path) -> tuple[Mapping[str, Any], str, Mapping[str, Any]]:
    """Find the state_dict inside what ``torch.load`` returned; also return its wrapper."""
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict(), f"pickled {type(obj).__name__} module", {}
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(obj).__name__}, not a state_dict or a dict wrapping one; {_HINT}"
        )
    if _is_tensor_mapping(obj) and not any(k in obj for k in _WRAPPER_KEYS):
        return obj, "raw state_dict", {}
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, torch.nn.Module):
            return inner.state_dict(), f"pickled module under {key!r}", obj
        if _is_tensor_mapping(inner):
            return inner, f"state_dict under {key!r}", obj
    if _is_tensor_mapping(obj):
        return obj, "raw state_dict", {}
    keys = ", ".join(repr(k) for k in list(obj)[:8])
    raise CheckpointError(
        f"{path} holds a dict with no weight tensors (keys: {keys}); "
        "save model.state_dict(), or a dict with it under 'state_dict' or 'model'"
    )


def strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove prefixes shared by every key that wrappers add (``module.``, ``_orig_mod.``, …)."""
    sd = dict(state_dict)
    changed = True
    while changed and sd:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                changed = True
    return sd


def upgrade_legacy_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename torchvision's pre-0.3 DenseNet keys (``norm.1`` → ``norm1``)."""
    out = {}
    for key, value in state_dict.items():
        match = _LEGACY_DENSENET_KEY.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return out


def _tensors_only(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {str(k): v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}


def load_checkpoint(
    path: str | os.PathLike[str], *, trust_pickle: bool = False
) -> LoadedCheckpoint:
    """Load any common DenseNet checkpoint as a CPU state_dict plus what the file records.

    Accepts raw state_dicts, dicts wrapping one (``state_dict``, ``model``,
    ``model_state_dict``, ``net``, …), wrapper prefixes (``module.``, ``_orig_mod.``,
    ``model.``), torchvision's legacy key names, the legacy non-zip format, TorchScript
    archives and this toolkit's own files. Raises CheckpointError with a fix-it message.
    """
    path = Path(path)
    _check_file(path)
    if _is_torchscript(path):
        raw: Mapping[str, Any] = _load_torchscript(path)
        container, wrapper = "TorchScript archive", {}
    else:
        raw, container, wrapper = _unwrap(_torch_load(path, trust_pickle), path)
    state_dict = upgrade_legacy_keys(strip_wrapper_prefixes(_tensors_only(raw)))
    if not state_dict:
        raise CheckpointError(f"{path} holds no weight tensors; {_HINT}")
    ours = wrapper.get("format") == FORMAT_TAG
    return LoadedCheckpoint(
        path=path,
        state_dict=state_dict,
        container="reuse-analysis checkpoint" if ours else container,
        arch=wrapper.get("arch") if ours else None,
        config=dict(wrapper["config"]) if ours and "config" in wrapper else None,
        meta=_plain_meta(wrapper),
    )


def check_finite(state_dict: Mapping[str, torch.Tensor], keys: list[str] | None = None) -> None:
    """Raise CheckpointError naming the first tensors that hold NaN or infinite values."""
    bad = []
    for key in keys if keys is not None else list(state_dict):
        tensor = state_dict[key]
        if not tensor.is_floating_point():
            continue
        # numpy on the CPU: no thread-pool start-up per tensor, which dominates here.
        values = (
            tensor.detach().numpy() if tensor.dtype != torch.bfloat16 else tensor.float().numpy()
        )
        finite = np.isfinite(values)
        if not finite.all():
            bad.append(f"{key} ({int(finite.size - finite.sum())} of {finite.size})")
    if bad:
        listed = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise CheckpointError(
            f"NaN or infinite weights in {listed}; the training diverged or the file is "
            "corrupted: use an earlier checkpoint"
        )


def save_checkpoint(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, torch.Tensor],
    *,
    arch: str | None,
    config: Mapping[str, Any],
    **extra: Any,
) -> Path:
    """Write weights + config (+ plain-data extras) atomically, loadable with weights_only."""
    payload = {
        "format": FORMAT_TAG,
        "arch": arch,
        "config": dict(config),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        **extra,
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_training_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The whole dict of a training state written by :func:`save_checkpoint` (weights,
    optimizer, RNG, position), loaded with ``weights_only`` onto the CPU."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged state: say which file and how to go on
        raise CheckpointError(
            f"{path} is not a readable training state ({type(exc).__name__}); "
            "restore it from version control or start the run without --resume"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT_TAG or "position" not in obj:
        raise CheckpointError(
            f"{path} is not a reuse-analysis training state; start the run without --resume"
        )
    return obj


def human_count(n: int) -> str:
    """``812345`` → ``0.81M``; the paper quotes parameters in millions."""
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(n)


__all__ = [
    "FORMAT_TAG",
    "LoadedCheckpoint",
    "check_finite",
    "count_parameters",
    "human_count",
    "load_checkpoint",
    "load_training_state",
    "save_checkpoint",
    "strip_wrapper_prefixes",
    "upgrade_legacy_keys",
]
