"""Reading and writing checkpoints: the only module that knows file formats and key layouts.

Everything a user may point the tool at ends up as a flat ``{name: tensor}`` state_dict
on the CPU, plus whatever configuration and metadata the file carried. Loading uses
``weights_only=True``; running a pickle's code requires ``trust_pickle=True``.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
import sys
import tarfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reuse_analysis import _unpickler
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


def _shown(path: Path) -> str:
    """The path as it goes into a message: quoted when it holds a newline or other
    unprintable characters, so that the ``Error:`` line stays one line."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, minus torch's advice to load unsafely."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    kept = [ln for ln in lines if "weights_only" not in ln and "weights only" not in ln.lower()]
    return (kept or [type(exc).__name__])[0][:300]


# What a Hugging Face style folder (or any folder) may hold as its weights, in the order
# transformers and timm prefer them, and what marks a sharded checkpoint.
_FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".tar", ".pkl")
_SHARD = re.compile(r"-\d{5}-of-\d{5}\.|\.index\.json$")


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return shown or "nothing"


def _folder_weights(path: Path) -> Path:
    """The one weights file of a Hugging Face style folder, or a CheckpointError saying
    which files the folder holds."""
    names = sorted(p.name for p in path.iterdir() if p.is_file())
    shards = [n for n in names if _SHARD.search(n)]
    if shards:
        raise CheckpointError(
            f"{_shown(path)} holds a sharded checkpoint ({_listing(shards)}); this tool reads "
            "one weights file: load the shards and save a single state_dict"
        )
    for name in _FOLDER_WEIGHTS:
        if name in names:
            return path / name
    weights = [n for n in names if n.endswith(_WEIGHT_SUFFIXES)]
    if len(weights) == 1:
        return path / weights[0]
    what = "several weights files" if weights else "no weights file"
    raise CheckpointError(
        f"{_shown(path)} is a directory with {what} (it holds {_listing(names)}); point the "
        "command at one checkpoint file, or a folder with model.safetensors or pytorch_model.bin"
    )


def _weights_file(path: Path) -> Path:
    """The regular file to read for ``path``: the path itself or a folder's weights file."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise CheckpointError(f"{_shown(path)}: no such file; check the path") from None
    if stat.S_ISDIR(mode):
        return _weights_file(_folder_weights(path))
    kinds = {
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
        stat.S_ISFIFO: "a named pipe (FIFO)",
        stat.S_ISSOCK: "a socket",
    }
    for test, kind in kinds.items():
        if test(mode):
            raise CheckpointError(
                f"{_shown(path)} is {kind}, not a file; save the checkpoint to a file and "
                "point the command at it"
            )
    if path.stat().st_size == 0:
        raise CheckpointError(f"{_shown(path)} is empty (0 bytes); re-save or re-download it")
    return path


def _head(path: Path, n: int = 512) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def _is_safetensors(path: Path, head: bytes) -> bool:
    if path.suffix == ".safetensors":
        return True
    size = int.from_bytes(head[:8], "little")
    return len(head) > 9 and 2 <= size <= path.stat().st_size - 8 and head[8:9] == b"{"


def _is_torchscript(names: list[str]) -> bool:
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _looks_like_text(head: bytes) -> str | None:
    if head.lstrip()[:1] in (b"{", b"["):
        return "JSON"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return "text"


def _not_a_checkpoint(path: Path, head: bytes) -> CheckpointError:
    kind = _looks_like_text(head)
    if kind:
        return CheckpointError(
            f"{_shown(path)} is a {kind} file, not a PyTorch checkpoint; {_HINT}"
        )
    return CheckpointError(f"{_shown(path)} is not a PyTorch checkpoint (unreadable data); {_HINT}")


def _read_pickled(path: Path, reader: Any) -> _unpickler.Unpickled:
    """Run one of the restricted readers, turning every failure into a CheckpointError."""
    try:
        return reader(path)
    except _unpickler.NotTorchSave as exc:
        raise CheckpointError(f"{_shown(path)} {exc}; {_HINT}") from None
    except CheckpointError as exc:
        raise CheckpointError(
            f"{_shown(path)} is damaged ({exc}); re-save or re-download it"
        ) from None
    except (EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"{_shown(path)} is truncated or corrupted ({_first_line(exc)}); "
            "re-save or re-download it"
        ) from None
    except (MemoryError, RecursionError):
        raise CheckpointError(
            f"{_shown(path)} describes objects too large to read; it is damaged or hostile"
        ) from None
    except OSError:
        raise
    except Exception as exc:
        raise CheckpointError(
            f"{_shown(path)} is truncated or corrupted (its pickle: {_first_line(exc)}); "
            "re-save or re-download it"
        ) from None


def _code_error(path: Path, names: list[str]) -> CheckpointError:
    what = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return CheckpointError(
        f"{_shown(path)} would run code when unpickled ({what}); it was not run. Save the "
        "model's state_dict() instead, or, only if you trust the file, rerun with "
        "--trust-pickle (which runs that code)"
    )


def _trusted_load(path: Path, names: list[str]) -> Any:
    """``torch.load`` with ``weights_only=False``: runs the file's code, and says so first."""
    print(
        f"Warning: --trust-pickle: running the code in {_shown(path)} to unpickle it "
        f"({', '.join(names[:4])})",
        file=sys.stderr,
        flush=True,
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError, ImportError) as exc:
        raise CheckpointError(
            f"{_shown(path)} needs Python code that is not available here to unpickle "
            f"({_first_line(exc)}); save the model's state_dict() instead of the whole model"
        ) from None
    except Exception as exc:
        raise CheckpointError(
            f"{_shown(path)} could not be unpickled ({_first_line(exc)}); re-save it"
        ) from None


def _load_torchscript(path: Path, zf: zipfile.ZipFile) -> dict[str, torch.Tensor]:
    bad = zf.testzip()
    if bad is not None:
        raise CheckpointError(
            f"{_shown(path)} is damaged: record {bad} fails its CRC check; "
            "re-save or re-download it"
        )
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise CheckpointError(
            f"{_shown(path)}: TorchScript archive could not be loaded ({_first_line(exc)})"
        ) from None
    return dict(module.state_dict())


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and string metadata of a safetensors file (``safetensors.torch``, which
    validates the header and offsets itself)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118
    except Exception as exc:
        raise CheckpointError(
            f"{_shown(path)} is not a valid safetensors file ({_first_line(exc)}); "
            "re-save or re-download it"
        ) from None
    return tensors, meta


def _read(path: Path, trust_pickle: bool) -> tuple[Any, str | None, dict[str, Any]]:
    """What the file holds: the unpickled object (or a state_dict), a container label for
    formats that are not pickles, and metadata those formats carry."""
    head = _head(path)
    zipped, legacy = head[:4] == b"PK\x03\x04", _unpickler.is_legacy(head)
    if not (zipped or legacy) and _is_safetensors(path, head):
        tensors, meta = _load_safetensors(path)
        return tensors, "safetensors file", meta
    if zipped and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                if _is_torchscript(zf.namelist()):
                    return _load_torchscript(path, zf), "TorchScript archive", {}
        except zipfile.BadZipFile as exc:
            raise CheckpointError(
                f"{_shown(path)} is truncated or corrupted ({_first_line(exc)}); "
                "re-save or re-download it"
            ) from None
        found = _read_pickled(path, _unpickler.read_zip)
    elif zipped:
        raise CheckpointError(
            f"{_shown(path)} is truncated or corrupted (a zip archive without its central "
            "directory); re-save or re-download it"
        )
    elif legacy:
        found = _read_pickled(path, _unpickler.read_legacy)
    elif tarfile.is_tarfile(path):
        raise CheckpointError(
            f"{_shown(path)} is a tar archive (the format of PyTorch before 0.4, or not a "
            "checkpoint); re-save it with a current PyTorch"
        )
    else:
        raise _not_a_checkpoint(path, head)
    if found.code:
        if not trust_pickle:
            raise _code_error(path, found.code)
        return _trusted_load(path, found.code), None, {}
    return found.obj, None, {}


def _is_weight(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, _unpickler.RefusedTensor))


def _is_tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and any(_is_weight(v) for v in obj.values())


#: Deepest nesting copied into the metadata; the rest of a record is left out.
_META_DEPTH = 20


def _plain(value: Any, path: tuple[int, ...] = ()) -> Any:
    """``value`` as JSON-friendly data, or None when it is not plain data.

    ``path`` holds the ids of the containers above ``value``: a container that holds
    itself, or nesting deeper than _META_DEPTH, is not plain data.
    """
    if len(path) > _META_DEPTH or id(value) in path:
        return None
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, _unpickler.Placeholder) and not _unpickler.is_module(value):
        # A dict subclass or a config object whose class is not run: its data.
        value = value.items or value.attributes or None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        plain_kind = value.layout == torch.strided and not value.is_meta and value.numel() == 1
        return value.item() if plain_kind and not value.is_quantized else None
    if isinstance(value, (str, int, float, bool)):
        return value
    inner = (*path, id(value))
    if isinstance(value, (list, tuple)):
        items = [_plain(v, inner) for v in value]
        return items if all(i is not None for i in items) else None
    if isinstance(value, Mapping):
        return {str(k): p for k, v in value.items() if (p := _plain(v, inner)) is not None}
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


def _module_weights(obj: Any) -> dict[str, Any] | None:
    """The state_dict of a pickled module: a real one (--trust-pickle) or placeholders."""
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    if _unpickler.is_module(obj):
        return _unpickler.module_state_dict(obj)
    return None


def _module_label(obj: Any) -> str:
    if isinstance(obj, _unpickler.Placeholder):
        return f"{obj.global_name} module, read without running its code"
    return f"{type(obj).__name__} module"


def _unwrap(obj: Any, path: Path) -> tuple[Mapping[str, Any], str, Mapping[str, Any]]:
    """Find the state_dict inside what the file held; also return its wrapper."""
    if (weights := _module_weights(obj)) is not None:
        return weights, f"pickled {_module_label(obj)}", {}
    if isinstance(obj, _unpickler.Placeholder) and obj.items:
        obj = dict(obj.items)  # a dict subclass whose class is not allowed (AttributeDict, …)
    if not isinstance(obj, Mapping):
        kind = obj.global_name if isinstance(obj, _unpickler.Placeholder) else type(obj).__name__
        raise CheckpointError(
            f"{_shown(path)} holds a {kind}, not a state_dict or a dict wrapping one; {_HINT}"
        )
    if _is_tensor_mapping(obj) and not any(k in obj for k in _WRAPPER_KEYS):
        return obj, "raw state_dict", {}
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if (weights := _module_weights(inner)) is not None:
            return weights, f"pickled {_module_label(inner)} under {key!r}", obj
        if _is_tensor_mapping(inner):
            return inner, f"state_dict under {key!r}", obj
    if _is_tensor_mapping(obj):
        return obj, "raw state_dict", {}
    keys = ", ".join(repr(k) for k in list(obj)[:8])
    raise CheckpointError(
        f"{_shown(path)} holds a dict with no weight tensors (keys: {keys}); "
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


def _tensors_only(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in state_dict.items() if _is_weight(v)}


def _span(tensor: torch.Tensor) -> int:
    """How many stored values a strided tensor reaches (fewer than numel for expanded views)."""
    if tensor.numel() == 0:
        return 0
    return 1 + sum((s - 1) * abs(st) for s, st in zip(tensor.shape, tensor.stride(), strict=True))


_INTEGER_WEIGHTS = (torch.int8, torch.uint8)
# A layer's own tensors, which must be real floats with values (other buffers may not be).
_LAYER_TENSORS = (".weight", ".bias", ".running_mean", ".running_var")
# Float types that numpy and most torch CPU kernels do not compute in: analysed as float32.
_WIDENED = tuple(
    getattr(torch, n)
    for n in (
        "float8_e4m3fn",
        "float8_e4m3fnuz",
        "float8_e5m2",
        "float8_e5m2fnuz",
        "float8_e8m0fnu",
    )
    if hasattr(torch, n)
)


def _tensor_problem(key: str, value: Any) -> str | None:
    """Why this tensor cannot be analysed, or None when it can."""
    if isinstance(value, _unpickler.RefusedTensor):
        return f"{key} is {value.reason}"
    if value.layout != torch.strided:
        return f"{key} is a sparse tensor ({value.layout}); save it with .to_dense()"
    if value.is_meta:
        return f"{key} is a meta-device tensor (a shape without values); save the trained weights"
    if value.is_quantized:
        return f"{key} is quantized ({value.dtype}); load the float model's weights instead"
    if value.is_nested:
        return f"{key} is a nested tensor; save a regular one"
    if value.is_complex():
        return f"{key} is complex ({value.dtype}); DenseNet weights are real numbers"
    layer_tensor = value.dim() >= 2 or key.endswith(_LAYER_TENSORS)
    if not value.is_floating_point() and layer_tensor:
        kind = "quantized weights" if value.dtype in _INTEGER_WEIGHTS else "not floating point"
        return (
            f"{key} is stored as {value.dtype} ({kind}); this tool reads float weights: "
            "load the float model or dequantize them first"
        )
    if value.is_floating_point() and value.numel() == 0 and layer_tensor:
        return f"{key} holds no values (shape {tuple(value.shape)}); the file is damaged"
    return None


def _checked_tensors(state_dict: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """Refuse every tensor the analysis cannot use, with its reason; copy small expanded
    views into real tensors and refuse large ones, so no step later materialises more
    memory than the file holds."""
    budget = max(path.stat().st_size, 2**20)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        problem = _tensor_problem(key, value)
        if problem is None and value.device.type != "cpu":
            value = value.cpu()
        if problem is None and value.numel() > _span(value):
            logical = value.numel() * value.element_size()
            if logical > budget:
                problem = (
                    f"{key} is an expanded view: shape {tuple(value.shape)} ({value.numel():,} "
                    f"values) that repeat {_span(value):,} stored ones; save it with .clone()"
                )
            else:
                value = value.clone()
        if problem is not None:
            raise CheckpointError(f"{_shown(path)}: {problem}")
        out[key] = value.float() if value.dtype in _WIDENED else value
    return out


def load_checkpoint(
    path: str | os.PathLike[str], *, trust_pickle: bool = False
) -> LoadedCheckpoint:
    """Load any common DenseNet checkpoint as a CPU state_dict plus what the file records.

    Accepts raw state_dicts, dicts wrapping one (``state_dict``, ``model``,
    ``model_state_dict``, ``net``, …), whole pickled modules (read without their code),
    wrapper prefixes (``module.``, ``_orig_mod.``, ``model.``), torchvision's legacy key
    names, the zip and legacy ``torch.save`` formats, TorchScript archives, safetensors
    files, Hugging Face style folders with one weights file, and this toolkit's own files.
    Nothing in the file is run unless ``trust_pickle`` is set and the file needs it (said
    on stderr first). Raises CheckpointError with a fix-it message.
    """
    path = _weights_file(Path(path))
    with _unpickler.quiet_warnings():
        obj, container, extra = _read(path, trust_pickle)
        if container is None:
            raw, container, wrapper = _unwrap(obj, path)
        else:
            raw, wrapper = obj, {}
        state_dict = upgrade_legacy_keys(strip_wrapper_prefixes(_tensors_only(raw)))
        if not state_dict:
            raise CheckpointError(f"{_shown(path)} holds no weight tensors; {_HINT}")
        state_dict = _checked_tensors(state_dict, path)
    ours = wrapper.get("format") == FORMAT_TAG
    return LoadedCheckpoint(
        path=path,
        state_dict=state_dict,
        container="reuse-analysis checkpoint" if ours else container,
        arch=wrapper.get("arch") if ours else None,
        config=dict(wrapper["config"]) if ours and "config" in wrapper else None,
        meta={**extra, **_plain_meta(wrapper)},
    )


def _finite_values(tensor: torch.Tensor) -> np.ndarray:
    """The stored values of a floating tensor as numpy (an expanded view: each value once)."""
    if tensor.numel() > _span(tensor) and all(st >= 0 for st in tensor.stride()):
        tensor = tensor.as_strided((_span(tensor),), (1,), tensor.storage_offset())
    tensor = tensor.detach()
    if tensor.dtype not in (torch.float16, torch.float32, torch.float64):
        tensor = tensor.float()
    return tensor.numpy()


def check_finite(state_dict: Mapping[str, torch.Tensor], keys: list[str] | None = None) -> None:
    """Raise CheckpointError naming the first tensors that hold NaN or infinite values."""
    bad = []
    for key in keys if keys is not None else list(state_dict):
        tensor = state_dict[key]
        if not tensor.is_floating_point():
            continue
        # numpy on the CPU: no thread-pool start-up per tensor, which dominates here.
        finite = np.isfinite(_finite_values(tensor))
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
