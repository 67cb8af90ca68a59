"""Training-step speed and peak memory of DenseNet-BC-100 (k=12): ours against torchvision.

One training step = forward, cross-entropy loss, backward and an SGD step (Nesterov momentum
0.9, weight decay 1e-4, the paper's recipe) on a batch of random 32×32×3 images with 10
classes. Variants, measured in one run on the same machine:

* ``ours``: ``create_model("densenet_bc_100")`` (fused dense blocks, the default; the model
  and inputs channels-last), float32 unless ``--amp``;
* ``torchvision``: ``torchvision.models.DenseNet(growth_rate=12, block_config=(16, 16, 16),
  num_init_features=24, bn_size=4, num_classes=10)`` with a CIFAR stem (``conv0`` a 3×3
  stride-1 conv; ``norm0``, ``relu0``, ``pool0`` Identity) — the same network as ours;
* ``torchvision-memeff``: the same with ``memory_efficient=True``;
* ``torchvision-best``: torchvision at its fastest, whatever ``--amp`` says: native
  low-precision autocast (fp16 + GradScaler on CUDA; bf16 on a CPU with bf16 units, AMX or
  AVX-512 BF16, and float32 on one without, where autocast only emulates bf16 and runs
  several times slower), channels-last and ``torch.compile(model)``;
  ``torchvision-best-eager`` the same without ``torch.compile``;
* ``ours-best``: ours at its fastest: the same native autocast, channels-last, the fused
  blocks' compiled elementwise kernels (``_efficient.use_compiled_kernels``);
  ``ours-best-eager`` the same with the eager kernels.

Whether compiling pays depends on the machine (inductor's CPU code for column reductions
is slower than ATen's on some CPUs), so each side's best is the faster of its two
candidates in this run, and the summary says which one that was.
* with ``--channels-last`` also both torchvision models channels-last (``…-cl``);
  ``--variants`` adds any of ``ours-memeff`` (``memory_efficient=True``), ``ours-nchw``
  (ours in the default layout), ``ours-unfused`` (ours layer by layer), ``ours-amp``
  (autocast, eager kernels), ``ours-model-compile`` (``torch.compile(model)``, which
  traces the blocks layer by layer) and ``ours-best-memeff``.

Compiled variants compile in their first step (forward and backward), which is timed and
printed as the compile time but not counted among the steps; the warm-up steps follow. The
children share one inductor cache (``TORCHINDUCTOR_CACHE_DIR``, default
``~/.cache/reuse-analysis/inductor``), so later rounds and runs compile from it.

Every variant runs in a fresh child process (``python train_throughput.py --child NAME``),
so that memory measurements do not mix. Variants alternate order from round to round
(``--rounds``) so that load from other processes spreads evenly over them.

* images/s: batch size ÷ the median time of the timed steps (after ``--warmup`` steps) of
  all rounds.
* peak memory, on CPU: the child's peak resident set size (``getrusage(RUSAGE_SELF)
  .ru_maxrss``) at the end, minus its resident set size (``/proc/self/statm``) after model,
  optimizer and batch were created, i.e. what the training steps added at their peak:
  activations, temporaries, gradients and momentum buffers. It counts memory the C library
  kept from freed blocks, as the operating system does. On CUDA:
  ``torch.cuda.max_memory_allocated()`` minus the allocation before the first step. The
  median over rounds is reported.

Roofline: the training FLOPs per image (``FlopCounterMode`` over one forward and backward
pass of torchvision's model: the network's own arithmetic, without any recomputation) and
the best of five 2048² matrix products in ours-best's dtype, timed in each ours-best child
(the peak that process could get under the machine's load at the time): their ratio is an
images/s ceiling, and ``roofline_fraction`` is ours-best's images/s divided by it.

The last line reads ``speedup_vs_torchvision=S speedup_vs_torchvision_best=B
peak_vs_memory_efficient=M roofline_fraction=R``: ours-best's images/s ÷ torchvision's
(float32, default settings) and ÷ torchvision-best's, and ours-best's peak ÷
torchvision-memeff's, all from this run.

Usage: ``python benchmarks/train_throughput.py [--device cpu|cuda] [--amp] [--channels-last]
[--steps N] [--warmup N] [--rounds N] [--batch-size N] [--threads N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

DEFAULT = [
    "ours",
    "torchvision",
    "torchvision-memeff",
    "torchvision-best",
    "torchvision-best-eager",
    "ours-best",
    "ours-best-eager",
]
# Each side's best: the faster of these candidates in the run.
BEST = {
    "ours-best": ("ours-best", "ours-best-eager"),
    "torchvision-best": ("torchvision-best", "torchvision-best-eager"),
}
CHANNELS_LAST = ["torchvision-cl", "torchvision-memeff-cl"]
EXTRA = [
    "ours-memeff",
    "ours-nchw",
    "ours-unfused",
    "ours-amp",
    "ours-model-compile",
    "ours-best-memeff",
]
# variant → (builder, keyword arguments, channels-last, autocast, compile). Autocast None
# follows --amp; "native" is on where the device computes in low precision natively;
# True/False is the variant's own setting. Compile: "" none, "model"
# torch.compile(model), "kernels" the fused block's compiled elementwise kernels
# (_efficient.use_compiled_kernels).
SPECS: dict[str, tuple[str, dict[str, Any], bool, bool | str | None, str]] = {
    "ours": ("ours", {}, True, None, ""),
    "ours-memeff": ("ours", {"memory_efficient": True}, True, None, ""),
    "ours-nchw": ("ours", {}, False, None, ""),
    "ours-unfused": ("ours", {"fused": False}, True, None, ""),
    "ours-amp": ("ours", {}, True, True, ""),
    # torch.compile(model) traces layer by layer: dynamo does not enter the fused block.
    "ours-model-compile": ("ours", {}, True, True, "model"),
    # Ours at its fastest: fused blocks in native low precision with compiled kernels.
    "ours-best": ("ours", {}, True, "native", "kernels"),
    "ours-best-eager": ("ours", {}, True, "native", ""),
    "ours-best-memeff": ("ours", {"memory_efficient": True}, True, "native", "kernels"),
    "torchvision": ("torchvision", {}, False, None, ""),
    "torchvision-memeff": ("torchvision", {"memory_efficient": True}, False, None, ""),
    "torchvision-cl": ("torchvision", {}, True, None, ""),
    "torchvision-memeff-cl": ("torchvision", {"memory_efficient": True}, True, None, ""),
    # torchvision at its fastest: native autocast + channels-last + torch.compile.
    "torchvision-best": ("torchvision", {}, True, "native", "model"),
    "torchvision-best-eager": ("torchvision", {}, True, "native", ""),
}


def native_autocast(device_type: str, bf16_units: bool | None) -> bool:
    """Whether autocast runs natively in low precision: fp16 on CUDA; bf16 on a CPU only
    where it has bf16 units (``bf16_units``; unknown counts as absent)."""
    return device_type == "cuda" or bf16_units is True


# ----------------------------------------------------------------------------- child
def _build(name: str):
    import torchvision
    from torch import nn

    from reuse_analysis.models import create_model

    builder, kwargs = SPECS[name][:2]
    kwargs = dict(kwargs)
    if builder == "ours":
        fused = kwargs.pop("fused", True)
        model = create_model("densenet_bc_100", **kwargs)
        for m in model.modules():
            if hasattr(m, "fused"):
                m.fused = fused
        return model
    model = torchvision.models.DenseNet(
        growth_rate=12,
        block_config=(16, 16, 16),
        num_init_features=24,
        bn_size=4,
        num_classes=10,
        **kwargs,
    )
    # CIFAR stem: one 3×3 stride-1 conv, no BN, ReLU or pooling before the first block.
    model.features.conv0 = nn.Conv2d(3, 24, kernel_size=3, padding=1, bias=False)
    for stem_part in ("norm0", "relu0", "pool0"):
        setattr(model.features, stem_part, nn.Identity())
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in create_model("densenet_bc_100").parameters()
    )
    return model


def child(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from reuse_analysis._memory import peak_rss_bytes, rss_bytes

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    from reuse_analysis.runtime import cpu_has_bf16

    _, _, channels_last, amp, compiled = SPECS[name]
    if amp == "native":
        amp = native_autocast(device.type, cpu_has_bf16() if device.type == "cpu" else None)
    amp = args.amp if amp is None else amp
    model = _build(name).to(device).train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    if compiled == "model":
        model = torch.compile(model)
    elif compiled == "kernels":
        from reuse_analysis.models import _efficient

        _efficient.use_compiled_kernels(True)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda") if amp and device.type == "cuda" else None

    def step() -> None:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes()
    compile_s = None
    if compiled:  # the first step compiles forward and backward; not a timed step
        start = time.perf_counter()
        step()
        sync()
        compile_s = time.perf_counter() - start
    for _ in range(args.warmup):
        step()
    sync()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else peak_rss_bytes()
    return {
        "variant": name,
        "step_s": times,
        "peak_bytes": peak - base,
        "compile_s": compile_s,
        "amp": amp,
        "matmul_gflops": _matmul_gflops(amp_dtype if amp else torch.float32, device),
    }


def _matmul_gflops(dtype, device, size: int = 2048, repeats: int = 5) -> float:
    """The best of ``repeats`` ``size``² matrix products in ``dtype``, in GFLOP/s: the peak
    the roofline divides by (on a loaded machine, the peak this process could get)."""
    import torch

    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first product warms up the library
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def training_flops_per_image(batch_size: int = 2) -> float:
    """FLOPs of one training step (forward + backward) of DenseNet-BC-100 per 32×32 image,
    counted by ``torch.utils.flop_counter.FlopCounterMode`` on torchvision's model (the
    network itself, without any implementation's recomputation)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    model = _build("torchvision").train()
    x = torch.randn(batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (batch_size,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch_size


# ----------------------------------------------------------------------------- parent
def _run_child(name: str, argv: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, *argv]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"Error: variant {name} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to train")
    parser.add_argument("--amp", action="store_true", help="autocast (bf16 on CPU, fp16 on CUDA)")
    parser.add_argument(
        "--channels-last", action="store_true", help="also run torchvision channels-last"
    )
    parser.add_argument("--steps", type=int, default=4, help="timed steps per child")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=2, help="children per variant")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--variants",
        help=f"comma-separated subset of {', '.join(SPECS)} (ours and torchvision always run)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if min(args.steps, args.rounds, args.batch_size) < 1 or args.warmup < 0:
        parser.error("--steps, --rounds and --batch-size must be positive, --warmup ≥ 0")

    if args.child:
        print(json.dumps(child(args.child, args)))
        return

    names = list(DEFAULT) + (CHANNELS_LAST if args.channels_last else [])
    if args.variants:
        wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = sorted(set(wanted) - set(SPECS))
        if unknown:
            parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(SPECS)}")
        names = list(dict.fromkeys([*DEFAULT, *wanted]))
    argv = [
        f"--device={args.device}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--batch-size={args.batch_size}",
        f"--threads={args.threads}",
        *(["--amp"] if args.amp else []),
    ]
    import torch

    from reuse_analysis.modelcard import hardware

    # Compiled variants share one inductor cache: a later round (and run) compiles from it.
    os.environ.setdefault(
        "TORCHINDUCTOR_CACHE_DIR",
        os.path.join(os.path.expanduser("~"), ".cache", "reuse-analysis", "inductor"),
    )

    threads = args.threads or torch.get_num_threads()
    print(
        f"DenseNet-BC-100 training step, batch {args.batch_size}, 32×32×3, {args.device}"
        f"{' amp' if args.amp else ''}, {threads} threads, torch {torch.__version__}, "
        f"{hardware()}; {args.rounds} rounds × "
        f"({args.warmup} warm-up + {args.steps} timed steps) per variant; load average "
        f"{' '.join(f'{v:.1f}' for v in os.getloadavg())} at the start",
        file=sys.stderr,
    )
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            res = _run_child(name, argv)
            results[name].append(res)
            compiled = "" if res["compile_s"] is None else f", compile {res['compile_s']:.0f} s"
            print(
                f"  round {r + 1}: {name:<22} {statistics.median(res['step_s']):6.2f} s/step "
                f"{res['peak_bytes'] / 2**20:8.0f} MB{compiled}",
                file=sys.stderr,
            )

    rows = {}
    for name in names:
        times = [t for res in results[name] for t in res["step_s"]]
        peak = statistics.median(res["peak_bytes"] for res in results[name])
        rows[name] = (args.batch_size / statistics.median(times), min(times), max(times), peak)
    base_speed = rows["torchvision"][0]
    base_peak = rows["torchvision-memeff"][3]
    memory_kind = "peak alloc MB" if args.device == "cuda" else "peak RSS+ MB"
    print(f"{'variant':<22} {'img/s':>7} {'step s (min-max)':>17} {memory_kind:>14} "
          f"{'speed/tv':>9} {'peak/tv-memeff':>15}")  # fmt: skip
    for name, (speed, fastest, slowest, peak) in rows.items():
        print(
            f"{name:<22} {speed:7.1f} {fastest:8.2f}-{slowest:<8.2f} {peak / 2**20:14.0f} "
            f"{speed / base_speed:9.2f} {peak / base_peak:15.2f}"
        )
    for name in names:
        compiles = [res["compile_s"] for res in results[name] if res["compile_s"] is not None]
        if compiles:
            print(f"{name}: compile s per round {', '.join(f'{c:.0f}' for c in compiles)}")
    picks = {side: pick_best(rows, candidates) for side, candidates in BEST.items()}
    for side, chosen in picks.items():
        others = [c for c in BEST[side] if c != chosen]
        print(f"{side}: {chosen} (faster than {', '.join(others)} in this run)")
    flops = training_flops_per_image()
    best = results[picks["ours-best"]]
    peak_gflops = statistics.median(res["matmul_gflops"] for res in best)
    ceiling = peak_gflops * 1e9 / flops
    low = "bf16" if args.device == "cpu" else "fp16"
    dtype = low if best[0]["amp"] else "fp32"
    print(
        f"roofline: {flops / 1e9:.2f} GFLOP per image per training step (FlopCounterMode), "
        f"{dtype} matmul peak {peak_gflops:.0f} GFLOP/s (2048², median over "
        f"{picks['ours-best']}'s children) → ceiling {ceiling:.0f} images/s"
    )
    ours = rows[picks["ours-best"]]
    print(
        f"speedup_vs_torchvision={ours[0] / base_speed:.2f} "
        f"speedup_vs_torchvision_best={ours[0] / rows[picks['torchvision-best']][0]:.2f} "
        f"peak_vs_memory_efficient={ours[3] / base_peak:.2f} "
        f"roofline_fraction={ours[0] / ceiling:.3f}"
    )


def pick_best(rows: dict[str, tuple[float, ...]], candidates: tuple[str, ...]) -> str:
    """The candidate with the most images/s (the first of ``rows``' values)."""
    return max(candidates, key=lambda name: rows[name][0])


if __name__ == "__main__":
    main()
