"""The Python surface: one Analysis type from both analyses, its JSON, its figure, and a
package that imports nothing heavy until it is used."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from matplotlib.figure import Figure

import reuse_analysis
from reuse_analysis import analysis as analysis_module
from reuse_analysis.checkpoint import save_checkpoint
from reuse_analysis.cli import cli
from reuse_analysis.models import create_model

SMALL = {"growth_rate": 4, "block_config": (2, 3, 2), "num_init_features": 8}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("densenet_bc_100", **SMALL).eval()


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "small.pt"
    save_checkpoint(path, model.state_dict(), arch="densenet_bc_100", config=model.config.to_dict())
    return path


def test_both_analyses_return_one_type_with_the_same_table(model):
    named = reuse_analysis.analyze(model)
    traced = reuse_analysis.analyze_traced(model)
    assert type(named) is type(traced) is reuse_analysis.Analysis
    pd.testing.assert_frame_equal(named.table, traced.table, check_exact=False, atol=1e-6)
    # 2, 3 and 2 layers with a transition, a transition and the classifier: (L+1)(L+2)/2 each
    assert len(named.table) == 6 + 10 + 6


def test_both_analyses_give_json_of_one_shape(model):
    named = json.loads(reuse_analysis.analyze(model).to_json())
    traced = json.loads(reuse_analysis.analyze_traced(model).to_json())
    assert list(named) == list(traced)
    assert list(named) == [
        "model", "structure", "concat_order", "concat_order_basis", "concat_order_provenance",
        "concat_order_text", "concat_order_evidence", "metric", "layout", "columns", "rows",
    ]  # fmt: skip
    assert traced["concat_order_basis"] == "read from the traced graph"
    assert traced["concat_order_provenance"] == "traced" and traced["concat_order_evidence"] is None
    # a freshly built model: every norm at (0, 1), so the order is assumed, and says why
    assert named["concat_order_provenance"] == "assumed"
    assert named["concat_order_text"] == (
        "oldest-first (assumed: detection inconclusive, all 7 batch-norm pairs at their "
        "initial values)"
    )
    assert (
        named["concat_order_evidence"]["both"] == named["concat_order_evidence"]["pairs"] == 7
    )  # 2 + 3 + 2 layers
    assert named["layout"] == traced["layout"] == {"1": "dense", "2": "dense", "3": "dense"}
    assert named["columns"] == traced["columns"]
    assert named["metric"] == traced["metric"] == "weight"
    assert named["concat_order"] == "oldest-first"
    assert traced["concat_order"] == "oldest-first (traced)"
    a, b = pd.DataFrame(named["rows"]), pd.DataFrame(traced["rows"])
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-6)


def test_table_json_command_has_one_shape_for_both_paths(saved):
    runner = CliRunner()
    named = runner.invoke(cli, ["table", str(saved), "--format", "json"])
    traced = runner.invoke(
        cli, ["table", str(saved), "--format", "json", "--arch", "densenet_bc_100"]
    )
    assert named.exit_code == 0 and traced.exit_code == 0, named.output + traced.output
    a, b = json.loads(named.stdout), json.loads(traced.stdout)
    assert list(a) == list(b)
    assert a["model"] == b["model"] == "small"
    for ra, rb in zip(a["rows"], b["rows"], strict=True):
        assert {k: ra[k] for k in ("block", "source", "target", "target_kind")} == {
            k: rb[k] for k in ("block", "source", "target", "target_kind")
        }
        assert ra["mean_abs_weight"] == pytest.approx(rb["mean_abs_weight"], abs=1e-7)


def test_redundancy_and_observations_agree_between_paths(model):
    named = reuse_analysis.analyze(model)
    traced = reuse_analysis.analyze_traced(model)
    pd.testing.assert_frame_equal(named.usage, traced.usage, check_exact=False, atol=1e-7)
    assert named.compressions == traced.compressions == {1: 0.5, 2: 0.5}
    a = [r.to_dict() for r in named.redundancy()]
    b = [r.to_dict() for r in traced.redundancy()]
    assert [r["transition"] for r in a] == [1, 2]
    assert a == b  # the same weights and structure: the same numbers
    named_obs = [o.to_dict() for o in named.observations()]
    assert named_obs == [o.to_dict() for o in traced.observations()]
    assert [o["number"] for o in named_obs] == [1, 2, 3, 4]


def test_usage_of_block_input_channels_by_hand(model):
    """Block 2's input channels: the mean over its layers of mean |w| per channel."""
    usage = reuse_analysis.analyze(model).usage
    sd = model.state_dict()
    c0 = (8 + 2 * 4) // 2  # transition 1 keeps half of block 1's 8 + 2·4 channels
    layers = [sd[f"features.denseblock2.denselayer{t}.conv1.weight"] for t in (1, 2, 3)]
    expected = np.mean([w[:, :c0].abs().mean(dim=(0, 2, 3)).numpy() for w in layers], axis=0)
    got = usage[usage.block == 2].usage.to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_channel_usage_is_computed_only_when_asked(model, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("channel usage computed for a table or a heatmap")

    monkeypatch.setattr(analysis_module, "input_channel_usage", refuse)
    result = reuse_analysis.analyze(model)
    assert len(result.table) == 22
    assert isinstance(result.heatmap(), Figure)
    with pytest.raises(AssertionError, match="channel usage computed"):
        result.usage  # noqa: B018 (computed on first access)


def test_heatmap_is_a_figure_of_the_table(model):
    result = reuse_analysis.analyze(model)
    fig = result.heatmap(normalize="none", cmap="jet")
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    images = [ax.images[0] for ax in panels][:3]
    assert len(images) == 3
    block1 = result.table[result.table.block == 1]
    np.testing.assert_allclose(
        images[0].get_array().compressed().max(), block1.mean_abs_weight.max(), rtol=1e-6
    )
    assert images[0].get_cmap().name == "jet"


def test_to_csv_is_the_table_command_output(saved):
    out = CliRunner().invoke(cli, ["table", str(saved)])
    assert out.exit_code == 0, out.output
    assert out.stdout == reuse_analysis.analyze(saved).to_csv()


def test_package_import_is_cheap_and_exports_lazily():
    code = (
        "import sys, reuse_analysis\n"
        "heavy = [m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules]\n"
        "print(heavy)\n"
        "from reuse_analysis.analysis import analyze\n"
        "print(reuse_analysis.analyze is analyze, 'matplotlib' in sys.modules)\n"
        "print(callable(reuse_analysis.plot_reuse_heatmap), sorted(reuse_analysis.__all__))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout.splitlines()
    assert out[0] == "[]"
    assert out[1] == "True False"  # the analysis never imports matplotlib
    assert out[2].startswith("True [")
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        reuse_analysis.nothing  # noqa: B018
