"""Statistics of a run's per-epoch reuse log, on hand-built tables with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from reuse_analysis.dynamics import COLUMNS, epoch_statistics, reuse_dynamics
from reuse_analysis.figure5 import figure5


def _table(weight) -> pd.DataFrame:
    """Two blocks of 4 layers (a transition after block 1, the classifier after block 2);
    ``weight(block, source, target)`` gives each cell's mean |w|."""
    rows = [
        (
            b,
            s,
            t,
            "layer" if t <= 4 else ("transition" if b == 1 else "classifier"),
            weight(b, s, t),
        )
        for b in (1, 2)
        for t in range(1, 6)
        for s in range(t)
    ]
    return pd.DataFrame(
        rows, columns=["block", "source", "target", "target_kind", "mean_abs_weight"]
    )


def test_uniform_columns():
    stats = epoch_statistics(_table(lambda b, s, t: 0.5))
    assert stats["layer_unevenness"] == 0.0
    assert stats["row0_ratio"] == 1.0
    assert stats["classifier_focus"] == 1.0
    assert np.isnan(stats["fig5_block1"])  # not the figure's configuration


def test_row0_weakest_and_a_focused_classifier():
    def weight(b, s, t):
        if t == 5 and b == 2:  # classifier: sources 0..4, the last quarter is source 4
            return 3.0 if s == 4 else 1.0
        return 0.25 if s == 0 else 1.0 + 0.1 * s

    stats = epoch_statistics(_table(weight))
    # block 2's layers with ≥ 3 sources: targets 3 and 4; row 0 is the weakest in both
    assert stats["row0_weakest_share"] == 1.0
    # target 3: 0.25 / median(1.1, 1.2); target 4: 0.25 / median(1.1, 1.2, 1.3)
    assert stats["row0_ratio"] == pytest.approx(np.median([0.25 / 1.15, 0.25 / 1.2]))
    assert stats["classifier_focus"] == pytest.approx(3.0)
    cv = [np.std(w) / np.mean(w) for w in ([0.25, 1.1, 1.2], [0.25, 1.1, 1.2, 1.3])] * 2
    assert stats["layer_unevenness"] == pytest.approx(np.median(cv))


def test_dynamics_of_a_log_with_the_figure_itself():
    fig = figure5()
    rows = [
        (b, s, t, "transition" if t == 13 else "layer", 0.1 + fig[b][s, t - 1])
        for b in (1, 2, 3)
        for t in range(1, 14)
        for s in range(t)
    ]
    table = pd.DataFrame(
        rows, columns=["block", "source", "target", "target_kind", "mean_abs_weight"]
    )
    flat = table.assign(mean_abs_weight=0.3)
    log = pd.concat([flat.assign(epoch=0), table.assign(epoch=1)], ignore_index=True)
    dyn = reuse_dynamics(log)
    assert list(dyn.columns) == COLUMNS
    assert list(dyn["epoch"]) == [0, 1]
    np.testing.assert_allclose(dyn.loc[1, ["fig5_block1", "fig5_block2", "fig5_block3"]], 1.0)
    assert dyn.loc[0, ["fig5_block1", "fig5_block2", "fig5_block3"]].isna().all()
    assert dyn.loc[0, "layer_unevenness"] == 0.0 and dyn.loc[1, "layer_unevenness"] > 0.3


def test_dynamics_figure_draws_each_statistic_readably():
    from figure_checks import assert_readable

    from reuse_analysis.plotting import dynamics_figure

    fig = figure5()
    kinds = {1: "transition", 2: "transition", 3: "classifier"}
    table = pd.DataFrame(
        [
            (b, s, t, kinds[b] if t == 13 else "layer", 0.1 + fig[b][s, t - 1])
            for b in (1, 2, 3)
            for t in range(1, 14)
            for s in range(t)
        ],
        columns=["block", "source", "target", "target_kind", "mean_abs_weight"],
    )
    rng = np.random.default_rng(0)
    noisy = table.assign(mean_abs_weight=table["mean_abs_weight"] + rng.random(len(table)))
    dyn = reuse_dynamics(
        pd.concat([noisy.assign(epoch=0), table.assign(epoch=1)], ignore_index=True)
    )
    drawn = dynamics_figure(dyn, title="a run")
    assert_readable(drawn)
    left, middle, right = drawn.axes
    assert [line.get_label() for line in left.get_lines()[:3]] == ["block 1", "block 2", "block 3"]
    np.testing.assert_allclose(left.get_lines()[0].get_ydata(), dyn["fig5_block1"])
    np.testing.assert_allclose(middle.get_lines()[0].get_ydata(), dyn["row0_weakest_share"])
    np.testing.assert_allclose(right.get_lines()[0].get_ydata(), dyn["classifier_focus"])
    assert dyn["classifier_focus"].notna().all()
    low, high = left.get_xlim()
    assert [t for t in left.get_xticks() if low <= t <= high] == [0, 1]  # whole epochs
    # a run without a classifier column still draws a readable figure
    assert_readable(dynamics_figure(dyn.assign(classifier_focus=np.nan)))


# ----------------------------------------------------------------------------- untrained reference
def _densenet(name="densenet40", **overrides):
    from reuse_analysis.models import create_model
    from reuse_analysis.structure import infer_structure

    torch.manual_seed(0)
    sd = {k: v.detach() for k, v in create_model(name, **overrides).state_dict().items()}
    return sd, infer_structure(sd)


def _log(sd, structure, epochs=2):
    """A reuse log of ``epochs + 1`` epochs: the weights, each epoch more uneven."""
    from reuse_analysis.metrics import reuse_table

    table = reuse_table(sd, structure, "oldest-first", "weight")[
        ["block", "source", "target", "target_kind", "mean_abs_weight"]
    ]
    parts = [
        table.assign(epoch=e, mean_abs_weight=table.mean_abs_weight * (1 + e * table.source))
        for e in range(epochs + 1)
    ]
    return pd.concat(parts, ignore_index=True)[["epoch", *table.columns]]


def test_untrained_reference_is_the_summary_of_its_seeds():
    """Each seed's statistics are those of that seed's fresh initialisation, and the
    summary is their mean, sd, min and max; its Figure-5 r is figure5_match's reference."""
    from reuse_analysis.dynamics import STATISTICS, reference_summary, untrained_samples
    from reuse_analysis.figure5 import figure5_match
    from reuse_analysis.metrics import reuse_table
    from reuse_analysis.nulls import untrained_like

    sd, structure = _densenet()
    samples = untrained_samples(sd, structure, seeds=4)
    assert samples["seed"].tolist() == [0, 1, 2, 3]
    for seed in (0, 3):
        table = reuse_table(untrained_like(sd, structure, seed), structure, "oldest-first")
        expected = epoch_statistics(table)
        got = samples.loc[seed, STATISTICS].to_dict()
        assert got == pytest.approx(expected, nan_ok=True)
    assert samples["fig5_block1"].nunique() == 4  # the seeds differ
    summary = reference_summary(samples)
    assert summary.attrs["seeds"] == 4
    for stat in STATISTICS:
        v = samples[stat].to_numpy(float)
        assert summary.loc[stat, "mean"] == pytest.approx(v.mean())
        assert summary.loc[stat, "sd"] == pytest.approx(v.std(ddof=1))
        assert (summary.loc[stat, "min"], summary.loc[stat, "max"]) == (v.min(), v.max())
    trained = reuse_table(sd, structure, "oldest-first")
    match = figure5_match(trained, sd, structure, seeds=4)
    for b in (1, 2, 3):
        assert summary.loc[f"fig5_block{b}", "mean"] == pytest.approx(match.untrained_mean[b])
        assert summary.loc[f"fig5_block{b}", "sd"] == pytest.approx(match.untrained_sd[b])


def test_the_runs_architecture_comes_from_arch_the_files_beside_the_log_or_its_column(tmp_path):
    from reuse_analysis.checkpoint import save_checkpoint
    from reuse_analysis.dynamics import run_architecture
    from reuse_analysis.errors import ReuseAnalysisError

    sd, structure = _densenet()
    log = _log(sd, structure)
    path = tmp_path / "run.reuse.csv"
    log.to_csv(path, index=False)
    with pytest.raises(ReuseAnalysisError, match="give it with --arch NAME"):
        run_architecture(path, log)
    given = run_architecture(path, log, "densenet40")
    assert (given.name, given.source) == ("densenet40", "--arch")
    column = run_architecture(path, log.assign(arch="densenet40"))
    assert (column.name, column.source) == ("densenet40", "the log's arch column")
    # an older log: empty arch cells decide nothing
    with pytest.raises(ReuseAnalysisError, match="--arch"):
        run_architecture(path, log.assign(arch=np.nan))
    save_checkpoint(tmp_path / "run.train.pt", sd, arch="densenet40", config={})
    state = run_architecture(path, log)
    assert (state.name, state.source) == ("densenet40", "run.train.pt beside the log")
    save_checkpoint(tmp_path / "run.pt", sd, arch="densenet40", config={})
    assert run_architecture(path, log).source == "run.pt beside the log"
    assert run_architecture(path, log, "densenet40").source == "--arch"  # --arch first
    # an architecture whose table is not the log's is refused, by name
    with pytest.raises(ReuseAnalysisError, match=r"densenet_bc_100 \(--arch\).*not the log.s"):
        run_architecture(path, log, "densenet_bc_100")
    with pytest.raises(ReuseAnalysisError, match="unknown model 'nope'"):
        run_architecture(path, log, "nope")


def test_dynamics_command_draws_the_untrained_band_and_prints_it(tmp_path):
    import json

    from click.testing import CliRunner
    from figure_checks import assert_readable

    from reuse_analysis.cli import cli
    from reuse_analysis.dynamics import reference_summary, untrained_samples
    from reuse_analysis.plotting import dynamics_figure

    sd, structure = _densenet()
    log = tmp_path / "run.reuse.csv"
    _log(sd, structure).to_csv(log, index=False)
    fig = tmp_path / "d.png"
    result = CliRunner().invoke(
        cli, ["dynamics", str(log), "--arch", "densenet40", "-o", str(fig), "--json"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["architecture"] == {
        "arch": "densenet40", "source": "--arch", "structure": structure.summary()
    }  # fmt: skip
    reference = reference_summary(untrained_samples(sd, structure))
    stats = payload["untrained"]["statistics"]
    assert payload["untrained"]["seeds"] == 20 and set(stats) == set(reference.index)
    for name, row in stats.items():
        for key in ("mean", "sd", "min", "max"):
            want = reference.loc[name, key]
            assert (row[key] is None and np.isnan(want)) or row[key] == pytest.approx(want)
    assert [r["epoch"] for r in payload["epochs"]] == [0, 1, 2]
    assert "untrained reference: 20 seeds of densenet40 (--arch)" in result.stderr
    assert fig.read_bytes()[:4] == b"\x89PNG"
    # the figure: a band over the untrained range behind each curve, its mean dotted
    dyn = pd.DataFrame(payload["epochs"]).astype(float)
    drawn = dynamics_figure(dyn, reference=reference, title="run.reuse.csv: a title\nbands")
    assert_readable(drawn)
    left, middle, right = drawn.axes
    for ax, names in ((left, ["fig5_block1", "fig5_block2", "fig5_block3"]),
                      (middle, ["row0_weakest_share"]), (right, ["classifier_focus"])):  # fmt: skip
        bands = [c.get_paths()[0].vertices[:, 1] for c in ax.collections if c.get_paths()]
        assert len(bands) == len(names)
        for band, name in zip(bands, names, strict=True):
            assert band.min() == pytest.approx(reference.loc[name, "min"])
            assert band.max() == pytest.approx(reference.loc[name, "max"])
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "untrained (20 seeds)" in labels
    means = [ln.get_ydata()[0] for ln in middle.get_lines() if ln.get_linestyle() == ":"]
    assert means == [pytest.approx(reference.loc["row0_weakest_share", "mean"])]
    # an architecture that is not the run's: one Error line, no figure
    other = tmp_path / "o.png"
    refused = CliRunner().invoke(
        cli, ["dynamics", str(log), "--arch", "densenet_bc_100", "-o", str(other)]
    )
    assert refused.exit_code == 2 and refused.stderr.startswith("Error: ")
    assert len(refused.stderr.strip().splitlines()) == 1 and not other.exists()
