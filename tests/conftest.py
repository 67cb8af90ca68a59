"""Shared fixtures: a headless matplotlib backend and figures closed after every test."""

from __future__ import annotations

import os

import matplotlib
import pytest

matplotlib.use("Agg")


def pytest_configure(config):
    """One intra-op thread per test process, unless OMP_NUM_THREADS says otherwise.

    The tests' tensors are tiny; with several threads on a busy machine, every parallel
    region waits for threads that were descheduled (a GoogLeNet step on two 8×8 images:
    1.7 s with two threads, 0.02 s with one, on a shared 2-core machine). Subprocesses
    inherit the setting through the environment.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``slow`` under CI and ``gpu`` without CUDA."""
    in_ci = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
    skip_slow = pytest.mark.skip(reason="slow test: skipped when CI=true")
    gpu_ok = None
    for item in items:
        if in_ci and "slow" in item.keywords:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords:
            if gpu_ok is None:
                import torch

                gpu_ok = torch.cuda.is_available()
            if not gpu_ok:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
