"""Where a model runs and how it is measured: device choice, autocast, test subsets, evaluation.

Shared by training, evaluation and the metrics that run a model (probes, prune), so that
none of them has to import the training loop for these helpers.
"""

from __future__ import annotations

import os
import platform

import torch
import torch.nn.functional as F
from torch import nn

from reuse_analysis.data import DataSet, FolderData, ImageData
from reuse_analysis.errors import ReuseAnalysisError

Split = ImageData | FolderData  # an in-memory split or large images read per batch


class DeviceError(ReuseAnalysisError):
    """A device was asked for that this machine does not have."""


def pick_device(name: str) -> torch.device:
    """``auto`` prefers CUDA, then Apple's MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda asked for, but no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("--device mps asked for, but MPS is not available")
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def _subset(data: Split, limit: int | None, seed: int) -> Split:
    if limit is None or limit >= len(data):
        return data
    g = torch.Generator().manual_seed(seed)
    return data.subset(torch.randperm(len(data), generator=g)[:limit].sort().values)


def eval_subset(data: Split, limit: int | None) -> Split:
    """A fixed random ``limit`` of the test images (the same in training and ``evaluate``).

    Random rather than the first ones: image folders list their files class by class.
    """
    return _subset(data, limit, seed=0)


def hardware() -> str:
    """A one-line description of the machine: CPU model and core count, GPU if any."""
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


#: CPU flags (Linux ``/proc/cpuinfo``) of native bfloat16 arithmetic.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_has_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether the CPU computes bfloat16 natively (AMX or AVX-512 BF16); ``None`` where
    the flags cannot be read. Without such units, CPU autocast converts to and from float32
    around every bf16 operation, which usually makes it slower than plain float32."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as fh:
                cpuinfo = fh.read()
        except OSError:
            return None
    flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), None)
    if flags is None:
        return None
    return any(flag in flags.split() for flag in BF16_FLAGS)


def autocast_dtype(device: torch.device) -> torch.dtype:
    """What ``--amp`` computes in: float16 on CUDA (with a gradient scaler), else bfloat16."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def _autocast(device: torch.device, amp: bool):
    if not amp:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=autocast_dtype(device))


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    data: Split,
    ds: DataSet,
    device: torch.device,
    *,
    batch_size: int = 256,
    amp: bool = False,
    channels_last: bool = False,
    progress: bool = False,
) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy (0..1) of ``model`` on ``data``."""
    from tqdm import tqdm

    model.eval()
    loss_sum, correct = 0.0, 0
    starts = range(0, len(data), batch_size)
    for i in tqdm(starts, desc="evaluating", unit="batch", disable=not progress, leave=False):
        idx = torch.arange(i, min(i + batch_size, len(data)))
        x = _to_device(data.batch(idx, ds.mean, ds.std), device, channels_last)
        y = data.labels[i : i + batch_size].to(device)
        with _autocast(device, amp):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return loss_sum / max(len(data), 1), correct / max(len(data), 1)
