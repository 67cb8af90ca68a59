"""Cost of the full ablation matrix of DenseNet-BC-100 on 1,000 images: fast path against naive.

The ablation matrix holds, for every connection s → t (459 in DenseNet-BC-100, counting
the transition and classifier columns), the exact increase of the loss when that
connection alone is cut. Three costs, measured in one run on the same images:

* ``forward``: one full forward pass of the unchanged model over the images, in
  inference mode;
* ``fast``: ``reuse_analysis.probes.connection_table(metric="ablation")`` with no cache:
  it keeps each block's features, forms the variants by subtracting partial convolutions,
  stacks them (≤ ``--batch-size`` images per pass) and recomputes only from the cut
  target on; inside the target's block, the share of every later first conv that comes
  from the features before the target (the same in every variant) is computed once per
  target column;
* ``naive``: for each connection, one full forward pass with its slice zeroed. Every naive
  connection does the same work, so by default ``--naive-sample`` connections (a seeded
  random sample) are timed and the mean extrapolated to all connections plus the baseline
  pass; ``--naive-all`` times every connection.

On a shared machine the load from other processes drifts over an hour, so the three are
interleaved: the images are processed in chunks of ``--chunk-size``, and for each chunk
the plain forward pass (median of ``--repeats``), the fast ablation of that chunk and that
chunk's share of the naive sample are timed back to back. Totals are sums over chunks.
Every naive result is checked against the fast one on the same chunk (the largest
difference of the loss increase is printed).

Counting multiply-adds, recomputing only from t on bounds the saving at about 3.6× for
this network; sharing the features before t within its block raises the bound to about
4.3×. The last line reads ``ablation_speedup_vs_naive=X forward_equivalents=F``:
X = naive time ÷ fast time, F = fast time ÷ forward time.

Usage: ``python benchmarks/ablation_cost.py [--model trained_models/densenet_bc_100_cifar10.pt]
[--images 1000] [--chunk-size 100] [--naive-sample 20 | --naive-all] [--threads N]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="trained_models/densenet_bc_100_cifar10.pt")
    parser.add_argument("--dataset", default=None, help="default: recorded in the checkpoint")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--chunk-size", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="plain forward passes per chunk")
    parser.add_argument("--naive-sample", type=int, default=20)
    parser.add_argument("--naive-all", action="store_true", help="time all naive connections")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--seed", type=int, default=0, help="which connections are sampled")
    args = parser.parse_args()

    import pandas as pd
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from reuse_analysis.analysis import load_structure
    from reuse_analysis.modelcard import hardware
    from reuse_analysis.probes import ProbeSettings, connection_table, cross_entropy, probe_inputs
    from reuse_analysis.prune import apply_cuts

    state_dict, structure, ckpt = load_structure(args.model)
    settings = ProbeSettings(
        dataset=args.dataset, data_dir=args.data_dir, images=args.images, device="cpu"
    )
    model, x, y, data_key = probe_inputs(state_dict, structure, ckpt, settings)
    connections = [
        (block.index, s, t)
        for block in structure.blocks
        for t in range(1, block.num_layers + 1 + (block.extra is not None))
        for s in range(t)
    ]
    chunks = [slice(i, min(i + args.chunk_size, len(x))) for i in range(0, len(x), args.chunk_size)]
    if args.naive_all:
        per_chunk = [connections] * len(chunks)
    else:
        sample = random.Random(args.seed).sample(connections, args.naive_sample)
        per_chunk = [sample[i :: len(chunks)] for i in range(len(chunks))]
    print(
        f"{Path(args.model).name}: {structure.summary()}, {len(connections)} connections; "
        f"{len(x)} {settings.split} images of {data_key['dataset']} in {len(chunks)} chunks "
        f"of ≤ {args.chunk_size}, ≤ {args.batch_size} images per pass; naive: "
        f"{'all' if args.naive_all else args.naive_sample} connections; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; {hardware()}",
        file=sys.stderr,
    )

    def forward(xb: torch.Tensor, yb: torch.Tensor) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        with torch.inference_mode():
            losses = cross_entropy(model(xb), yb).double()
        return time.perf_counter() - start, losses

    forward(x[:2], y[:2])  # warm-up
    forward_s = fast_s = 0.0
    naive_times: list[float] = []
    worst = 0.0
    for i, rows in enumerate(chunks):
        xb, yb = x[rows], y[rows]
        times = [forward(xb, yb) for _ in range(args.repeats)]
        forward_s += statistics.median(t for t, _ in times)
        base = times[0][1]
        start = time.perf_counter()
        table = connection_table(
            model, xb, yb, "ablation", chunk_size=len(xb), batch_size=args.batch_size,
            progress=True,
        )  # fmt: skip
        fast_s += time.perf_counter() - start
        fast = table.set_index(["block", "source", "target"])["loss_increase"]
        for cut in per_chunk[i]:
            cuts = pd.DataFrame([cut], columns=["block", "source", "target"])
            model.load_state_dict(apply_cuts(state_dict, structure, cuts))
            seconds, losses = forward(xb, yb)  # the forward pass only: conservative
            naive_times.append(seconds)
            worst = max(worst, abs(float((losses - base).mean()) - float(fast[cut])))
        model.load_state_dict(state_dict)
        print(
            f"chunk {i + 1}/{len(chunks)}: forward {forward_s:.1f} s, fast {fast_s:.1f} s, "
            f"naive {statistics.mean(naive_times) if naive_times else float('nan'):.2f} s "
            "per connection and chunk (so far)",
            file=sys.stderr,
        )
    if args.naive_all:
        naive = sum(naive_times) + forward_s  # plus the baseline pass
    else:
        naive = statistics.mean(naive_times) * len(chunks) * (len(connections) + 1)
    how = "all timed" if args.naive_all else f"{len(naive_times)} sampled, extrapolated"
    print(
        f"naive: {len(connections)} connections + baseline ({how}); largest |fast − naive| "
        f"loss increase over the checked connections and chunks: {worst:.2e}",
        file=sys.stderr,
    )
    print(f"{'':<8} {'seconds':>9} {'forward passes':>15}")
    print(f"{'forward':<8} {forward_s:9.1f} {1.0:15.1f}")
    print(f"{'naive':<8} {naive:9.1f} {naive / forward_s:15.1f}")
    print(f"{'fast':<8} {fast_s:9.1f} {fast_s / forward_s:15.1f}")
    speedup, equivalents = naive / fast_s, fast_s / forward_s
    print(f"ablation_speedup_vs_naive={speedup:.2f} forward_equivalents={equivalents:.1f}")


if __name__ == "__main__":
    main()
