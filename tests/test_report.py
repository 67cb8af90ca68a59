"""Reports: real PDFs written by the command, opened and read back."""

from __future__ import annotations

import json
import math
import re

import pypdf
import pytest
import torch
import torchvision
from click.testing import CliRunner

from reuse_analysis.cli import cli
from reuse_analysis.models import create_model
from reuse_analysis.observations import HOLDS, VERDICTS


@pytest.fixture(scope="module")
def bc100(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m") / "bc100.pt"
    torch.save(create_model("densenet_bc_100").state_dict(), path)
    return path


@pytest.fixture(scope="module")
def bc100_seed1(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("m") / "bc100_seed1.pt"
    torch.save(create_model("densenet_bc_100").state_dict(), path)
    return path


def _run(*args, env=None):
    return CliRunner(env=env).invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _text(reader):
    return [page.extract_text() for page in reader.pages]


def _images(page):
    return list(page.images)


def test_report_pages_verdicts_and_images(tmp_path, bc100):
    out = tmp_path / "r.pdf"
    result = _run("report", bc100, "-o", out)
    assert result.exit_code == 0, result.output
    reader = pypdf.PdfReader(out)
    rows = 3 * (17 * 18 // 2)
    # cover, heatmap, 4 observations, redundancy, classifier, table pages
    assert len(reader.pages) == 1 + 1 + 4 + 1 + 1 + math.ceil(rows / 96)
    text = _text(reader)
    assert "DenseNet-BC, 3 blocks × 16 layers, k=12, θ=0.5" in text[0]
    assert "769,162" in text[0]  # parameters
    assert "287.9 M multiply-adds" in text[0]
    assert (
        "concat order: oldest-first (assumed: detection inconclusive, all 48 batch-norm" in text[0]
    )
    assert "WARNING: the weights look untrained" in text[0]
    _check_observation_pages(text[2:6], bc100, blocks={1: 3, 2: 2, 3: 2, 4: 1})
    assert "Transition redundancy" in text[6] and "no suggested θ'" in text[6]
    assert "untrained" in text[6]
    assert "Classifier focus" in text[7]
    assert "Appendix" in text[8]
    assert len(_images(reader.pages[1])) == 3 + 1  # a panel per dense block + colour bar
    assert reader.metadata["/Author"].startswith("reuse-analysis")


def _check_observation_pages(pages, model, blocks):
    """Each observation on its own page, with the verdict, value, interval and nulls that
    `observations --json` gives for the same file, and one line per block."""
    payload = json.loads(_run("observations", model, "--json").stdout)
    for o, raw in zip(payload["observations"], pages, strict=True):
        page = " ".join(raw.split())  # undo the page's line wrapping
        n = o["number"]
        titles = [v for v in VERDICTS if f"Observation {n}: {v.upper()}" in page]
        assert titles == [o["verdict"]], (n, titles)
        verdicts = [v for v in VERDICTS if f"Verdict: {v} " in page + " "]
        assert verdicts == [o["verdict"]], (n, verdicts)
        assert f"{o['statistic']:.3f}" in page
        lo, hi = o["interval"]
        assert f"95 % interval [{lo:.3f}, {hi:.3f}]" in page
        u, p = o["null"]["untrained"], o["null"]["permuted"]
        assert f"untrained {u['mean']:.3f}" in page and f"permuted {p['mean']:.3f}" in page
        assert len(re.findall(r"Block \d+:", page)) == blocks[n] == len(o["blocks"])


def test_observation_pages_of_a_model_that_holds(tmp_path):
    from test_observations import _paper_like, _shaped

    sd, _ = _shaped(_paper_like)
    path = tmp_path / "paper.pt"
    torch.save(sd, path)
    out = tmp_path / "paper.pdf"
    assert _run("report", path, "-o", out).exit_code == 0
    text = _text(pypdf.PdfReader(out))
    for n, page in zip((1, 2, 3, 4), text[2:6], strict=True):
        assert f"Observation {n}: {HOLDS.upper()}" in page
    _check_observation_pages(text[2:6], path, blocks={1: 3, 2: 2, 3: 2, 4: 1})
    cover = " ".join(text[0].split())
    # hand-set weights, but batch norms never saw data: the cover says so, and only that
    assert "running statistics are at their initial values" in cover
    assert "initialisation scale" not in cover


def test_report_is_byte_reproducible(tmp_path, bc100):
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    a, b = tmp_path / "a.pdf", tmp_path / "b.pdf"
    assert _run("report", bc100, "-o", a, env=env).exit_code == 0
    assert _run("report", bc100, "-o", b, env=env).exit_code == 0
    assert a.read_bytes() == b.read_bytes()
    assert "2023-11-14" in pypdf.PdfReader(a).pages[0].extract_text()


def test_report_on_densenet121_layout(tmp_path):
    path = tmp_path / "d121.pth"
    torch.save(torchvision.models.densenet121().state_dict(), path)
    out = tmp_path / "d121.pdf"
    result = _run("report", path, "-o", out)
    assert result.exit_code == 0, result.output
    reader = pypdf.PdfReader(out)
    text = _text(reader)
    assert "4 blocks (6-12-24-16 layers)" in text[0]
    assert "224×224" in text[0]
    assert len(_images(reader.pages[1])) == 4 + 1
    assert text[6].count("After block") == 3


def test_two_models_get_difference_and_comparison_pages(tmp_path, bc100, bc100_seed1):
    out = tmp_path / "two.pdf"
    result = _run("report", bc100, bc100_seed1, "-o", out)
    assert result.exit_code == 0, result.output
    text = _text(pypdf.PdfReader(out))
    assert any("bc100_seed1 − bc100" in t for t in text)
    assert any("Statistics per model" in t for t in text)
    assert sum("Observation 1:" in t for t in text) == 2


def test_default_output_under_reports(tmp_path, bc100, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _run("report", bc100)
    assert result.exit_code == 0
    assert (tmp_path / "reports" / "bc100-report.pdf").is_file()


@pytest.mark.parametrize("content", [b"", b"garbage" * 100])
def test_failed_report_leaves_no_pdf(tmp_path, bc100, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    out = tmp_path / "out" / "r.pdf"
    result = _run("report", bc100, bad, "-o", out)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_redundancy_command(bc100):
    result = _run("redundancy", bc100, "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [t["transition"] for t in payload["transitions"]] == [1, 2]
    assert payload["transitions"][0]["channels"] == 108
    assert payload["transitions"][1]["compression"] == 0.5
    text = _run("redundancy", bc100)
    assert text.exit_code == 0 and "suggested θ" in text.stdout


def test_cover_says_how_many_test_images_the_accuracy_counts(tmp_path):
    from reuse_analysis.checkpoint import save_checkpoint

    model = create_model("densenet40", block_config=(3, 3))
    path = tmp_path / "d.pt"
    save_checkpoint(
        path,
        model.state_dict(),
        arch="densenet40",
        config=model.config.to_dict(),
        test_acc=0.6123,
        train_config={"limit_test": 2000},
        dataset={"name": "cifar10", "test_size": 10000},
    )
    out = tmp_path / "r.pdf"
    assert _run("report", path, "-o", out).exit_code == 0
    cover = _text(pypdf.PdfReader(out))[0]
    assert "61.23 % top-1 (test_acc recorded in the checkpoint, on 2,000 test images)" in cover


def test_cover_of_a_figure5_configuration_states_its_correlation(tmp_path):
    """A DenseNet-40 whose weights are set to the digitised figure (per cell, the figure's
    column-scaled value) correlates 1.00 in every block, stated on the cover next to the
    untrained reference; a model of another configuration gets no such line."""
    from reuse_analysis.figure5 import figure5
    from reuse_analysis.structure import infer_structure

    torch.manual_seed(0)
    sd = create_model("densenet40").state_dict()
    structure = infer_structure(sd)
    fig = figure5()
    for target in structure.targets():
        weight = sd[target.weight_key]
        for source, start, stop in target.slices:
            value = fig[target.block][source, target.index - 1]
            weight[:, start:stop] = 0.1 + value  # every |w| of the slice: its cell
    path = tmp_path / "d40.pt"
    torch.save(sd, path)
    out = tmp_path / "d40.pdf"
    assert _run("report", path, "-o", out).exit_code == 0
    cover = " ".join(_text(pypdf.PdfReader(out))[0].split())
    match = re.search(r"Figure 5 correlation \(Pearson r per block\): (\S+) / (\S+) / (\S+)", cover)
    assert match is not None, cover
    assert [float(v) for v in match.groups()] == [1.0, 1.0, 1.0]
    assert "untrained" in cover[match.end() : match.end() + 60]
    other = tmp_path / "bc.pdf"
    torch.save(create_model("densenet_bc_100").state_dict(), tmp_path / "bc.pt")
    assert _run("report", tmp_path / "bc.pt", "-o", other).exit_code == 0
    assert "Figure 5 correlation" not in _text(pypdf.PdfReader(other))[0]
