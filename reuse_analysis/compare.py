"""Architectures side by side, measured in one run on the same machine and data.

For each architecture: parameters; FLOPs of one forward pass on one image (convolutions
and matrix products, as ``torch.utils.flop_counter`` counts them: 2 per multiply-add);
peak training memory and training and inference images/s (each architecture in a fresh
child process, on random images of the data set's shape, in rounds with the
architectures in alternating order; speed from the fastest step of all rounds, timed on
the CPU as one thread's CPU time, i.e. per core, see :func:`measure`); and test accuracy
after the same training budget (the same epochs over the same fixed subset, seed and
recipe, through :func:`train.train`).

Every architecture's run is kept in ``work_dir`` under a name that encodes the settings
(``ARCH-KEY.pt`` and its ``.train.pt``/``.log.csv``; ``measure-DIGEST.json``), so an
interrupted comparison resumes where it stopped: finished architectures are reused,
the one in progress continues from its last saved step.

Peak memory on the CPU is the child's peak resident set size (``ru_maxrss``) minus its
resident size once model, optimizer and batch exist: what the training steps added at
their peak (activations, gradients, momentum buffers, allocator slack). On CUDA it is
``torch.cuda.max_memory_allocated()`` minus the allocation before the first step.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from reuse_analysis.cache import Cache, digest
from reuse_analysis.errors import ReuseAnalysisError

#: Columns of the comparison table, in order.
COLUMNS = [
    "arch",
    "params",
    "gflops",
    "peak_train_mb",
    "train_img_s",
    "infer_img_s",
    "budget_minutes",
    "train_minutes",
    "epochs",
    "train_images",
    "test_images",
    "test_acc",
]


@dataclass
class CompareConfig:
    """One comparison: the architectures and the budget each of them gets."""

    archs: tuple[str, ...]
    dataset: str
    data_dir: str = "data"
    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.1  # divided by 10 at 50 % and 75 % of the epochs (train's schedule)
    augment: bool = True
    limit_train: int | None = None  # the same fixed random subset for every architecture
    limit_test: int | None = None
    seed: int = 0
    device: str = "auto"
    work_dir: str = "trained_models/compare"
    measure_steps: int = 3  # timed steps per round, architecture and kind (after one untimed)
    measure_rounds: int = 2  # rounds of speed measurements, architectures in alternating order
    #: Per architecture, config overrides (e.g. narrower widths for a quick test).
    model_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)


class CompareError(ReuseAnalysisError):
    """A comparison that cannot run as asked."""


def _key(payload: Mapping[str, Any]) -> str:
    """A short name for a set of settings (the content-addressed cache's digest)."""
    return digest(payload)[:8]


def _train_config(cfg: CompareConfig, arch: str):
    """The TrainConfig of one architecture; its file name encodes every setting."""
    from reuse_analysis.train import TrainConfig

    settings = {
        "arch": arch,
        "dataset": cfg.dataset,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "augment": cfg.augment,
        "limit_train": cfg.limit_train,
        "limit_test": cfg.limit_test,
        "seed": cfg.seed,
        "model_overrides": cfg.model_overrides.get(arch, {}),
    }
    out = Path(cfg.work_dir) / f"{arch}-{_key(settings)}.pt"
    return TrainConfig(
        data_dir=cfg.data_dir,
        out=str(out),
        device=cfg.device,
        checkpoint_minutes=5.0,
        resume=out.with_suffix(".train.pt").is_file(),
        **settings,
    )


def hardware(device: str) -> str:
    """CPU model, cores and torch threads, or the GPU, that the measurements ran on."""
    import torch

    from reuse_analysis.modelcard import hardware as machine
    from reuse_analysis.runtime import pick_device

    dev = pick_device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} ({machine()})"
    return f"{machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


# ----------------------------------------------------------------------------- measuring
def count_flops(model: Any, shape: tuple[int, ...]) -> int:
    """FLOPs of one forward pass on one image of ``shape`` (C, H, W), in eval mode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, *shape, device=device)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


class _Bench:
    """One architecture ready to time: model, SGD optimizer and a random batch."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        import torch
        import torch.nn.functional as F

        from reuse_analysis.models import model_from_config
        from reuse_analysis.runtime import pick_device

        self.device = pick_device(spec["device"])
        if self.device.type == "cpu":
            torch.set_num_threads(1)  # see measure(): CPU time of one core
        torch.manual_seed(0)
        model = model_from_config(spec["config"], arch=spec["arch"]).to(self.device).train()
        self.model = model
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4
        )
        self.batch = spec["batch_size"]
        self.x = torch.randn(self.batch, *spec["shape"], device=self.device)
        self.y = torch.randint(0, spec["num_classes"], (self.batch,), device=self.device)
        self._loss = F.cross_entropy

    def sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def train_step(self) -> None:
        self.model.train()
        loss = self._loss(self.model(self.x), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.sync()

    def infer_step(self) -> None:
        import torch

        self.model.eval()
        with torch.inference_mode():
            self.model(self.x)
        self.sync()


def measure(spec: Mapping[str, Any], steps: int) -> dict[str, Any]:
    """Peak training memory and the time of each training and inference step of one
    architecture (after one untimed step of each kind: kernel selection, allocator growth).

    On a GPU the time is wall time (synchronised). On the CPU it is the CPU time of one
    thread: on a machine shared with other jobs, wall time with several threads measures
    the load more than the network (every parallel region waits at a barrier for threads
    that were descheduled, which hurts networks of many small operations most), while one
    thread's CPU time counts only the work. The result is images/s per core.

    Meant for a fresh process (see :func:`_in_child`): a process's peak resident size only
    grows, and models sharing a process slow each other down (oneDNN's primitive cache,
    the allocator), so each architecture gets its own.
    """
    import torch

    from reuse_analysis._memory import peak_rss_bytes, rss_bytes

    bench = _Bench(spec)
    if bench.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(bench.device)
        base = torch.cuda.memory_allocated(bench.device)
    else:
        base = rss_bytes()
    clock = time.perf_counter if bench.device.type == "cuda" else time.process_time
    train_s = _timed(bench.train_step, steps, clock)
    if bench.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(bench.device)
    else:
        peak = peak_rss_bytes()
    infer_s = _timed(bench.infer_step, steps, clock)
    return {"train_s": train_s, "infer_s": infer_s, "peak_train_mb": max(peak - base, 0) / 2**20}


def _timed(step: Callable[[], None], steps: int, clock: Callable[[], float]) -> list[float]:
    step()  # untimed
    times = []
    for _ in range(steps):
        start = clock()
        step()
        times.append(clock() - start)
    return times


def speed_basis(device: str) -> str:
    """What the images/s columns mean on ``device`` (see :func:`measure`)."""
    from reuse_analysis.runtime import pick_device

    if pick_device(device).type == "cpu":
        return "per CPU core (one thread, CPU time)"
    return "wall time"


def summarize(rounds: Sequence[Mapping[str, Any]], batch: int) -> dict[str, float]:
    """Images/s from the fastest step of all rounds, and the median peak memory.

    The fastest step, as ``timeit`` takes the minimum: other processes only ever slow a
    step down (CPU time too, through shared caches), so the fastest one is the best
    estimate of what the machine does alone.
    """
    return {
        "train_img_s": batch / min(t for r in rounds for t in r["train_s"]),
        "infer_img_s": batch / min(t for r in rounds for t in r["infer_s"]),
        "peak_train_mb": statistics.median(r["peak_train_mb"] for r in rounds),
    }


def _in_child(task: Mapping[str, Any], what: str) -> Any:
    """Run a measurement in a fresh Python process and read its JSON answer."""
    package_root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "reuse_analysis.compare", json.dumps(task)],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise CompareError(f"measuring {what} failed in its child process: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child_main(task: Mapping[str, Any]) -> Any:
    return measure(task["spec"], task["steps"])


# ----------------------------------------------------------------------------- the run
def _check(cfg: CompareConfig) -> None:
    from reuse_analysis.models import MODELS

    if not cfg.archs:
        raise CompareError("give at least one --arch")
    unknown = [a for a in cfg.archs if a not in MODELS]
    if unknown:
        raise CompareError(
            f"unknown model {', '.join(map(repr, unknown))}; known models: {', '.join(MODELS)}"
        )
    if len(set(cfg.archs)) != len(cfg.archs):
        raise CompareError("each --arch once, please: the same architecture was named twice")


def compare(
    cfg: CompareConfig,
    *,
    on_step: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> pd.DataFrame:
    """Measure, then train, every architecture of ``cfg``; one row per architecture.

    ``attrs`` holds the hardware, the data set and the budget. ``on_step`` is passed to
    :func:`train.train` (tests interrupt a run with it); ``log`` receives progress notes.
    """

    from reuse_analysis.data import load_dataset
    from reuse_analysis.train import train

    _check(cfg)
    ds = load_dataset(cfg.dataset, cfg.data_dir)
    shape = (ds.in_channels, ds.image_size, ds.image_size)
    machine = hardware(cfg.device)
    log(f"measuring on {machine}")
    measured = _measure_all(cfg, ds, shape, machine, log)

    rows = []
    for arch in cfg.archs:
        tcfg = _train_config(cfg, arch)
        if tcfg.resume:
            log(f"{arch}: resuming {tcfg.out}")
        else:
            log(f"{arch}: training {cfg.epochs} epoch(s) into {tcfg.out}")
        summary = train(tcfg, on_step=on_step)
        from reuse_analysis.checkpoint import load_checkpoint

        meta = load_checkpoint(summary["out"]).meta
        m = measured[arch]
        train_images = min(cfg.limit_train or len(ds.train), len(ds.train))
        rows.append(
            {
                "arch": arch,
                "params": int(m["params"]),
                "gflops": m["gflops"],
                "peak_train_mb": m["peak_train_mb"],
                "train_img_s": m["train_img_s"],
                "infer_img_s": m["infer_img_s"],
                # The budget at the measured speed: comparable across architectures even
                # when other jobs load the machine unevenly during the long training runs.
                "budget_minutes": cfg.epochs * train_images / m["train_img_s"] / 60,
                "train_minutes": summary["seconds"] / 60,  # wall clock, as it happened
                "epochs": int(meta.get("epoch", cfg.epochs)),
                "train_images": train_images,
                "test_images": min(cfg.limit_test or len(ds.test), len(ds.test)),
                "test_acc": summary["test_acc"],
            }
        )
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs.update(
        hardware=machine,
        speed_basis=speed_basis(cfg.device),
        dataset=cfg.dataset,
        image_shape=list(shape),
        settings={k: v for k, v in asdict(cfg).items() if k not in ("archs", "model_overrides")},
    )
    return df


def _measure_all(
    cfg: CompareConfig, ds: Any, shape: tuple[int, ...], machine: str, log: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """Parameters, FLOPs, peak memory and speed of every architecture, before training.

    Each round of each architecture is kept in the cache in ``work_dir`` as soon as it is
    measured (keyed by every setting that affects it), so that a resumed comparison reuses
    what it measured.
    """
    import torch

    from reuse_analysis.train import build_model

    specs, measured = [], {}
    for arch in cfg.archs:
        torch.manual_seed(cfg.seed)
        model, config = build_model(_train_config(cfg, arch), ds)
        specs.append(
            {
                "arch": arch,
                "config": config,
                "shape": list(shape),
                "num_classes": ds.num_classes,
                "batch_size": cfg.batch_size,
                "device": cfg.device,
            }
        )
        measured[arch] = {
            "params": sum(p.numel() for p in model.parameters()),
            "gflops": count_flops(model, shape) / 1e9,
        }
    settings = {
        "steps": cfg.measure_steps,
        "rounds": cfg.measure_rounds,
        "hardware": machine,
        "basis": speed_basis(cfg.device),  # how steps are timed: old files do not count
    }
    done = Cache(cfg.work_dir).record("measure", {"specs": specs, **settings})
    parts = [(r, spec) for r in range(cfg.measure_rounds) for spec in _round_order(specs, r)]
    if all(f"{spec['arch']}#{r}" in done for r, spec in parts):
        log(f"reusing the measurements in {done.path}")
    for r, spec in parts:
        part = f"{spec['arch']}#{r}"
        if part in done:
            continue
        log(
            f"{spec['arch']}: timing {cfg.measure_steps} training and inference steps "
            f"(round {r + 1} of {cfg.measure_rounds})"
        )
        done.put(part, _in_child({"spec": spec, "steps": cfg.measure_steps}, spec["arch"]))
    for arch in cfg.archs:
        results = [done[f"{arch}#{r}"] for r in range(cfg.measure_rounds)]
        measured[arch].update(summarize(results, cfg.batch_size), rounds=results)
    return measured


def _round_order(specs: list[dict[str, Any]], r: int) -> list[dict[str, Any]]:
    """Architectures in alternating order, round by round (load drifts even out)."""
    return specs if r % 2 == 0 else specs[::-1]


# ----------------------------------------------------------------------------- outputs
def _fmt_params(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def to_markdown(df: pd.DataFrame) -> str:
    """The table as Markdown, headed by the data set, the budget and the hardware."""
    a = df.attrs
    s = a.get("settings", {})
    first = df.iloc[0] if len(df) else None
    budget = (
        f"{s.get('epochs')} epoch(s) over {first['train_images']:,} training images "
        f"(the same fixed subset, seed {s.get('seed')}), batch {s.get('batch_size')}, "
        f"SGD lr {s.get('lr')} (÷10 at 50 % and 75 %), "
        f"{'with' if s.get('augment') else 'without'} augmentation; accuracy on "
        f"{first['test_images']:,} test images"
        if first is not None
        else ""
    )
    basis = a.get("speed_basis", "wall time")
    per_core = basis.startswith("per CPU core")
    lines = [
        f"Data set: `{a.get('dataset')}` ({'×'.join(map(str, a.get('image_shape', [])))}). "
        f"Budget: {budget}.",
        f"Hardware: {a.get('hardware')}. Images/s: {basis}, fastest step of "
        f"{s.get('measure_rounds')} round(s) × {s.get('measure_steps')} steps; the budget "
        f"column is the training budget at that speed"
        + (" on one core" if per_core else "")
        + "; wall clock is how long training took in this run.",
        "",
        "| arch | params | GFLOPs/image | peak training memory | training img/s "
        f"| inference img/s | budget{' (one core)' if per_core else ''} | wall clock "
        "| test accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in df.itertuples(index=False):
        lines.append(
            f"| {r.arch} | {_fmt_params(r.params)} | {r.gflops:.3g} | {r.peak_train_mb:,.0f} MB "
            f"| {r.train_img_s:.1f} | {r.infer_img_s:.1f} | {r.budget_minutes:.1f} min "
            f"| {r.train_minutes:.1f} min | {100 * r.test_acc:.2f} % |"
        )
    return "\n".join(lines) + "\n"


def to_csv(df: pd.DataFrame) -> str:
    """The table as CSV (columns :data:`COLUMNS` plus ``hardware``)."""
    out = df.assign(hardware=df.attrs.get("hardware", ""))
    return out.to_csv(index=False, float_format="%.6g", lineterminator="\n")


def write_outputs(df: pd.DataFrame, output: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write the table (.csv or .md, by extension) and the figure beside it (.png)."""
    from reuse_analysis._io import save_figure_atomic, write_text_atomic
    from reuse_analysis.plotting import plot_compare

    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in (".csv", ".md"):
        raise CompareError(f"cannot write {output}: use .csv or .md as the extension")
    figure = output.with_suffix(".png")
    fig = plot_compare(df, title=_figure_title(df))
    save_figure_atomic(fig, figure, dpi=120)
    write_text_atomic(output, to_csv(df) if suffix == ".csv" else to_markdown(df))
    return output, figure


def _figure_title(df: pd.DataFrame) -> str:
    a, s = df.attrs, df.attrs.get("settings", {})
    images = int(df["train_images"].iloc[0]) if len(df) else 0
    return (
        f"{a.get('dataset')}: {s.get('epochs')} epoch(s) × {images:,} images each\n"
        f"{a.get('hardware')}"
    )


if __name__ == "__main__":  # the child process of _in_child
    print(json.dumps(_child_main(json.loads(sys.argv[1]))))
