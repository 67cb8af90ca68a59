"""The command line, as a user drives it: real files in, real files out, exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from io import StringIO
from pathlib import Path

import click
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


COMMANDS = ("heatmap", "table", "info", "models", "report", "redundancy", "agreement", "prune",
            "train", "evaluate", "card", "compare")  # fmt: skip


def test_help_lists_commands():
    result = run("--help")
    assert result.exit_code == 0
    listed = {line.split()[0] for line in result.output.split("Commands:")[1].splitlines()[1:]}
    assert set(COMMANDS) <= set(cli.commands)
    assert listed == set(cli.commands)


def _options(command):
    return [p for p in command.params if isinstance(p, click.Option)]


def test_every_option_has_help():
    def walk(command, path):
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*path, name])

    missing = [
        f"{' '.join(path)} {'/'.join(o.opts)}"
        for path, command in walk(cli, ["reuse-analysis"])
        for o in _options(command)
        if not (o.help or "").strip()
    ]
    assert missing == []
    assert len(list(walk(cli, []))) == len(cli.commands) + 1


WRITERS = ("heatmap", "table", "report", "agreement", "prune", "train", "card", "compare")
MACHINE_READABLE = ("table", "info", "models", "redundancy", "agreement", "prune", "train",
                    "evaluate", "card", "compare")  # fmt: skip


@pytest.mark.parametrize("name", WRITERS)
def test_every_command_that_writes_a_file_takes_dash_o(name):
    [output] = [o for o in _options(cli.commands[name]) if "--output" in o.opts]
    assert output.opts == ["-o", "--output"]
    assert "-o, --output" in run(name, "--help").output


@pytest.mark.parametrize("name", MACHINE_READABLE)
def test_every_machine_readable_output_takes_json(name):
    [flag] = [o for o in _options(cli.commands[name]) if "--json" in o.opts]
    assert flag.is_flag and flag.name == "as_json"


# (command, old spelling, new spelling, parameter): the renamed options of this release.
RENAMED = [
    ("train", "--out", "--output", "output"),
    ("train", "--limit-train", "--train-images", "limit_train"),
    ("train", "--limit-test", "--test-images", "limit_test"),
    ("compare", "--limit-train", "--train-images", "limit_train"),
    ("compare", "--limit-test", "--test-images", "limit_test"),
    ("evaluate", "--limit", "--test-images", "limit_test"),
    ("prune", "--limit", "--test-images", "limit_test"),
]


@pytest.mark.parametrize(("name", "old", "new", "param"), RENAMED)
def test_old_spellings_parse_the_same_and_are_hidden(tmp_path, name, old, new, param):
    model = tmp_path / "m.pt"
    model.write_bytes(b"x")
    value = str(tmp_path / "out.pt") if param == "output" else "7"
    required = {
        "train": ["--arch", "densenet40", "--dataset", "cifar10"],
        "compare": ["--arch", "nin", "--dataset", "cifar10"],
        "evaluate": [str(model)],
        "prune": [str(model)],
    }[name]
    command = cli.commands[name]
    parsed = {
        spelling: command.make_context(name, [*required, spelling, value]).params[param]
        for spelling in (old, new)
    }
    expected = Path(value) if param == "output" else 7
    assert parsed == {old: expected, new: expected}
    help_text = run(name, "--help").output
    assert re.search(rf"(?<![\w-]){re.escape(new)}(?![\w-])", help_text)
    assert not re.search(rf"(?<![\w-]){re.escape(old)}(?![\w-])", help_text)


def test_table_json_is_format_json(kuangliu_path):
    by_flag = run("table", kuangliu_path, "--json")
    by_format = run("table", kuangliu_path, "--format", "json")
    assert by_flag.exit_code == by_format.exit_code == 0
    assert by_flag.stdout == by_format.stdout
    assert json.loads(by_flag.stdout)["columns"] == COLUMNS
    both = run("table", kuangliu_path, "--json", "--format", "csv")
    assert both.exit_code == 2 and both.stderr.startswith("Error: ")


HEAVY = {"torch", "pandas", "matplotlib"}


def _imported(importtime_stderr):
    """Top-level names of the modules a ``-X importtime`` run imported."""
    return {
        line.rsplit("|", 1)[-1].strip().split(".")[0]
        for line in importtime_stderr.splitlines()
        if line.startswith("import time:")
    }


def test_the_cli_modules_import_nothing_heavy():
    modules = "reuse_analysis.cli, reuse_analysis.options, reuse_analysis.text"
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {modules}"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    imported = _imported(out.stderr)
    assert "reuse_analysis" in imported and "click" in imported
    assert not imported & HEAVY


@pytest.mark.parametrize(
    "args",
    [
        ["heatmap", "MISSING"],
        ["table", "MISSING", "-o", "OUT/t.csv"],
        ["info", "MISSING", "--json"],
        ["report", "MISSING", "-o", "OUT/r.pdf"],
        ["report", "MODEL", "--sweep", "MISSING"],
        ["redundancy", "MISSING"],
        ["agreement", "MISSING"],
        ["prune", "MISSING", "--fraction", "0.5", "-o", "OUT/p.pt"],
        ["evaluate", "MISSING"],
        ["card", "MISSING", "--command", "train"],
        ["train", "--arch", "densenet40", "--dataset", "npz:MISSING", "-o", "OUT/m.pt"],
        ["compare", "--arch", "nin", "--dataset", "imagefolder:MISSING", "-o", "OUT/c.md"],
    ],
)
def test_a_missing_file_is_reported_before_torch_is_imported(tmp_path, args):
    """One ``Error:`` line and exit 2, from the checks click runs while parsing."""
    model = tmp_path / "model.pt"
    model.write_bytes(b"not looked at")
    missing = tmp_path / "missing.pt"
    subst = {"MISSING": str(missing), "MODEL": str(model)}
    argv = [subst.get(a, a.replace("MISSING", str(missing)).replace("OUT", str(tmp_path / "o")))
            for a in args]  # fmt: skip
    script = "from reuse_analysis.cli import main; main()"
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", script, *argv], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert out.stdout == ""
    lines = [line for line in out.stderr.splitlines() if not line.startswith("import time:")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    assert str(missing) in lines[0] and "no such file" in lines[0]
    assert not _imported(out.stderr) & HEAVY
    assert not (tmp_path / "o").exists()


# The paper's Table 1/2 parameter counts, in millions (10 classes; ImageNet models 1000).
PAPER_MILLIONS = {"densenet40": 1.0, "densenet100_k12": 7.0, "densenet100_k24": 27.2,
                  "densenet_bc_100": 0.8, "densenet_bc_250": 15.3, "densenet_bc_190": 25.6,
                  "densenet121": 8.0, "densenet161": 28.7, "densenet169": 14.1,
                  "densenet201": 20.0, "densenet264": 33.3}  # fmt: skip


def test_models_lists_every_model_with_parameters_and_input_size():
    from reuse_analysis.models import ZOO, create_model, list_models

    result = run("models", "--json")
    assert result.exit_code == 0, result.output
    entries = {e["name"]: e for e in json.loads(result.stdout)}
    assert list(entries) == list_models()
    assert set(PAPER_MILLIONS) | set(ZOO) == set(entries)
    for name, millions in PAPER_MILLIONS.items():
        assert entries[name]["paper_parameters_m"] == millions
        assert abs(entries[name]["parameters"] / 1e6 - millions) < 0.05, name
    # torchvision counts its DenseNet-121 independently
    tv = sum(p.numel() for p in torchvision.models.densenet121().parameters())
    assert entries["densenet121"]["parameters"] == tv
    assert {n: e["input_size"] for n, e in entries.items() if e["input_size"] != 32} == {
        n: 224 for n in ("densenet121", "densenet161", "densenet169", "densenet201", "densenet264")
    }
    for name in [*ZOO, "densenet_bc_100", "densenet121"]:
        e = entries[name]
        model = create_model(name).eval()
        assert sum(p.numel() for p in model.parameters()) == e["parameters"]
        x = torch.zeros(1, e["in_channels"], e["input_size"], e["input_size"])
        with torch.no_grad():
            assert model(x).shape == (1, e["num_classes"])
    listed = run("models")
    assert listed.exit_code == 0
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    assert list(rows) == list_models()
    assert "0.77M" in rows["densenet_bc_100"] and "3×224×224" in rows["densenet121"]


def test_sweep_csv_round_trip(tmp_path):
    """What `prune --sweep` writes is what `report --sweep` reads, with its settings."""
    from reuse_analysis.prune import SUMMARY_COLUMNS, SWEEP_COLUMNS, read_sweep, write_sweep

    df = pd.DataFrame(
        [["unpruned", 0.0, 0, 0.0, 0.0, 0.75, 0.8], ["weight", 0.5, 6, 0.5, 0.25, 0.5, 1.25]],
        columns=SWEEP_COLUMNS,
    )
    df.attrs.update(model="m", test_images=48, scope="global")
    path = tmp_path / "sweep.csv"
    write_sweep(df, str(path))
    back = read_sweep(str(path))
    assert list(back.columns) == [*SWEEP_COLUMNS, "seed", *SUMMARY_COLUMNS, "test_images", "scope"]
    assert back["runs"].tolist() == [1, 1] and back["seed"].isna().all()
    pd.testing.assert_frame_equal(back[SWEEP_COLUMNS], df, check_dtype=False)
    assert back.attrs["test_images"] == 48 and back.attrs["scope"] == "global"
    assert back.attrs["model"] == "sweep"
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.csv"]


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


def test_pickled_module_loads_without_and_with_trust_flag(bad_inputs):
    """A whole pickled module is read without its code (issue 13), flag or not."""
    for flags in ((), ("--trust-pickle",)):
        result = run("info", bad_inputs["pickled module"], *flags)
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
