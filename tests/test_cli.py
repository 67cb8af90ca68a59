"""The command line, as a user drives it: real files in, real files out, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from io import StringIO

import matplotlib.figure
import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from click.testing import CliRunner
from layouts import layouts

from reuse_analysis.analysis import analyze
from reuse_analysis.cli import cli
from reuse_analysis.metrics import COLUMNS

LAYOUTS = layouts()


@pytest.fixture(scope="module")
def d121_path(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "densenet121.pth"
    torch.save(torchvision.models.densenet121().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def kuangliu_path(tmp_path_factory):
    torch.manual_seed(0)
    build, _, _ = LAYOUTS["kuangliu"]
    path = tmp_path_factory.mktemp("models") / "kuangliu.pth"
    torch.save({"net": build().state_dict(), "acc": 91.3, "epoch": 199}, path)
    return path


def run(*args, cwd=None):
    runner = CliRunner()
    if cwd is None:
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
    finally:
        os.chdir(old)


def test_help_lists_commands():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("heatmap", "table", "info", "train", "evaluate"):
        assert command in result.output


@pytest.mark.parametrize("ext", ["png", "pdf", "svg"])
def test_heatmap_formats(tmp_path, kuangliu_path, ext):
    out = tmp_path / f"fig.{ext}"
    result = run("heatmap", kuangliu_path, "-o", out, "--concat-order", "newest-first")
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == {"png": b"\x89PNG", "pdf": b"%PDF", "svg": b"<?xm"}[ext]
    assert "newest-first" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == [f"fig.{ext}"]


def test_heatmap_default_output_under_reports(tmp_path, kuangliu_path):
    result = run("heatmap", kuangliu_path, cwd=tmp_path)
    assert result.exit_code == 0, result.output
    out = tmp_path / "reports" / "kuangliu-heatmap.png"
    assert result.stdout.strip() == str(out.relative_to(tmp_path))
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 200 and image.shape[1] > 400


def test_heatmap_of_densenet121(tmp_path, d121_path, monkeypatch):
    drawn = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(
        matplotlib.figure.Figure,
        "savefig",
        lambda fig, *a, **k: drawn.append(fig) or save(fig, *a, **k),
    )
    out = tmp_path / "d121.png"
    result = run("heatmap", d121_path, "-o", out, "--normalize", "none", "--style", "paper")
    assert result.exit_code == 0, result.output
    assert matplotlib.image.imread(out).shape[2] == 4  # a PNG was written
    (fig,) = drawn
    panels = [ax for ax in fig.axes if ax.get_title().startswith("Dense Block")]
    assert [ax.get_title() for ax in panels] == [f"Dense Block {b}" for b in (1, 2, 3, 4)]
    raw = analyze(d121_path).table
    for ax, (block, layers) in zip(panels, enumerate((6, 12, 24, 16), start=1), strict=True):
        image = ax.get_images()[0]
        assert image.get_array().shape == (layers + 1, layers + 1)  # sources 0..L, targets 1..L+1
        rows = raw[raw.block == block]
        grid = np.full((layers + 1, layers + 1), np.nan)
        grid[rows.source, rows.target - 1] = rows.mean_abs_weight
        np.testing.assert_allclose(image.get_array().filled(np.nan), grid, rtol=1e-6)
        (outline,) = [p for p in ax.patches if not p.get_fill()]
        assert outline.get_x() == layers - 0.5  # the transition / classifier column
        kind = "Transition layer" if block < 4 else "Classification layer"
        assert any(t.get_text().replace("\n", " ").startswith(kind) for t in ax.texts)
    assert image.get_cmap().name.startswith("jet")  # the paper's colours
    assert image.get_clim() == pytest.approx((0.0, raw.mean_abs_weight.max()))  # raw scale


def test_table_csv_columns_and_values_match_library(kuangliu_path):
    result = run("table", kuangliu_path)
    assert result.exit_code == 0, result.output
    df = pd.read_csv(StringIO(result.stdout))
    assert list(df.columns) == COLUMNS
    expected = analyze(kuangliu_path).table
    assert len(df) == len(expected) == 3 * 15
    np.testing.assert_allclose(df.mean_abs_weight, expected.mean_abs_weight, rtol=1e-8)
    np.testing.assert_allclose(df.normalized, expected.normalized, rtol=1e-8, atol=1e-12)
    assert "oldest-first" in result.stderr


def test_table_json_file_states_its_assumptions(tmp_path, kuangliu_path):
    out = tmp_path / "table.json"
    result = run("table", kuangliu_path, "-o", out, "--concat-order", "newest-first")
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert payload["concat_order"] == "newest-first"
    assert payload["metric"] == "weight"
    assert payload["columns"] == COLUMNS
    assert set(payload["rows"][0]) == set(COLUMNS)
    assert "3 blocks × 4 layers" in payload["structure"]


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_info_reports_each_layout(tmp_path, name):
    build, _, exp = LAYOUTS[name]
    path = tmp_path / f"{name}.pt"
    torch.save(build().state_dict(), path)
    result = run("info", path, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert [b["num_layers"] for b in info["blocks"]] == list(exp.layers)
    assert {b["growth_rate"] for b in info["blocks"]} == {exp.growth}
    assert info["input_channels"] == exp.input_channels
    assert info["num_classes"] == exp.classes
    assert info["blocks"][0]["in_channels"] == exp.c0
    assert {b["bottleneck_width"] for b in info["blocks"]} == {exp.bottleneck}
    assert [b["extra"]["weight"] for b in info["blocks"]] == list(exp.extra)
    text = run("info", path)
    assert text.exit_code == 0
    assert f"k={exp.growth}" in text.stdout
    # and the analysis runs with no flags
    table = run("table", path)
    assert table.exit_code == 0
    assert len(pd.read_csv(StringIO(table.stdout))) == sum(
        (n + 1) * (n + 2) // 2 for n in exp.layers
    )


def _bad_inputs(tmp_path):
    """Each kind of bad input a user may hand the tool, as a path."""
    good = torchvision.models.densenet121().state_dict()
    cases = {}
    cases["missing"] = tmp_path / "missing.pt"
    (tmp_path / "folder").mkdir()
    cases["directory"] = tmp_path / "folder"
    (tmp_path / "empty.pt").write_bytes(b"")
    cases["empty"] = tmp_path / "empty.pt"
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(1).bytes(10_000))
    cases["random bytes"] = tmp_path / "random.pt"
    full = tmp_path / "full.pt"
    torch.save(good, full)
    (tmp_path / "truncated.pt").write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    cases["truncated"] = tmp_path / "truncated.pt"
    (tmp_path / "model.json").write_text(json.dumps({"layers": [1, 2]}))
    cases["json"] = tmp_path / "model.json"
    (tmp_path / "notes.txt").write_text("not a model\n")
    cases["text"] = tmp_path / "notes.txt"
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet.pt")
    cases["resnet"] = tmp_path / "resnet.pt"
    torch.save(torchvision.models.vgg11().state_dict(), tmp_path / "vgg.pt")
    cases["vgg"] = tmp_path / "vgg.pt"
    corrupted = dict(good)
    corrupted["features.denseblock2.denselayer4.conv1.weight"] = torch.randn(128, 221, 1, 1)
    torch.save(corrupted, tmp_path / "corrupted.pt")
    cases["corrupted shape"] = tmp_path / "corrupted.pt"
    nan = dict(good)
    nan["features.denseblock1.denselayer2.conv1.weight"] = torch.full((128, 96, 1, 1), np.nan)
    torch.save(nan, tmp_path / "nan.pt")
    cases["nan"] = tmp_path / "nan.pt"
    torch.save(torchvision.models.densenet121(), tmp_path / "pickled.pt")
    cases["pickled module"] = tmp_path / "pickled.pt"
    return cases


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    return _bad_inputs(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "directory",
        "empty",
        "random bytes",
        "truncated",
        "json",
        "text",
        "resnet",
        "vgg",
        "corrupted shape",
        "nan",
        "pickled module",
    ],
)
@pytest.mark.parametrize("command", ["heatmap", "table", "info"])
def test_bad_input_one_error_line_exit_2_no_output(tmp_path, bad_inputs, case, command):
    out = tmp_path / "out" / ("x.png" if command == "heatmap" else "x.csv")
    args = [command, bad_inputs[case]] + (["-o", out] if command != "info" else [])
    result = run(*args)
    assert result.exit_code == 2, (case, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert not out.exists()
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_pickled_module_loads_with_trust_flag(bad_inputs):
    result = run("info", bad_inputs["pickled module"], "--trust-pickle")
    assert result.exit_code == 0, result.output
    assert "4 blocks (6-12-24-16 layers)" in result.stdout


def test_bad_output_extension(tmp_path, kuangliu_path):
    result = run("heatmap", kuangliu_path, "-o", tmp_path / "fig.bmp")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ")


def test_interrupted_write_leaves_no_file(tmp_path, kuangliu_path, monkeypatch):
    """Ctrl-C while the image is half written: no partial file, no temporary left."""
    from matplotlib.figure import Figure

    def half_written(self, fname, **kwargs):
        with open(fname, "wb") as fh:
            fh.write(b"\x89PNG partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", half_written)
    result = run("heatmap", kuangliu_path, "-o", tmp_path / "fig.png")
    assert result.exit_code != 0
    assert list(tmp_path.iterdir()) == []


def test_python_dash_m_and_fast_help_import():
    """`python -m reuse_analysis --help` works and imports neither torch nor matplotlib."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "reuse_analysis", "--help"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0
    assert "heatmap" in out.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()}
    assert not imported & {"torch", "matplotlib", "pandas"}


def test_console_script_end_to_end(tmp_path, kuangliu_path):
    """The installed entry point: exit codes, stderr and file permissions as a shell sees them."""
    script = [sys.executable, "-c", "from reuse_analysis.cli import main; main()"]
    bad = subprocess.run(
        [*script, "info", str(tmp_path / "nope.pt")], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert bad.stdout == "" and bad.stderr.startswith("Error: ") and bad.stderr.count("\n") == 1
    out = tmp_path / "fig.png"
    good = subprocess.run(
        [*script, "heatmap", str(kuangliu_path), "-o", str(out)], capture_output=True, text=True
    )
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == str(out)
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask


def test_round_trip_of_the_house_cifar_model(tmp_path):
    """Our own DenseNet-BC-100, saved with its config: inferred = configured, rebuilt = same."""
    from reuse_analysis.checkpoint import load_checkpoint, save_checkpoint
    from reuse_analysis.evaluation import rebuild_model
    from reuse_analysis.models import create_model

    torch.manual_seed(0)
    model = create_model("densenet_bc_100").eval()
    path = save_checkpoint(
        tmp_path / "bc.pt",
        model.state_dict(),
        arch="densenet_bc_100",
        config=model.config.to_dict(),
    )
    info = json.loads(run("info", path, "--json").stdout)
    assert info["arch"] == "densenet_bc_100"
    assert [b["num_layers"] for b in info["blocks"]] == list(model.config.block_config)
    assert {b["growth_rate"] for b in info["blocks"]} == {model.config.growth_rate}
    assert info["blocks"][0]["in_channels"] == model.config.num_init_features
    assert info["blocks"][0]["extra"]["compression"] == model.config.compression
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuild_model(load_checkpoint(path)).eval()(x), model(x))
    table = pd.read_csv(StringIO(run("table", path).stdout))
    assert len(table) == 3 * 17 * 18 // 2
