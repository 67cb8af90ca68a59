"""Wall time of the command line, against the floor of importing torch and matplotlib.

Measures, in one run on this machine (median of --repeat runs each, after one warm-up):

* ``reuse-analysis --help``                         target: under 0.5 s
* ``reuse-analysis heatmap`` on a DenseNet-201      target: within floor + 1.0 s
* ``python -c "import torch, matplotlib"``          the floor

Usage: ``python benchmarks/cli_latency.py [--repeat 5]``. The last line reads
``help_s=H heatmap_s=T floor_s=F``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("reuse-analysis")
    if script.exists():
        return [str(script)]
    found = shutil.which("reuse-analysis")
    return [found] if found else [sys.executable, "-m", "reuse_analysis"]


def _time(cmd: list[str], repeat: int) -> float:
    subprocess.run(cmd, check=True, capture_output=True)  # warm the file cache
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per command")
    args = parser.parse_args()

    import torch
    import torchvision

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "densenet201.pth"
        torch.manual_seed(0)
        torch.save(torchvision.models.densenet201().state_dict(), ckpt)
        cli = _cli()
        help_s = _time([*cli, "--help"], args.repeat)
        heatmap_s = _time([*cli, "heatmap", str(ckpt), "-o", str(Path(tmp) / "h.png")], args.repeat)
        floor_s = _time([sys.executable, "-c", "import torch, matplotlib"], args.repeat)

    print(f"{'command':<46} {'median s':>9}  target")
    print(f"{'reuse-analysis --help':<46} {help_s:9.3f}  < 0.5 s")
    print(f"{'reuse-analysis heatmap densenet201.pth':<46} {heatmap_s:9.3f}  < floor + 1.0 s")
    floor_label = 'python -c "import torch, matplotlib" (floor)'
    print(f"{floor_label:<46} {floor_s:9.3f}")
    print(f"heatmap - floor = {heatmap_s - floor_s:.3f} s")
    print(f"help_s={help_s:.3f} heatmap_s={heatmap_s:.3f} floor_s={floor_s:.3f}")


if __name__ == "__main__":
    main()
