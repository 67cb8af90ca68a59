"""`compare`: a real (tiny) comparison end to end, resuming after an interruption, the
table and figure files, and the command line."""

from __future__ import annotations

import json
import re

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from reuse_analysis.cli import cli
from reuse_analysis.compare import (
    COLUMNS,
    CompareConfig,
    compare,
    summarize,
    to_markdown,
    write_outputs,
)
from reuse_analysis.errors import ReuseAnalysisError
from reuse_analysis.models import create_model
from reuse_analysis.plotting import plot_compare
from reuse_analysis.structure import estimate_macs, infer_structure

# Narrow versions of two zoo models, so that both train in seconds.
TINY = {
    "d2l_densenet": {"num_init_features": 8, "growth_rate": 4, "block_config": [2, 2]},
    "resnet18": {"arch": [[1, 8], [1, 16]]},
}


def _npz(path, n_train, n_test, side):
    """Colour-cued images: 4 classes, 3 channels, ``side`` pixels."""
    rng = np.random.default_rng(0)
    y = np.arange(n_train + n_test) % 4
    x = rng.integers(0, 60, (len(y), side, side, 3), dtype=np.uint8)
    x[np.arange(len(y)), :, :, y % 3] += (60 * (1 + y // 3)).astype(np.uint8)[:, None, None]
    np.savez(path, x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:], y_test=y[n_train:])
    return path


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    return _npz(tmp_path_factory.mktemp("cmp") / "tiny.npz", 16, 8, 16)


def _cfg(tmp_path, npz, **kw):
    settings = {
        "archs": ("d2l_densenet", "resnet18"),
        "dataset": f"npz:{npz}",
        "data_dir": str(tmp_path / "cache"),
        "epochs": 1,
        "batch_size": 8,  # two steps per architecture
        "device": "cpu",
        "work_dir": str(tmp_path / "work"),
        "measure_steps": 1,
        "measure_rounds": 1,
        "model_overrides": TINY,
    }
    return CompareConfig(**{**settings, **kw})


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_npz):
    """One comparison, interrupted in the second architecture's training and rerun.

    Returns the table, the folder, the rerun's notes and the steps the rerun trained.
    """
    tmp = tmp_path_factory.mktemp("run")
    cfg = _cfg(tmp, tiny_npz)
    steps = []

    def interrupt(epoch, step):
        steps.append(step)
        if len(steps) == 3:  # the first step of the second architecture
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compare(cfg, on_step=interrupt)
    notes, resumed = [], []
    df = compare(cfg, on_step=lambda epoch, step: resumed.append(step), log=notes.append)
    return df, tmp, notes, resumed


def test_compare_measures_and_trains_every_arch(compared):
    df = compared[0]
    assert list(df.columns) == COLUMNS
    assert df.arch.tolist() == ["d2l_densenet", "resnet18"]
    for row in df.itertuples():
        model = create_model(row.arch, num_classes=4, **TINY[row.arch])
        assert row.params == sum(p.numel() for p in model.parameters())
        assert row.train_img_s > 0 and row.infer_img_s > 0 and row.peak_train_mb > 0
        assert (row.epochs, row.train_images, row.test_images) == (1, 16, 8)
        assert 0 <= row.test_acc <= 1 and row.train_minutes > 0
        assert row.budget_minutes == pytest.approx(16 / row.train_img_s / 60)
    # FLOPs from torch's counter agree with the shape-only estimate (2 FLOPs per MAC).
    dense = create_model("d2l_densenet", num_classes=4, **TINY["d2l_densenet"])
    macs = estimate_macs(infer_structure(dense.state_dict()), 16)
    assert df.gflops[0] == pytest.approx(2 * macs / 1e9, rel=1e-6)
    assert "cores" in df.attrs["hardware"]
    assert df.attrs["speed_basis"] == "per CPU core (one thread, CPU time)"


def test_accuracy_is_that_of_the_saved_checkpoint(compared):
    """The accuracy in the table is what `evaluate` finds in the file compare kept."""
    df, tmp = compared[:2]
    for row in df.itertuples():
        (path,) = (tmp / "work").glob(f"{row.arch}-*[0-9a-f].pt")
        result = CliRunner().invoke(
            cli, ["evaluate", str(path), "--json", "--data-dir", str(tmp / "cache")]
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["accuracy"] == pytest.approx(row.test_acc)


def test_table_and_figure_files(compared, tmp_path):
    df = compared[0]
    md, png = write_outputs(df, tmp_path / "out" / "cmp.md")
    assert png == tmp_path / "out" / "cmp.png"
    text = md.read_text()
    assert text.count("\n| d2l_densenet |") == 1 and text.count("\n| resnet18 |") == 1
    assert df.attrs["hardware"] in text and "1 epoch(s) over 16 training images" in text
    assert "Images/s: per CPU core (one thread, CPU time), fastest step of 1 round(s)" in text
    assert matplotlib.image.imread(png).shape[1] > 800
    csv, _ = write_outputs(df, tmp_path / "out" / "cmp.csv")
    back = pd.read_csv(csv)
    assert list(back.columns) == [*COLUMNS, "hardware"]
    np.testing.assert_allclose(back.test_acc, df.test_acc, rtol=1e-5)
    with pytest.raises(ReuseAnalysisError, match=r"use \.csv or \.md"):
        write_outputs(df, tmp_path / "out" / "cmp.txt")


def test_figure_plots_accuracy_against_params_and_time(compared):
    df = compared[0]
    fig = plot_compare(df, title="t")
    by_params, by_time = fig.axes
    assert by_params.get_xscale() == "log"
    for ax, x in ((by_params, df.params / 1e6), (by_time, df.budget_minutes)):
        (points,) = ax.collections
        np.testing.assert_allclose(points.get_offsets(), np.c_[x, 100 * df.test_acc])
        assert [t.get_text() for t in ax.texts] == df.arch.tolist()


def test_interrupted_compare_resumes_where_it_stopped(compared):
    df, _, notes, resumed = compared
    assert resumed == [1]  # the finished arch is not retrained; the other continues
    assert sum("reusing the measurements" in n for n in notes) == 1
    assert any(n.startswith("resnet18: resuming") for n in notes)
    assert df.arch.tolist() == ["d2l_densenet", "resnet18"]


def test_cli_compare_writes_the_table_and_figure(tmp_path):
    npz = _npz(tmp_path / "small.npz", 8, 4, 8)
    out = tmp_path / "reports" / "cmp.md"
    args = ["compare", "--arch", "d2l_densenet", "--dataset", f"npz:{npz}", "--epochs", "1"]
    args += ["--batch-size", "4", "--measure-steps", "1", "--measure-rounds", "1"]
    args += ["--device", "cpu"]
    args += ["--data-dir", tmp_path / "cache", "--work-dir", tmp_path / "work", "-o", out]
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [str(out), str(out.with_suffix(".png"))]
    assert "d2l_densenet: timing 1 training and inference steps (round 1 of 1)" in result.stderr
    assert "d2l_densenet: training 1 epoch(s)" in result.stderr
    rows = [line for line in out.read_text().splitlines() if line.startswith("| d2l_densenet")]
    assert len(rows) == 1 and rows[0].endswith(" % |")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "resnet19"], "unknown model 'resnet19'"),
        (["--arch", "nin", "--arch", "nin"], "named twice"),
        (["--arch", "nin", "-o", "x.txt"], r"use \.md or \.csv"),
    ],
)
def test_cli_compare_bad_input(tmp_path, tiny_npz, args, message):
    result = CliRunner().invoke(
        cli,
        ["compare", "--dataset", f"npz:{tiny_npz}", "--data-dir", str(tmp_path), *args],
    )
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: ") and re.search(message, line)
    assert not (tmp_path / "reports").exists()


def test_markdown_of_a_handmade_table():
    df = pd.DataFrame(
        [["a", 1_500_000, 0.5, 100.0, 10.0, 40.0, 0.3, 2.5, 2, 100, 50, 0.5]], columns=COLUMNS
    )
    df.attrs.update(hardware="hw", dataset="d", image_shape=[3, 32, 32], settings={"epochs": 2})
    row = to_markdown(df).splitlines()[-1]
    assert row == "| a | 1.50M | 0.5 | 100 MB | 10.0 | 40.0 | 0.3 min | 2.5 min | 50.00 % |"


def test_speed_is_the_fastest_step_of_all_rounds():
    rounds = [
        {"train_s": [2.0, 1.0], "infer_s": [0.5], "peak_train_mb": 10.0},
        {"train_s": [4.0], "infer_s": [0.25, 1.0], "peak_train_mb": 12.0},
    ]
    assert summarize(rounds, batch=8) == {
        "train_img_s": 8.0,
        "infer_img_s": 32.0,
        "peak_train_mb": 11.0,
    }


def test_interrupted_measurements_resume_with_the_rounds_not_measured(
    tmp_path, tiny_npz, monkeypatch
):
    """Each round of each architecture is kept as soon as it is measured (fake, instant
    measurements here: the child process is what the other tests run for real)."""
    import reuse_analysis.compare as compare_module
    from reuse_analysis.data import load_dataset

    cfg = _cfg(tmp_path, tiny_npz, measure_rounds=2)
    ds = load_dataset(cfg.dataset, cfg.data_dir)
    calls, stop_at = [], [3]

    def fake_child(task, arch):
        calls.append(arch)
        if len(calls) == stop_at[0]:
            raise KeyboardInterrupt
        return {"train_s": [len(calls) / 10], "infer_s": [0.5], "peak_train_mb": len(calls)}

    monkeypatch.setattr(compare_module, "_in_child", fake_child)

    def measure(notes=None):
        log = notes.append if notes is not None else lambda m: None
        return compare_module._measure_all(cfg, ds, (3, 16, 16), "hw", log)

    with pytest.raises(KeyboardInterrupt):
        measure()
    assert calls == ["d2l_densenet", "resnet18", "resnet18"]  # round 2 runs in reverse order
    calls.clear()
    stop_at[0] = 0
    measured = measure()
    assert calls == ["resnet18", "d2l_densenet"]  # only round 2 was missing
    assert [r["peak_train_mb"] for r in measured["d2l_densenet"]["rounds"]] == [1, 2]
    assert [r["peak_train_mb"] for r in measured["resnet18"]["rounds"]] == [2, 1]
    assert measured["resnet18"]["train_img_s"] == pytest.approx(8 / 0.1)  # batch / fastest
    calls.clear()
    notes = []
    assert measure(notes) == measured and calls == []
    assert sum("reusing the measurements" in n for n in notes) == 1
    # other settings are other measurements
    cfg = _cfg(tmp_path, tiny_npz, measure_rounds=2, measure_steps=2)
    measure()
    assert len(calls) == 4
