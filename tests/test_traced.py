"""Traced analysis: the same table as the weight-name path on DenseNets, Inception branch
matrices with known answers, and `--arch` on the command line."""

from __future__ import annotations

import json
import re
from io import StringIO

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import torchvision
from click.testing import CliRunner
from layouts import layouts
from torch import nn

from reuse_analysis.analysis import analyze
from reuse_analysis.cli import cli
from reuse_analysis.errors import StructureError
from reuse_analysis.metrics import COLUMNS
from reuse_analysis.models import create_model
from reuse_analysis.plotting import plot_reuse_heatmap
from reuse_analysis.traced import analyze_traced

KEYS = ["block", "source", "target", "target_kind"]
LAYOUTS = layouts()


def assert_same_table(traced: pd.DataFrame, named: pd.DataFrame) -> None:
    assert list(traced.columns) == COLUMNS
    assert traced[KEYS].values.tolist() == named[KEYS].values.tolist()
    np.testing.assert_allclose(traced.mean_abs_weight, named.mean_abs_weight, rtol=0, atol=1e-6)
    np.testing.assert_allclose(traced.normalized, named.normalized, rtol=0, atol=1e-6)


def test_densenet_bc_100_traced_equals_weight_names():
    torch.manual_seed(0)
    model = create_model("densenet_bc_100")
    traced = analyze_traced(model)
    assert_same_table(traced.table, analyze(model).table)
    assert [g.num_layers for g in traced.structure.groups] == [16, 16, 16]
    assert [g.layout for g in traced.structure.groups] == ["dense"] * 3
    assert traced.structure.concat_order == "oldest-first"
    assert traced.table.attrs["concat_order"] == "oldest-first (traced)"


def test_memory_efficient_densenet_traces_like_the_default():
    """Its checkpointing asks whether inputs need gradients; under tracing they are proxies."""
    torch.manual_seed(0)
    small = {"growth_rate": 4, "block_config": (3, 3), "num_init_features": 8}
    model = create_model("densenet_bc_100", memory_efficient=True, **small)
    assert_same_table(analyze_traced(model).table, analyze(model).table)


def test_torchvision_densenet121_traced_equals_weight_names():
    torch.manual_seed(0)
    model = torchvision.models.densenet121()
    traced = analyze_traced(model, input_size=32)
    assert_same_table(traced.table, analyze(model.state_dict()).table)
    assert [g.num_layers for g in traced.structure.groups] == [6, 12, 24, 16]


def test_d2l_densenet_works_both_ways():
    """d2l concatenates one layer at a time: nested cats flatten into the same sources."""
    torch.manual_seed(0)
    model = create_model("d2l_densenet", in_channels=1, num_classes=5)
    traced = analyze_traced(model, input_size=28)
    named = analyze(model.state_dict())
    assert_same_table(traced.table, named.table)
    assert named.structure.variant == "DenseNet-C"  # plain layers, θ = 0.5
    kinds = traced.table.groupby("block").target_kind.last().tolist()
    assert kinds == ["transition"] * 3 + ["classifier"]


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_traced_finds_the_concat_order_of_every_layout(name):
    """kuangliu's torch.cat([new, old]) is read off the graph: no --concat-order needed."""
    build, shape, _ = LAYOUTS[name]
    torch.manual_seed(0)
    model = build()
    traced = analyze_traced(model, input_size=shape[-1])
    order = traced.structure.concat_order
    assert order == ("newest-first" if name == "kuangliu" else "oldest-first")
    assert_same_table(traced.table, analyze(model, concat_order=order).table)


def test_tracing_leaves_the_model_as_it_was():
    model = create_model("d2l_densenet").train()
    model.features.denseblock2.layers[0][0].eval()  # a mixed state must survive too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    analyze_traced(model)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------- Inception
# V[s][t]: the |w| that branch t+1's first conv of inception3b gives branch s+1 of
# inception3a (not monotone in either index, so a transposed matrix cannot pass).
V = np.array(
    [
        [0.30, 0.05, 0.20, 0.90],
        [0.10, 0.40, 0.60, 0.20],
        [0.70, 0.15, 0.10, 0.50],
        [0.20, 0.80, 0.30, 0.40],
    ]
)
WIDTHS_3A = [64, 128, 32, 32]  # channels of inception3a's four branches


@pytest.fixture(scope="module")
def googlenet():
    torch.manual_seed(0)
    model = create_model("googlenet")
    block = model.features.inception3b
    firsts = [block.b1[0], block.b2[0], block.b3[0], block.b4[1]]  # b4: max-pool first
    bounds = np.cumsum([0, *WIDTHS_3A])
    with torch.no_grad():
        for t, conv in enumerate(firsts):
            signs = torch.ones_like(conv.weight)
            signs.view(-1)[::2] = -1
            for s in range(4):
                conv.weight[:, bounds[s] : bounds[s + 1]] = float(V[s, t])
            conv.weight.mul_(signs)
    return model


@pytest.fixture(scope="module")
def googlenet_analysis(googlenet):
    return analyze_traced(googlenet)


def test_inception_branch_matrix_known_answer(googlenet_analysis):
    df = googlenet_analysis.table
    first = df[df.block == 1]
    grid = first.pivot(index="source", columns="target", values="mean_abs_weight")
    np.testing.assert_allclose(grid.to_numpy(), V, atol=1e-6)
    expected = (V - V.min(axis=0)) / (V.max(axis=0) - V.min(axis=0))
    norm = first.pivot(index="source", columns="target", values="normalized").to_numpy()
    np.testing.assert_allclose(norm, expected, atol=1e-6)
    assert set(first.target_kind) == {"branch"}
    assert df.attrs["layout"][1] == "matrix"
    assert df.attrs["source_labels"][1] == ["b1", "b2", "b3", "b4"]
    assert df.attrs["target_labels"][1] == ["b1", "b2", "b3", "b4"]
    assert df.attrs["block_titles"][1] == "inception3a\n→ inception3b"


def test_every_inception_module_gets_a_four_by_four_matrix(googlenet_analysis):
    structure = googlenet_analysis.structure
    shapes = [(len(g.sources), len(g.targets)) for g in structure.groups]
    assert shapes == [(4, 4)] * 8 + [(4, 1)]  # 9 modules: 8 links, then the classifier
    assert {g.layout for g in structure.groups} == {"matrix"}
    assert structure.groups[-1].targets[0].kind == "classifier"
    titles = [g.title.replace("\n", " ") for g in structure.groups]
    assert titles[2] == "inception4a → inception4b"  # across the stage's max-pool too
    assert titles[-1] == "inception5b → classifier"


def test_matrix_groups_are_drawn_full_with_branch_labels(googlenet_analysis):
    fig = plot_reuse_heatmap(googlenet_analysis.table)
    panels = [ax for ax in fig.axes if "→" in ax.get_title()]
    assert len(panels) == 9
    image = panels[0].get_images()[0]
    assert not np.ma.getmaskarray(image.get_array()).any()  # nothing masked: not a triangle
    assert [t.get_text() for t in panels[0].get_xticklabels()] == ["b1", "b2", "b3", "b4"]
    assert [t.get_text() for t in panels[0].get_yticklabels()] == ["b1", "b2", "b3", "b4"]
    assert not [p for p in panels[0].patches if not p.get_fill()]  # no outlined column


# ----------------------------------------------------------------------------- refusals
def test_resnet_has_nothing_to_trace():
    with pytest.raises(StructureError, match="ResNet reads no concatenation"):
        analyze_traced(create_model("resnet18"))


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else -self.conv(x)


def test_untraceable_and_wrong_size_models_say_why():
    with pytest.raises(StructureError, match=r"could not be traced with torch\.fx"):
        analyze_traced(_Branchy())
    build, _, _ = LAYOUTS["flat_sequential"]
    message = r"example input of shape \[1, 3, 1, 1\].*--input-size"
    with pytest.raises(StructureError, match=message):
        analyze_traced(build(), input_size=1)


# ----------------------------------------------------------------------------- command line
def run(*args, cwd=None, monkeypatch=None):
    if cwd is not None:
        monkeypatch.chdir(cwd)
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def d2l_file(tmp_path_factory):
    """A raw state_dict of d2l_densenet for 1-channel images and 5 classes."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("arch") / "d2l.pt"
    torch.save(create_model("d2l_densenet", in_channels=1, num_classes=5).state_dict(), path)
    return path


def test_cli_arch_sizes_the_model_from_the_weights(tmp_path, d2l_file):
    out = tmp_path / "fig.png"
    result = run("heatmap", d2l_file, "--arch", "d2l_densenet", "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert "traced: 4 dense blocks (4-4-4-4 layers)" in result.stderr
    assert "oldest-first (traced)" in result.stderr
    assert matplotlib.image.imread(out).shape[1] > 400
    traced = run("table", d2l_file, "--arch", "d2l_densenet")
    named = run("table", d2l_file)
    assert traced.exit_code == 0 and named.exit_code == 0
    assert_same_table(pd.read_csv(StringIO(traced.stdout)), pd.read_csv(StringIO(named.stdout)))


def test_cli_arch_module_function_and_json_layout(tmp_path, monkeypatch, googlenet):
    torch.save(googlenet.state_dict(), tmp_path / "goog.pt")
    (tmp_path / "my_models.py").write_text(
        "from reuse_analysis.models import create_model\n"
        "def build():\n"
        "    return create_model('googlenet')\n"
    )
    result = run(
        "table", "goog.pt", "--arch", "my_models:build", "--format", "json",
        cwd=tmp_path, monkeypatch=monkeypatch,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["layout"]["1"] == "matrix"
    rows = pd.DataFrame(payload["rows"])
    first = rows[rows.block == 1].pivot(index="source", columns="target", values="mean_abs_weight")
    np.testing.assert_allclose(first.to_numpy(), V, atol=1e-6)
    info = run("info", "goog.pt", "--arch", "googlenet", "--json")
    assert info.exit_code == 0, info.output
    assert len(json.loads(info.stdout)["groups"]) == 9


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ("googlenet", "the weights do not fit googlenet: .* missing"),
        ("resnet19", "unknown architecture 'resnet19'"),
        ("no_such_module:build", "cannot import 'no_such_module'"),
        ("resnet18", "the weights do not fit resnet18"),
    ],
)
def test_cli_arch_bad_input_one_error_line(tmp_path, d2l_file, arch, message):
    out = tmp_path / "out" / "fig.png"
    result = run("heatmap", d2l_file, "--arch", arch, "-o", out)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert re.search(message, lines[0]), lines[0]
    assert result.stdout == "" and not out.parent.exists()


def test_cli_arch_on_a_network_without_concatenations(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save(create_model("resnet18").state_dict(), path)
    result = run("heatmap", path, "--arch", "resnet18", "-o", tmp_path / "x.png")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ResNet reads no concatenation")
    assert not (tmp_path / "x.png").exists()


class _WeightNormedDense(nn.Module):
    """Two dense layers whose convolutions are weight-normalised (no `weight` parameter)."""

    def __init__(self):
        super().__init__()
        wn = nn.utils.parametrizations.weight_norm
        self.stem = nn.Conv2d(1, 2, 3, padding=1)
        self.layer1 = wn(nn.Conv2d(2, 2, 3, padding=1))
        self.layer2 = wn(nn.Conv2d(4, 2, 3, padding=1))
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x0 = self.stem(x)
        x1 = torch.cat([x0, self.layer1(x0)], 1)
        x2 = torch.cat([x1, self.layer2(x1)], 1)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x2, 1), 1))


def test_weight_normed_layers_are_read_through_their_computed_weight():
    torch.manual_seed(0)
    model = _WeightNormedDense()
    df = analyze_traced(model, input_size=8).table
    w2 = model.layer2.weight.detach().abs()  # [2, 4, 3, 3]: sources 0 and 1 have 2 channels
    got = df[(df.target == 2)].set_index("source").mean_abs_weight
    assert got[0] == pytest.approx(w2[:, :2].mean().item(), abs=1e-6)
    assert got[1] == pytest.approx(w2[:, 2:].mean().item(), abs=1e-6)
    assert df.groupby("target").target_kind.first().tolist() == ["layer", "layer", "classifier"]
