"""The training benchmark's choice of settings: its "best" variants must be each side's
fastest on the machine it runs on, not a fixed setting that is slow there."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"


def _load():
    spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_native_autocast_only_where_the_device_computes_in_low_precision():
    bench = _load()
    assert bench.native_autocast("cuda", None) is True
    assert bench.native_autocast("cpu", True) is True
    assert bench.native_autocast("cpu", False) is False  # AVX2 only: bf16 is emulated
    assert bench.native_autocast("cpu", None) is False  # flags unreadable


def test_best_is_the_faster_candidate_and_every_candidate_runs():
    bench = _load()
    rows = {"ours-best": (40.0, 1.0), "ours-best-eager": (52.0, 2.0)}
    assert bench.pick_best(rows, ("ours-best", "ours-best-eager")) == "ours-best-eager"
    rows["ours-best"] = (60.0, 1.0)
    assert bench.pick_best(rows, ("ours-best", "ours-best-eager")) == "ours-best"
    for candidates in bench.BEST.values():
        assert set(candidates) <= set(bench.DEFAULT)
        # candidates differ only in how they compile
        specs = {bench.SPECS[c][:4] == bench.SPECS[candidates[0]][:4] for c in candidates}
        assert specs == {True}
        assert len({bench.SPECS[c][4] for c in candidates}) == len(candidates)
