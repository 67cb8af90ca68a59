"""Training with the paper's recipe (Huang et al. §4.2), resumable, single process or DDP.

Reads top to bottom: config → data → model → optimizer → epochs of steps → checkpoints.
Every batch draws its randomness from a seed derived from (seed, epoch, step, rank), so
a run stopped at any point and resumed with ``resume=True`` ends with the same weights
as one that never stopped (on the CPU; GPU kernels may not be bitwise deterministic).

Files written next to ``out`` (all atomically, by rank 0 only):
``out``             weights + config + data set + metrics history (what analysis needs)
``out.train.pt``    the above + optimizer, RNG and position (for ``resume``)
``out.reuse.csv``   DenseNets: the weight reuse table after every epoch (0 = initialisation)
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

from reuse_analysis.checkpoint import load_training_state, save_checkpoint
from reuse_analysis.data import DataSet, FolderData, ImageData, load_dataset
from reuse_analysis.errors import ReuseAnalysisError
from reuse_analysis.runtime import (
    _autocast,
    _subset,
    _to_device,
    autocast_dtype,
    cpu_has_bf16,
    eval_subset,
    evaluate,
    hardware,
    pick_device,
)
from reuse_analysis.tables import REUSE_LOG_ARCH, REUSE_LOG_COLUMNS

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
    "precision",
    "compiled",
    "threads",
    "hardware",
]


@dataclass
class TrainConfig:
    """Everything that defines a run; saved in every checkpoint."""

    arch: str
    dataset: str
    data_dir: str = "data"
    epochs: int = 300  # paper: 300 on CIFAR, 40 on SVHN
    batch_size: int = 64  # per process
    lr: float = 0.1  # initial (paper) or peak (onecycle, cosine) learning rate, per batch of 64
    schedule: str = "paper"  # paper | onecycle | cosine: see learning_rate()
    label_smoothing: float = 0.0  # cross-entropy label smoothing (helps short schedules)
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
    compile: bool = False  # compiled kernels (fused DenseNet blocks) or torch.compile
    memory_efficient: bool = False  # recompute bottlenecks in backward: less memory
    snapshot_epochs: tuple[int, ...] = ()  # also keep out-epochN.pt after these epochs
    limit_train: int | None = None  # use a fixed random subset of the training images
    limit_test: int | None = None  # evaluate on a fixed random subset of N test images
    checkpoint_minutes: float = 10.0  # mid-epoch checkpoints this often (long CPU epochs)
    eval_batch_size: int = 256
    model_overrides: dict[str, Any] = field(default_factory=dict)
    reuse_log: bool = True  # DenseNets: record the reuse table after every epoch (.reuse.csv)

    def effective_drop_rate(self) -> float:
        if self.drop_rate is not None:
            return self.drop_rate
        return 0.0 if self.augment else 0.2


class TrainingError(ReuseAnalysisError):
    """A run that cannot start or resume as asked."""


# ----------------------------------------------------------------------------- helpers
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
    #: DenseNets: the weight reuse table after each completed epoch (0 = initialisation),
    #: as ``{"epoch": e, "mean_abs_weight": [...]}`` in the table's row order.
    reuse: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Run:
    """What one training run holds while it runs (the arguments every save needs)."""

    cfg: TrainConfig
    ds: DataSet
    model: nn.Module
    model_config: dict[str, Any]
    optimizer: torch.optim.Optimizer
    scaler: Any
    device: torch.device
    dist: _Dist
    state: _State = field(default_factory=_State)
    compiling: bool = False  # the process's first step, which compiles, is still to come

    @property
    def paths(self) -> tuple[Path, Path, Path]:
        return _paths(self.cfg.out)

    def payload(self, test_acc: float | None) -> dict[str, Any]:
        return {
            "arch": self.cfg.arch,
            "config": self.model_config,
            "dataset": self.ds.describe(),
            "train_config": dataclasses.asdict(self.cfg),
            "epoch": self.state.epoch,
            "test_acc": test_acc,
            "history": self.state.history,
        }

    def save_state(self) -> None:
        """The resumable state (weights, optimizer, RNG, position), written atomically."""
        payload = {
            **self.payload(None),
            "state_dict": _cpu_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": {"torch": torch.get_rng_state(), "cuda": _cuda_rng()},
            "position": dataclasses.asdict(self.state),
        }
        save_checkpoint(self.paths[1], payload.pop("state_dict"), **payload)

    def save_model(self, path: Path, test_acc: float | None) -> None:
        save_checkpoint(path, _cpu_state(self.model), **self.payload(test_acc))


def _unwrap(model: nn.Module) -> nn.Module:
    """The trained module itself, inside DistributedDataParallel and torch.compile."""
    model = model.module if hasattr(model, "module") else model
    return getattr(model, "_orig_mod", model)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}


def _cuda_rng() -> list[torch.Tensor]:
    return torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []


#: Settings a resumed run must share with the run that saved the state.
_RESUME_KEYS = (
    "arch",
    "dataset",
    "epochs",
    "batch_size",
    "lr",
    "seed",
    "augment",
    "schedule",
    "label_smoothing",
    "weight_decay",
    "limit_train",
)
#: Defaults of keys that states written before they existed were trained with.
_RESUME_DEFAULTS = {"schedule": "paper", "label_smoothing": 0.0}


def _load_training_state(path: Path, cfg: TrainConfig) -> dict[str, Any]:
    if not path.is_file():
        raise TrainingError(f"--resume: no training state at {path}; start without --resume")
    meta = load_training_state(path)
    trained = {**_RESUME_DEFAULTS, **meta.get("train_config", {})}
    for key in _RESUME_KEYS:
        if key in trained and trained[key] != getattr(cfg, key):
            raise TrainingError(
                f"--resume: {path} was trained with {key}={trained[key]!r}, not "
                f"{getattr(cfg, key)!r}; use the same settings or a new --out"
            )
    return meta


def _append_csv(path: Path, columns: list[str], rows: list[dict[str, Any]], epoch: int) -> None:
    """Rewrite ``path`` with its rows of earlier epochs and then ``rows`` (idempotent on
    resume: an epoch that is logged again replaces its old rows)."""
    from reuse_analysis._io import write_text_atomic

    kept = []
    if path.is_file():
        with open(path, newline="") as fh:
            kept = [r for r in csv.DictReader(fh) if int(r["epoch"]) < epoch]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows([*kept, *rows])
    write_text_atomic(path, buf.getvalue())


def _append_log(path: Path, row: dict[str, float]) -> None:
    _append_csv(path, LOG_COLUMNS, [row], int(row["epoch"]))


def reuse_log_path(out: str | os.PathLike[str]) -> Path:
    """Where a run writes the reuse table of every epoch (``NAME.reuse.csv``)."""
    return Path(out).with_suffix("").with_suffix(".reuse.csv")


def _record_reuse(run: _Run, epoch: int) -> None:
    """Add the weight reuse table after ``epoch`` completed epochs to the state and CSV.

    Snapshots of every epoch would take megabytes each; the table is what the question
    "when does the paper's pattern appear during training?" needs, in a few kilobytes.
    """
    from reuse_analysis.metrics import reuse_table
    from reuse_analysis.structure import infer_structure

    sd = _cpu_state(run.model)
    table = reuse_table(sd, infer_structure(sd), "oldest-first", "weight")
    values = [float(v) for v in table["mean_abs_weight"]]
    run.state.reuse = [r for r in run.state.reuse if r["epoch"] < epoch]
    run.state.reuse.append({"epoch": epoch, "mean_abs_weight": values})
    rows = [
        {**{k: row[k] for k in REUSE_LOG_COLUMNS[1:-1]}, "epoch": epoch, "mean_abs_weight": v,
         REUSE_LOG_ARCH: run.cfg.arch}
        for row, v in zip(table.to_dict("records"), values, strict=True)
    ]  # fmt: skip
    # The arch column names the architecture of the log's untrained reference (`dynamics`);
    # rows a run wrote before it existed keep an empty one.
    _append_csv(reuse_log_path(run.cfg.out), [*REUSE_LOG_COLUMNS, REUSE_LOG_ARCH], rows, epoch)


class _StopRequested:
    """SIGINT/SIGTERM turned into a flag, honoured between steps.

    Raising inside a step would leave that batch's batch-norm update in the weights while
    the step counter says it never ran; the resumed run would then run it twice.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequested:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def check(self) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt


# ----------------------------------------------------------------------------- the run
SCHEDULES = ("paper", "onecycle", "cosine")
#: onecycle: the share of all steps spent warming up from lr/25 to lr.
ONECYCLE_WARMUP = 0.15


def learning_rate(
    schedule: str, peak: float, epochs: int, epoch: int, step: int, steps_per_epoch: int
) -> float:
    """The learning rate of step ``step`` (0-based) of epoch ``epoch`` (0-based).

    A pure function of the position, so a resumed run needs no scheduler state.

    * ``paper``: ``peak`` divided by 10 at 50 % and 75 % of the epochs (Huang et al. §4.2),
      constant within an epoch;
    * ``cosine``: half a cosine from ``peak`` to 0 over all steps;
    * ``onecycle``: linear warm-up from ``peak/25`` to ``peak`` over the first 15 % of the
      steps, then half a cosine to 0 (Smith & Topin's one-cycle policy, which reaches a
      long schedule's accuracy in a fraction of its epochs).
    """
    if schedule == "paper":
        drops = sum(epoch >= math.ceil(f * epochs) for f in (0.5, 0.75))
        return peak * 0.1**drops
    total = max(epochs * steps_per_epoch, 1)
    done = epoch * steps_per_epoch + step
    if schedule == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * done / total))
    if schedule == "onecycle":
        warm = max(round(ONECYCLE_WARMUP * total), 1)
        if done < warm:
            return peak * (1 / 25 + (1 - 1 / 25) * done / warm)
        return peak * 0.5 * (1 + math.cos(math.pi * (done - warm) / max(total - warm, 1)))
    raise TrainingError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    return torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=True,
        weight_decay=cfg.weight_decay,
    )


def _start(cfg: TrainConfig, init: Callable[[nn.Module], None] | None) -> tuple[_Run, Split, Split]:
    """Data, model, optimizer and (with ``cfg.resume``) the saved position."""
    device = pick_device(cfg.device)
    dist = _init_distributed(device)
    ds = load_dataset(cfg.dataset, cfg.data_dir)
    train_data = _subset(ds.train, cfg.limit_train, cfg.seed)
    test_data = eval_subset(ds.test, cfg.limit_test)
    if cfg.schedule not in SCHEDULES:
        raise TrainingError(f"unknown schedule {cfg.schedule!r}; use one of {', '.join(SCHEDULES)}")
    torch.manual_seed(cfg.seed)
    model, model_config = build_model(cfg, ds)
    if init is not None:
        init(model)
    from reuse_analysis.models.fast import prepare_for_training

    model = prepare_for_training(
        model, device, channels_last=cfg.channels_last, compile=cfg.compile
    )
    if cfg.amp and device.type == "cpu" and cpu_has_bf16() is False and dist.main:
        _note(
            "note: --amp on a CPU without bf16 units (no AMX or AVX-512 BF16): autocast "
            "emulates bf16 there and is usually slower than float32; leave out --amp"
        )
    optimizer = _optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda") if cfg.amp and device.type == "cuda" else None
    run = _Run(cfg, ds, model, model_config, optimizer, scaler, device, dist)
    run.compiling = cfg.compile
    if cfg.resume:
        saved = _load_training_state(run.paths[1], cfg)
        _unwrap(model).load_state_dict(saved["state_dict"])
        optimizer.load_state_dict(saved["optimizer"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        run.state = _State(**saved["position"])
        if dist.main:
            _note(f"resuming {cfg.out} at epoch {run.state.epoch + 1}, step {run.state.step}")
    elif dist.main and cfg.reuse_log and _is_densenet(cfg.arch):
        _record_reuse(run, 0)
    if dist.world > 1:
        run.model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return run, train_data, test_data


def _is_densenet(arch: str) -> bool:
    from reuse_analysis.models import is_densenet

    return is_densenet(arch)


def _step(run: _Run, train_data: Split, epoch: int, step: int, batch: list[int], lr: float):
    """One optimizer step on ``batch``; returns the loss and the logits."""
    cfg, device = run.cfg, run.device
    seed = _step_seed(cfg.seed, epoch, step, run.dist.rank)
    torch.manual_seed(seed)
    idx = torch.tensor(batch)
    generator = torch.Generator().manual_seed(seed)
    x = train_data.batch(idx, run.ds.mean, run.ds.std, augment=cfg.augment, generator=generator)
    x = _to_device(x, device, cfg.channels_last)
    y = train_data.labels[idx].to(device)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    with _autocast(device, cfg.amp):
        logits = run.model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
    run.optimizer.zero_grad(set_to_none=True)
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        loss.backward()
        run.optimizer.step()
    return loss, logits, y


def _compile_note(seconds: float) -> str:
    """What the first step of a --compile run cost, and where the compiled code is kept."""
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    where = f"in {cache}" if cache else "in inductor's cache (TORCHINDUCTOR_CACHE_DIR)"
    return (
        f"--compile: the first step took {seconds:.1f} s, compiling included; the compiled "
        f"code is kept {where}, so a resumed or repeated run compiles from it"
    )


def _train_epoch(run, train_data, epoch, stop, on_step) -> None:
    """The remaining steps of ``epoch``, saving the state every few minutes and on a stop."""
    from tqdm import tqdm

    cfg, state = run.cfg, run.state
    batches = _batches(_epoch_indices(len(train_data), epoch, cfg, run.dist), cfg.batch_size)
    run.model.train()
    started = time.monotonic() - state.seconds
    last_save = time.monotonic()
    bar = tqdm(
        total=len(batches),
        initial=state.step,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        unit="batch",
        disable=not run.dist.main,
        dynamic_ncols=True,
    )
    try:
        for step in range(state.step, len(batches)):
            lr = learning_rate(cfg.schedule, cfg.lr, cfg.epochs, epoch, step, len(batches))
            began = time.monotonic()
            loss, logits, y = _step(run, train_data, epoch, step, batches[step], lr)
            if run.compiling:
                run.compiling = False
                if run.dist.main:
                    _note(_compile_note(time.monotonic() - began))
            state.step = step + 1
            state.seen += len(y)
            state.loss_sum += loss.item() * len(y)
            state.correct += (logits.argmax(1) == y).sum().item()
            bar.update(1)
            bar.set_postfix(
                loss=f"{state.loss_sum / state.seen:.3f}",
                acc=f"{state.correct / state.seen:.3f}",
                lr=f"{lr:.3g}",
            )
            if on_step is not None:
                on_step(epoch, step)
            stop.check()
            if run.dist.main and time.monotonic() - last_save > cfg.checkpoint_minutes * 60:
                state.seconds = time.monotonic() - started
                run.save_state()
                last_save = time.monotonic()
    except KeyboardInterrupt:
        bar.close()
        if run.dist.main:
            state.seconds = time.monotonic() - started
            run.save_state()
            _note(
                f"interrupted at epoch {epoch + 1}, step {state.step}; "
                f"saved {run.paths[1]}: rerun the same command with --resume to continue"
            )
        raise
    bar.close()
    state.seconds = time.monotonic() - started


def _setting(run: _Run) -> dict[str, Any]:
    """How the process that finishes an epoch trains: a run resumed on another machine or
    with other flags (precision, compile, threads) says so in each epoch's row."""
    dtype = autocast_dtype(run.device) if run.cfg.amp else torch.float32
    return {
        "precision": {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32"),
        "compiled": bool(run.cfg.compile),
        "threads": torch.get_num_threads(),
        "hardware": hardware(),
    }


def _end_epoch(run: _Run, test_data: Split, epoch: int, lr: float) -> float:
    """Evaluate, log, record the reuse table and save model and state; returns accuracy."""
    cfg, state, dist = run.cfg, run.state, run.dist
    test_loss, test_acc = evaluate(
        _unwrap(run.model),
        test_data,
        run.ds,
        run.device,
        batch_size=cfg.eval_batch_size,
        amp=cfg.amp,
        channels_last=cfg.channels_last,
    )
    train_loss, train_acc = state.loss_sum / state.seen, state.correct / state.seen
    row = {
        "epoch": epoch + 1,
        "lr": lr,
        "train_loss": round(train_loss, 6),
        "train_acc": round(train_acc, 6),
        "test_loss": round(test_loss, 6),
        "test_acc": round(test_acc, 6),
        "seconds": round(state.seconds, 2),
        "images_per_s": round(state.seen * dist.world / max(state.seconds, 1e-9), 2),
        **_setting(run),
    }
    run.state = _State(epoch=epoch + 1, history=[*state.history, row], reuse=state.reuse)
    if cfg.reuse_log and _is_densenet(cfg.arch):
        _record_reuse(run, epoch + 1)
    model_path, _, log_path = run.paths
    run.save_state()
    run.save_model(model_path, test_acc)
    if epoch + 1 in cfg.snapshot_epochs:
        run.save_model(model_path.with_name(f"{model_path.stem}-epoch{epoch + 1}.pt"), test_acc)
    _append_log(log_path, row)
    _note(
        f"epoch {epoch + 1}/{cfg.epochs}: train loss {train_loss:.4f} acc "
        f"{train_acc:.4f} | test loss {test_loss:.4f} acc {test_acc:.4f} | "
        f"{row['images_per_s']:.0f} img/s"
    )
    return test_acc


def train(
    cfg: TrainConfig,
    *,
    on_step: Callable[[int, int], None] | None = None,
    init: Callable[[nn.Module], None] | None = None,
) -> dict:
    """Run (or resume) training; returns the final summary. ``on_step(epoch, step)`` is a
    hook called after every optimizer step (tests use it to interrupt a run). ``init(model)``
    is called once on the freshly built model, before a resumed state is loaded into it:
    fine-tuning uses it to load starting weights and register gradient hooks.

    SIGINT and SIGTERM stop the run at the next step boundary (or after the epoch's
    evaluation and saves), save the state and raise ``KeyboardInterrupt``.
    """
    with _StopRequested() as stop:
        run, train_data, test_data = _start(cfg, init)
        history = run.state.history
        test_acc = history[-1]["test_acc"] if history else None
        for epoch in range(run.state.epoch, cfg.epochs):
            _train_epoch(run, train_data, epoch, stop, on_step)
            if run.dist.world > 1:
                _sync_buffers(_unwrap(run.model))
            lr = learning_rate(cfg.schedule, cfg.lr, cfg.epochs, epoch, 0, 1)
            if run.dist.main:
                test_acc = _end_epoch(run, test_data, epoch, lr)
            else:
                run.state = _State(epoch=epoch + 1, history=run.state.history)
            if run.dist.world > 1:
                torch.distributed.barrier()
            if stop.signal is not None:
                _note(
                    f"interrupted after epoch {epoch + 1}; saved {run.paths[1]}: "
                    "rerun the same command with --resume to continue"
                )
                raise KeyboardInterrupt
    summary = {
        "out": str(run.paths[0]),
        "epochs": cfg.epochs,
        "test_acc": test_acc,
        "seconds": sum(r["seconds"] for r in run.state.history),
    }
    if run.dist.world > 1:
        summary["replicas_identical"] = _replicas_identical(_unwrap(run.model))
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
