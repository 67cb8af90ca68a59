"""The concat order read from batch-norm statistics, for every public layout, both ways."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from layouts import layouts

from reuse_analysis.analysis import analyze
from reuse_analysis.cli import cli
from reuse_analysis.concat_order import (
    ASSUMED,
    DETECTED,
    REQUESTED,
    detect_concat_order,
    resolve_concat_order,
)
from reuse_analysis.structure import infer_structure

LAYOUTS = layouts()
#: How each layout's forward concatenates (kuangliu/pytorch-cifar: torch.cat([out, x])).
NATIVE = {"kuangliu": "newest-first"}
OTHER = {"oldest-first": "newest-first", "newest-first": "oldest-first"}


def _trained(name):
    """The layout's state_dict after one training-mode forward (running stats updated)."""
    build, shape, _ = LAYOUTS[name]
    torch.manual_seed(0)
    model = build().train()
    with torch.no_grad():
        model(torch.randn(*shape))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    return sd, infer_structure(sd)


def _mirrored(sd, structure, order):
    """The same network written in the other concat order: every target's input channels
    (conv and the norm in front of it) moved from ``order``'s slices to the other's."""
    out = dict(sd)
    for block in structure.blocks:
        targets = [(layer.index, layer.first_conv.key, layer.norm) for layer in block.layers]
        extra = block.extra
        key = extra.key if block.extra_kind == "classifier" else extra.conv.key
        targets.append((block.num_layers + 1, key, extra.norm))
        for target, key, norm in targets:
            src = block.source_slices(target, order)
            dst = block.source_slices(target, OTHER[order])
            index = np.empty(sd[key].shape[1], dtype=np.int64)
            for (_, a, b), (_, a2, b2) in zip(src, dst, strict=True):
                index[a2:b2] = np.arange(a, b)
            index = torch.from_numpy(index)
            out[key] = sd[key][:, index]
            for name in ("weight", "bias", "running_mean", "running_var"):
                out[f"{norm}.{name}"] = sd[f"{norm}.{name}"][index]
    return out


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_detects_the_order_of_every_layout_both_ways(name):
    sd, structure = _trained(name)
    native = NATIVE.get(name, "oldest-first")
    found = detect_concat_order(sd, structure)
    assert (found.order, found.basis) == (native, DETECTED)
    assert found.evidence.both == 0 and found.evidence.neither == 0
    pairs = sum(b.num_layers for b in structure.blocks)  # L-1 layer pairs + the extra's norm
    assert found.evidence.pairs == pairs
    assert getattr(found.evidence, native.replace("-", "_")) == pairs
    mirrored = detect_concat_order(_mirrored(sd, structure, native), structure)
    assert (mirrored.order, mirrored.basis) == (OTHER[native], DETECTED)


def test_untrained_statistics_decide_nothing():
    sd = torchvision.models.densenet121(weights=None).state_dict()
    found = detect_concat_order(sd, infer_structure(sd))
    assert (found.order, found.basis) == ("oldest-first", ASSUMED)
    assert found.evidence.both == found.evidence.pairs == 58
    assert found.detected is None


def test_file_without_running_statistics_is_assumed():
    sd, structure = _trained("bearpaw")
    bare = {k: v for k, v in sd.items() if "running" not in k}
    found = detect_concat_order(bare, structure)
    assert (found.order, found.basis, found.evidence.pairs) == ("oldest-first", ASSUMED, 0)


def test_explicit_order_that_contradicts_the_statistics_warns():
    sd, structure = _trained("kuangliu")
    decision = resolve_concat_order(sd, structure, "oldest-first")
    assert (decision.order, decision.basis, decision.detected) == (
        "oldest-first",
        REQUESTED,
        "newest-first",
    )
    assert (
        "of 12 consecutive batch-norm pairs, 0 share running statistics oldest-first and 12 "
        "newest-first" in decision.warning
    )
    agreeing = resolve_concat_order(sd, structure, "newest-first")
    assert agreeing.warning is None
    with pytest.raises(ValueError, match="auto"):
        resolve_concat_order(sd, structure, "sideways")


def test_analyze_uses_the_detected_order(tmp_path):
    sd, _ = _trained("kuangliu")
    result = analyze(sd)
    assert result.table.attrs["concat_order"] == "newest-first"
    assert result.table.attrs["concat_order_basis"] == DETECTED
    # the detected order gives the same table as asking for it
    asked = analyze(sd, concat_order="newest-first").table
    assert result.table["mean_abs_weight"].tolist() == asked["mean_abs_weight"].tolist()


def test_cli_records_the_basis_and_warns_once(tmp_path):
    sd, _ = _trained("kuangliu")
    path = tmp_path / "k.pt"
    torch.save(sd, path)
    runner = CliRunner()
    auto = runner.invoke(cli, ["table", str(path), "--format", "json"])
    assert auto.exit_code == 0, auto.output
    payload = json.loads(auto.stdout)
    assert payload["concat_order"] == "newest-first"
    assert payload["concat_order_basis"] == DETECTED
    assert "warning" not in auto.stderr
    wrong = runner.invoke(
        cli, ["table", str(path), "--format", "json", "--concat-order", "oldest-first"]
    )
    assert wrong.exit_code == 0
    assert json.loads(wrong.stdout)["concat_order_basis"] == REQUESTED
    contradictions = [line for line in wrong.stderr.splitlines() if "contradicts" in line]
    assert len(contradictions) == 1 and contradictions[0].startswith("warning: ")


def test_pattern_that_fits_the_other_order_is_named():
    from reuse_analysis.models import create_model
    from reuse_analysis.nulls import checkpoint_warnings, order_fit

    torch.manual_seed(0)
    sd = {
        k: v.clone()
        for k, v in create_model("densenet40", block_config=(6,) * 3).state_dict().items()
    }
    structure = infer_structure(sd)
    for block in structure.blocks:  # c0 = 16, k = 12: the two orders cut different slices
        for layer in block.layers:
            for s, a, b in block.source_slices(layer.index):
                sd[layer.first_conv.key][:, a:b] *= 1 + s % 3
    fit = order_fit(sd, structure)
    assert fit["oldest-first"] > 0.5 > fit["newest-first"]
    right = checkpoint_warnings(sd, structure, {"concat_order": "oldest-first"})
    assert not any("fits" in line for line in right)
    (wrong,) = [
        line
        for line in checkpoint_warnings(sd, structure, {"concat_order": "newest-first"})
        if "fits" in line
    ]
    assert "fits oldest-first better than the newest-first used" in wrong


# ----------------------------------------------------------------- what every output states
def test_each_decision_describes_its_order_and_what_it_rests_on():
    from reuse_analysis.concat_order import Evidence, OrderDecision

    sd, structure = _trained("kuangliu")
    pairs = sum(b.num_layers for b in structure.blocks)
    found = detect_concat_order(sd, structure)
    assert found.provenance == "detected"
    assert (
        found.describe()
        == f"newest-first (detected: {pairs} of {pairs} batch-norm pairs, 0 against)"
    )
    given = resolve_concat_order(sd, structure, "newest-first")
    assert (given.provenance, given.describe()) == ("given", "newest-first (given)")
    contradicted = resolve_concat_order(sd, structure, "oldest-first").describe()
    assert contradicted == "oldest-first (given; the batch-norm statistics say newest-first)"
    bare = detect_concat_order({k: v for k, v in sd.items() if "running" not in k}, structure)
    assert (bare.provenance, bare.describe()) == (
        "assumed",
        "oldest-first (assumed: detection inconclusive, no batch-norm running statistics to "
        "compare)",
    )
    tied = OrderDecision("oldest-first", ASSUMED, None, Evidence(3, 2, 0, 1, 6))
    assert tied.describe() == (
        "oldest-first (assumed: detection inconclusive, 3 vs 2 of 6 batch-norm pairs)"
    )
    assert tied.to_dict()["description"] == tied.describe()
    assert tied.to_dict()["provenance"] == "assumed"


def test_analysis_heatmap_and_table_json_state_the_detected_order(tmp_path):
    from figure_checks import assert_readable

    sd, structure = _trained("kuangliu")
    pairs = sum(b.num_layers for b in structure.blocks)
    expected = f"newest-first (detected: {pairs} of {pairs} batch-norm pairs, 0 against)"
    result = analyze(sd, name="kuangliu")
    assert result.order is not None and result.order.provenance == "detected"
    assert result.concat_order_text == expected
    payload = json.loads(result.to_json())
    assert payload["concat_order_provenance"] == "detected"
    assert payload["concat_order_text"] == expected
    assert payload["concat_order_evidence"]["newest_first"] == pairs
    fig = result.heatmap()
    assert fig.get_suptitle().splitlines()[-1] == f"concat order: {expected}"
    assert_readable(fig)  # the longer title is not cut
    given = analyze(sd, concat_order="newest-first")
    assert given.heatmap().get_suptitle().endswith("concat order: newest-first (given)")
    path = tmp_path / "k.pt"
    torch.save(sd, path)
    out = CliRunner().invoke(cli, ["heatmap", str(path), "-o", str(tmp_path / "k.png")])
    assert out.exit_code == 0, out.output
    assert f"concat order {expected}" in out.stderr


def test_info_states_the_order_with_its_evidence(tmp_path):
    sd, structure = _trained("kuangliu")
    pairs = sum(b.num_layers for b in structure.blocks)
    path = tmp_path / "k.pt"
    torch.save(sd, path)
    text = CliRunner().invoke(cli, ["info", str(path)])
    assert text.exit_code == 0, text.output
    line = (
        f"  concat order    newest-first (detected: {pairs} of {pairs} batch-norm pairs, 0 against)"
    )
    assert line in text.stdout.splitlines()
    payload = json.loads(CliRunner().invoke(cli, ["info", str(path), "--json"]).stdout)
    order = payload["concat_order"]
    assert (order["order"], order["provenance"], order["basis"]) == (
        "newest-first",
        "detected",
        DETECTED,
    )
    assert order["evidence"] == {
        "oldest_first": 0, "newest_first": pairs, "both": 0, "neither": 0, "pairs": pairs
    }  # fmt: skip
    untrained = tmp_path / "u.pt"
    torch.save(torchvision.models.densenet121(weights=None).state_dict(), untrained)
    assumed = json.loads(CliRunner().invoke(cli, ["info", str(untrained), "--json"]).stdout)
    assert assumed["concat_order"]["provenance"] == "assumed"
    assert "detection inconclusive" in assumed["concat_order"]["description"]
