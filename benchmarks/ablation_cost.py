"""Cost of the full ablation matrix of DenseNet-BC-100 on 1,000 images: fast path against naive.

The ablation matrix holds, for every connection s → t (459 in DenseNet-BC-100, counting
the transition and classifier columns), the exact increase of the loss when that
connection alone is cut. Measured in one run, on the same images and machine:

* ``forward``: one full forward pass of the unchanged model over the images, in chunks of
  ``--chunk-size`` images, in inference mode (median of ``--repeats`` passes before and as
  many after the fast path, since load from other processes drifts);
* ``fast``: ``reuse_analysis.probes.connection_table(metric="ablation")`` from scratch (a
  fresh cache directory, so nothing is reused): it keeps each block's features, forms the
  variants by subtracting partial convolutions and recomputes only from the cut target on;
* ``naive``: for each connection, one full forward pass with its slice zeroed. Every naive
  connection does the same work (one full forward), so by default a random sample of
  ``--naive-sample`` connections (seeded) is timed and the mean extrapolated to all of
  them plus the baseline pass; ``--naive-all`` times all of them. The sampled connections'
  loss increases are compared with the fast path's (the largest difference is printed).

Counting multiply-adds, recomputing only from t on bounds the saving at about 3.6× for
this network. The last line reads ``ablation_speedup_vs_naive=X forward_equivalents=F``:
X = naive time ÷ fast time, F = fast time ÷ forward time.

Usage: ``python benchmarks/ablation_cost.py [--model trained_models/densenet_bc_100_cifar10.pt]
[--images 1000] [--naive-sample 16 | --naive-all] [--threads N] [--keep-cache DIR]``.
``--keep-cache data/probe-cache`` leaves the fast path's result where ``reuse-analysis
agreement`` / ``table --metric ablation`` look for it, so the matrix is not computed twice.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _forward_losses(model, x, y, chunk):
    """Per-image losses and correctness of one full forward pass, chunk by chunk."""
    import torch

    from reuse_analysis.probes import cross_entropy

    losses, correct = [], []
    with torch.inference_mode():
        for i in range(0, len(x), chunk):
            logits = model(x[i : i + chunk])
            losses.append(cross_entropy(logits, y[i : i + chunk]).double())
            correct.append(logits.argmax(1) == y[i : i + chunk])
    return torch.cat(losses), torch.cat(correct)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="trained_models/densenet_bc_100_cifar10.pt")
    parser.add_argument("--dataset", default=None, help="default: recorded in the checkpoint")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--chunk-size", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="timed plain forward passes")
    parser.add_argument("--naive-sample", type=int, default=16)
    parser.add_argument("--naive-all", action="store_true", help="time all naive connections")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--seed", type=int, default=0, help="which connections are sampled")
    parser.add_argument("--keep-cache", default=None, help="copy the fast result file here")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from reuse_analysis.analysis import load_structure
    from reuse_analysis.modelcard import hardware
    from reuse_analysis.probes import ProbeSettings, connection_table, probe_inputs
    from reuse_analysis.prune import apply_cuts

    state_dict, structure, ckpt = load_structure(args.model)
    settings = ProbeSettings(
        dataset=args.dataset,
        data_dir=args.data_dir,
        images=args.images,
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        device="cpu",
    )
    model, x, y, data_key = probe_inputs(state_dict, structure, ckpt, settings)
    connections = sum(
        block.num_layers * (block.num_layers + 1) // 2
        + (block.num_layers + 1 if block.extra is not None else 0)
        for block in structure.blocks
    )
    print(
        f"{Path(args.model).name}: {structure.summary()}, {connections} connections; "
        f"{len(x)} {settings.split} images of {data_key['dataset']}, chunks of "
        f"{args.chunk_size}, ≤ {args.batch_size} images per pass; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {hardware()}",
        file=sys.stderr,
    )

    _forward_losses(model, x[: args.chunk_size], y[: args.chunk_size], args.chunk_size)
    times: list[float] = []

    def time_forward() -> torch.Tensor:
        for _ in range(args.repeats):
            start = time.perf_counter()
            losses, _ = _forward_losses(model, x, y, args.chunk_size)
            times.append(time.perf_counter() - start)
        return losses

    base_loss = time_forward()

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        table = connection_table(
            model, x, y, "ablation", chunk_size=args.chunk_size, batch_size=args.batch_size,
            cache_dir=tmp, data_key=data_key, progress=True,
        )  # fmt: skip
        fast = time.perf_counter() - start
        if args.keep_cache:
            Path(args.keep_cache).mkdir(parents=True, exist_ok=True)
            for f in Path(tmp).glob("ablation-*.json"):
                shutil.copy(f, Path(args.keep_cache) / f.name)
    print(f"fast ablation matrix: {fast:.1f} s", file=sys.stderr)
    time_forward()  # before and after: load from other processes drifts
    forward = statistics.median(times)
    print(f"forward pass over {len(x)} images: {forward:.2f} s (median of {len(times)}: "
          f"{args.repeats} before and {args.repeats} after the fast path)",
          file=sys.stderr)  # fmt: skip

    rows = list(table[["block", "source", "target"]].itertuples(index=False, name=None))
    sample = rows if args.naive_all else random.Random(args.seed).sample(rows, args.naive_sample)
    from tqdm import tqdm

    naive_times, worst = [], 0.0
    fast_values = table.set_index(["block", "source", "target"])["loss_increase"]
    import pandas as pd

    for cut in tqdm(sample, desc="naive", unit="connection"):
        cuts = pd.DataFrame([cut], columns=["block", "source", "target"])
        start = time.perf_counter()
        model.load_state_dict(apply_cuts(state_dict, structure, cuts))
        losses, _ = _forward_losses(model, x, y, args.chunk_size)
        naive_times.append(time.perf_counter() - start)
        worst = max(worst, abs(float((losses - base_loss).mean()) - float(fast_values[cut])))
    model.load_state_dict(state_dict)
    per_connection = statistics.mean(naive_times)
    naive = per_connection * (len(rows) + 1)  # every connection, plus the baseline pass
    how = "all timed" if args.naive_all else f"{len(sample)} sampled, extrapolated"
    print(
        f"naive: {per_connection:.2f} s per connection ({how}) → {naive:.1f} s for "
        f"{len(rows)} connections + baseline; largest |fast − naive| loss increase on the "
        f"checked connections: {worst:.2e}",
        file=sys.stderr,
    )
    print(f"{'':<8} {'seconds':>9} {'forward passes':>15}")
    print(f"{'forward':<8} {forward:9.1f} {1.0:15.1f}")
    print(f"{'naive':<8} {naive:9.1f} {naive / forward:15.1f}")
    print(f"{'fast':<8} {fast:9.1f} {fast / forward:15.1f}")
    print(f"ablation_speedup_vs_naive={naive / fast:.2f} forward_equivalents={fast / forward:.1f}")


if __name__ == "__main__":
    main()
