"""Training with the paper's recipe (Huang et al. §4.2), resumable, single process or DDP.

Reads top to bottom: config → data → model → optimizer → epochs of steps → checkpoints.
Every batch draws its randomness from a seed derived from (seed, epoch, step, rank), so
a run stopped at any point and resumed with ``resume=True`` ends with the same weights
as one that never stopped (on the CPU; GPU kernels may not be bitwise deterministic).

Files written next to ``out`` (all atomically, by rank 0 only):
``out``             weights + config + data set + metrics history (what analysis needs)
``out.train.pt``    the above + optimizer, scheduler, RNG and position (for ``resume``)
``out.log.csv``     one row per epoch
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from reuse_analysis._io import atomic_path
from reuse_analysis.checkpoint import FORMAT_TAG, save_checkpoint
from reuse_analysis.data import DataSet, FolderData, ImageData, load_dataset
from reuse_analysis.errors import ReuseAnalysisError

Split = ImageData | FolderData  # an in-memory split or large images read per batch

LOG_COLUMNS = [
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "seconds",
    "images_per_s",
]


@dataclass
class TrainConfig:
    """Everything that defines a run; saved in every checkpoint."""

    arch: str
    dataset: str
    data_dir: str = "data"
    epochs: int = 300  # paper: 300 on CIFAR, 40 on SVHN
    batch_size: int = 64  # per process
    lr: float = 0.1  # divided by 10 at 50 % and 75 % of the epochs
    momentum: float = 0.9  # Nesterov
    weight_decay: float = 1e-4
    augment: bool = True  # random crop (4-pixel zero padding) + horizontal flip
    drop_rate: float | None = None  # None: 0.2 without augmentation, 0 with (paper §4.2)
    out: str = "trained_models/model.pt"
    resume: bool = False
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | mps
    amp: bool = False  # bf16 autocast on CPU, fp16 + GradScaler on CUDA
    channels_last: bool = False
    memory_efficient: bool = False  # recompute bottlenecks in backward: less memory
    snapshot_epochs: tuple[int, ...] = ()  # also keep out-epochN.pt after these epochs
    limit_train: int | None = None  # use a fixed random subset of the training images
    limit_test: int | None = None  # evaluate on a fixed random subset of N test images
    checkpoint_minutes: float = 10.0  # mid-epoch checkpoints this often (long CPU epochs)
    eval_batch_size: int = 256
    model_overrides: dict[str, Any] = field(default_factory=dict)

    def effective_drop_rate(self) -> float:
        if self.drop_rate is not None:
            return self.drop_rate
        return 0.0 if self.augment else 0.2


class TrainingError(ReuseAnalysisError):
    """A run that cannot start or resume as asked."""


# ----------------------------------------------------------------------------- helpers
def pick_device(name: str) -> torch.device:
    """``auto`` prefers CUDA, then Apple's MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda asked for, but no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise TrainingError("--device mps asked for, but MPS is not available")
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def _note(message: str) -> None:
    """A line on stderr that does not break the progress bar (stdout is for results)."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def _step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + step) * 131 + rank


def _paths(out: str) -> tuple[Path, Path, Path]:
    model = Path(out)
    stem = model.with_suffix("")
    return model, Path(f"{stem}.train.pt"), Path(f"{stem}.log.csv")


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: torch.device) -> _Dist:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return _Dist(dist.get_rank(), dist.get_world_size())


def _epoch_indices(n: int, epoch: int, cfg: TrainConfig, dist: _Dist) -> list[int]:
    """This rank's share of the epoch's shuffled indices (DistributedSampler semantics)."""
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(
        range(n), num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=cfg.seed
    )
    sampler.set_epoch(epoch)
    return list(sampler)


def _batches(indices: list[int], batch_size: int) -> list[list[int]]:
    return [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]


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


def _autocast(device: torch.device, amp: bool):
    if not amp:
        return torch.autocast(device.type, enabled=False)
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


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


def _model_overrides(cfg: TrainConfig, ds: DataSet) -> dict[str, Any]:
    """Config fields set by the data set and the command line.

    The paper's DenseNets follow its dropout rule (``effective_drop_rate``); the zoo's
    models keep their own dropout (the book's 0.5 in AlexNet, VGG and NiN) unless
    ``--drop-rate`` is given, and only DenseNets have a memory-efficient mode.
    """
    from reuse_analysis.models import config_class, is_densenet

    overrides: dict[str, Any] = {"num_classes": ds.num_classes, "in_channels": ds.in_channels}
    if is_densenet(cfg.arch):
        overrides["drop_rate"] = cfg.effective_drop_rate()
        if cfg.memory_efficient:
            overrides["memory_efficient"] = True
        return {**overrides, **cfg.model_overrides}
    fields = {f.name for f in dataclasses.fields(config_class(cfg.arch))}
    if cfg.memory_efficient:
        raise TrainingError(f"--memory-efficient applies to DenseNets only, not {cfg.arch}")
    if cfg.drop_rate is not None:
        if "drop_rate" not in fields:
            raise TrainingError(f"{cfg.arch} has no dropout; leave out --drop-rate")
        overrides["drop_rate"] = cfg.drop_rate
    return {**overrides, **cfg.model_overrides}


def build_model(cfg: TrainConfig, ds: DataSet) -> tuple[nn.Module, dict[str, Any]]:
    """The architecture named in ``cfg`` sized for the data set; returns it and its config."""
    from reuse_analysis.models import MODELS, create_model

    if cfg.arch not in MODELS:
        raise TrainingError(f"unknown model {cfg.arch!r}; known models: {', '.join(MODELS)}")
    try:
        model = create_model(cfg.arch, **_model_overrides(cfg, ds))
    except ValueError as exc:
        raise TrainingError(str(exc)) from None
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config)
    return model, config


# ----------------------------------------------------------------------------- state
@dataclass
class _State:
    epoch: int = 0  # completed epochs
    step: int = 0  # completed steps within the current epoch
    history: list[dict[str, float]] = field(default_factory=list)
    seen: int = 0  # images and running sums of the current epoch (for resume)
    loss_sum: float = 0.0
    correct: int = 0
    seconds: float = 0.0


def _payload(model, cfg, model_config, ds, state, test_acc) -> dict[str, Any]:
    return {
        "arch": cfg.arch,
        "config": model_config,
        "dataset": ds.describe(),
        "train_config": {k: v for k, v in dataclasses.asdict(cfg).items()},
        "epoch": state.epoch,
        "test_acc": test_acc,
        "history": state.history,
    }


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _save_training_state(path, model, optimizer, scheduler, scaler, cfg, model_config, ds, state):
    payload = {
        "format": FORMAT_TAG,
        **_payload(model, cfg, model_config, ds, state, None),
        "state_dict": {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": {"torch": torch.get_rng_state(), "cuda": _cuda_rng()},
        "position": dataclasses.asdict(state),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _cuda_rng() -> list[torch.Tensor]:
    return torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []


def _save_model(path, model, cfg, model_config, ds, state, test_acc) -> None:
    meta = _payload(model, cfg, model_config, ds, state, test_acc)
    save_checkpoint(path, _unwrap(model).state_dict(), **meta)


def _load_training_state(path: Path, cfg: TrainConfig) -> dict[str, Any]:
    if not path.is_file():
        raise TrainingError(f"--resume: no training state at {path}; start without --resume")
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved = state.get("train_config", {})
    for key in ("arch", "dataset", "epochs", "batch_size", "lr", "seed", "augment"):
        if key in saved and saved[key] != getattr(cfg, key):
            raise TrainingError(
                f"--resume: {path} was trained with {key}={saved[key]!r}, not "
                f"{getattr(cfg, key)!r}; use the same settings or a new --out"
            )
    return state


def _append_log(path: Path, row: dict[str, float]) -> None:
    rows = []
    if path.is_file():
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) < row["epoch"]]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows([*rows, row])
    from reuse_analysis._io import write_text_atomic

    write_text_atomic(path, buf.getvalue())


# ----------------------------------------------------------------------------- the run
def _optimizer(model: nn.Module, cfg: TrainConfig, steps_epochs: int):
    opt = torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=True,
        weight_decay=cfg.weight_decay,
    )
    milestones = [math.ceil(0.5 * steps_epochs), math.ceil(0.75 * steps_epochs)]
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)


def train(
    cfg: TrainConfig,
    *,
    on_step: Callable[[int, int], None] | None = None,
    init: Callable[[nn.Module], None] | None = None,
) -> dict:
    """Run (or resume) training; returns the final summary. ``on_step(epoch, step)`` is a
    hook called after every optimizer step (tests use it to interrupt a run). ``init(model)``
    is called once on the freshly built model, before a resumed state is loaded into it:
    fine-tuning uses it to load starting weights and register gradient hooks."""
    from tqdm import tqdm

    device = pick_device(cfg.device)
    dist = _init_distributed(device)
    ds = load_dataset(cfg.dataset, cfg.data_dir)
    train_data = _subset(ds.train, cfg.limit_train, cfg.seed)
    test_data = eval_subset(ds.test, cfg.limit_test)
    model_path, state_path, log_path = _paths(cfg.out)

    torch.manual_seed(cfg.seed)
    model, model_config = build_model(cfg, ds)
    if init is not None:
        init(model)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer, scheduler = _optimizer(model, cfg, cfg.epochs)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp and device.type == "cuda" else None
    state = _State()
    if cfg.resume:
        saved = _load_training_state(state_path, cfg)
        model.load_state_dict(saved["state_dict"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        state = _State(**saved["position"])
        if dist.main:
            _note(f"resuming {cfg.out} at epoch {state.epoch + 1}, step {state.step}")
    if dist.world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    test_acc = state.history[-1]["test_acc"] if state.history else None
    last_save = time.monotonic()
    for epoch in range(state.epoch, cfg.epochs):
        indices = _epoch_indices(len(train_data), epoch, cfg, dist)
        batches = _batches(indices, cfg.batch_size)
        model.train()
        started = time.monotonic() - state.seconds
        bar = tqdm(
            total=len(batches),
            initial=state.step,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            disable=not dist.main,
            dynamic_ncols=True,
        )
        try:
            for step in range(state.step, len(batches)):
                seed = _step_seed(cfg.seed, epoch, step, dist.rank)
                torch.manual_seed(seed)
                idx = torch.tensor(batches[step])
                x = train_data.batch(
                    idx,
                    ds.mean,
                    ds.std,
                    augment=cfg.augment,
                    generator=torch.Generator().manual_seed(seed),
                )
                x = _to_device(x, device, cfg.channels_last)
                y = train_data.labels[idx].to(device)
                with _autocast(device, cfg.amp):
                    logits = model(x)
                    loss = F.cross_entropy(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                state.step = step + 1
                state.seen += len(idx)
                state.loss_sum += loss.item() * len(idx)
                state.correct += (logits.argmax(1) == y).sum().item()
                bar.update(1)
                bar.set_postfix(
                    loss=f"{state.loss_sum / state.seen:.3f}",
                    acc=f"{state.correct / state.seen:.3f}",
                    lr=f"{optimizer.param_groups[0]['lr']:.3g}",
                )
                if on_step is not None:
                    on_step(epoch, step)
                if dist.main and time.monotonic() - last_save > cfg.checkpoint_minutes * 60:
                    state.seconds = time.monotonic() - started
                    _save_training_state(
                        state_path,
                        model,
                        optimizer,
                        scheduler,
                        scaler,
                        cfg,
                        model_config,
                        ds,
                        state,
                    )
                    last_save = time.monotonic()
        except KeyboardInterrupt:
            bar.close()
            if dist.main:
                state.seconds = time.monotonic() - started
                _save_training_state(
                    state_path, model, optimizer, scheduler, scaler, cfg, model_config, ds, state
                )
                _note(
                    f"interrupted at epoch {epoch + 1}, step {state.step}; "
                    f"saved {state_path}: rerun the same command with --resume to continue"
                )
            raise
        bar.close()
        if dist.world > 1:
            _sync_buffers(_unwrap(model))
        seconds = time.monotonic() - started
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        train_loss, train_acc = state.loss_sum / state.seen, state.correct / state.seen
        if dist.main:
            test_loss, test_acc = evaluate(
                _unwrap(model),
                test_data,
                ds,
                device,
                batch_size=cfg.eval_batch_size,
                amp=cfg.amp,
                channels_last=cfg.channels_last,
            )
            row = {
                "epoch": epoch + 1,
                "lr": lr,
                "train_loss": round(train_loss, 6),
                "train_acc": round(train_acc, 6),
                "test_loss": round(test_loss, 6),
                "test_acc": round(test_acc, 6),
                "seconds": round(seconds, 2),
                "images_per_s": round(state.seen * dist.world / seconds, 2),
            }
            state = _State(epoch=epoch + 1, history=[*state.history, row])
            _save_training_state(
                state_path, model, optimizer, scheduler, scaler, cfg, model_config, ds, state
            )
            _save_model(model_path, model, cfg, model_config, ds, state, test_acc)
            if epoch + 1 in cfg.snapshot_epochs:
                snap = model_path.with_name(f"{model_path.stem}-epoch{epoch + 1}.pt")
                _save_model(snap, model, cfg, model_config, ds, state, test_acc)
            _append_log(log_path, row)
            _note(
                f"epoch {epoch + 1}/{cfg.epochs}: train loss {train_loss:.4f} acc "
                f"{train_acc:.4f} | test loss {test_loss:.4f} acc {test_acc:.4f} | "
                f"{row['images_per_s']:.0f} img/s"
            )
        else:
            state = _State(epoch=epoch + 1, history=state.history)
        last_save = time.monotonic()
        if dist.world > 1:
            torch.distributed.barrier()
    summary = {
        "out": str(model_path),
        "epochs": cfg.epochs,
        "test_acc": test_acc,
        "seconds": sum(r["seconds"] for r in state.history),
    }
    if dist.world > 1:
        summary["replicas_identical"] = _replicas_identical(_unwrap(model))
        torch.distributed.destroy_process_group()
        if not summary["replicas_identical"]:
            raise TrainingError("the ranks ended with different weights; the run is unreliable")
    return summary


def _sync_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's batch-norm statistics.

    DDP broadcasts buffers before each forward, but each rank's last forward then updates
    its own copy from its own batch; without this the saved statistics would differ.
    """
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def _replicas_identical(model: nn.Module) -> bool:
    """Whether every rank holds bitwise the same weights and buffers (a DDP sanity check)."""
    import torch.distributed as dist

    flat = torch.cat([t.detach().double().flatten().cpu() for t in model.state_dict().values()])
    device = next(model.parameters()).device  # NCCL gathers CUDA tensors only
    digest = torch.tensor(
        [flat.sum().item(), (flat * flat).sum().item(), flat.abs().max().item()], device=device
    )
    gathered = [torch.zeros_like(digest) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, digest)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def iter_log(path: str | os.PathLike[str]) -> Iterator[dict[str, str]]:
    """Rows of a training log CSV."""
    with open(path, newline="") as fh:
        yield from csv.DictReader(fh)
