"""Transition redundancy from the rank of the next block's read-in, against untrained."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from reuse_analysis.cli import cli
from reuse_analysis.models import create_model
from reuse_analysis.redundancy import energy_dims, transition_redundancy
from reuse_analysis.structure import infer_structure

RANK = 8


def _plain(seed=0):
    torch.manual_seed(seed)
    model = create_model("densenet40", block_config=(6, 6, 6))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    return sd, infer_structure(sd)


def _low_rank_read_in(sd, structure, block=2, rank=RANK):
    """Every layer of ``block`` reads only ``rank`` directions of the transition's output."""
    nxt = structure.blocks[block - 1]
    c = nxt.in_channels
    generator = torch.Generator().manual_seed(1)
    basis = torch.randn(rank, c, generator=generator)
    for layer in nxt.layers:
        key = layer.first_conv.key
        w = sd[key]
        out, _, kh, kw = w.shape
        mix = torch.randn(out * kh * kw, rank, generator=generator) * 0.05
        rows = (mix @ basis).reshape(out, kh, kw, c).permute(0, 3, 1, 2)
        sd[key] = w.clone()
        sd[key][:, :c] = rows
    return sd


def test_energy_dims_of_a_known_spectrum():
    m = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.0]))
    # squares 9, 4, 1 of 14: 9 + 4 = 13 ≥ 0.9 × 14 = 12.6
    assert energy_dims(m) == 2
    assert energy_dims(m, 0.5) == 1
    assert energy_dims(torch.zeros(3, 3)) == 0


def test_untrained_network_gets_no_suggestion():
    sd, structure = _plain()
    reds = transition_redundancy(sd, structure)
    assert [r.transition for r in reds] == [1, 2]
    for r in reds:
        assert r.suggested_compression is None
        assert r.theta_half_supported is False  # plain DenseNet, but no evidence
        assert r.read_in.fraction == pytest.approx(r.read_in.untrained_mean, abs=0.03)
        assert 0.6 < r.read_in.untrained_mean < 0.95


def test_read_in_rank_ignores_the_order_of_the_transition_channels():
    """One permutation of the transition's output channels, applied to every reader, is the
    same network; the measure must not change (rank does not depend on channel order)."""
    sd, structure = _plain()
    sd = _low_rank_read_in(sd, structure)
    c = structure.blocks[1].in_channels
    perm = torch.randperm(c, generator=torch.Generator().manual_seed(5))
    shuffled = dict(sd)
    for layer in structure.blocks[1].layers:
        w = sd[layer.first_conv.key].clone()
        w[:, :c] = w[:, perm]
        shuffled[layer.first_conv.key] = w
    before = transition_redundancy(sd, structure)[0]
    after = transition_redundancy(shuffled, structure)[0]
    assert after.read_in.dims == before.read_in.dims
    assert after.suggested_compression == before.suggested_compression


def test_low_rank_read_in_suggests_compression():
    sd, structure = _plain()
    sd = _low_rank_read_in(sd, structure)
    first, second = transition_redundancy(sd, structure)
    assert first.suggested_compression is not None
    c = structure.blocks[1].in_channels
    assert first.channels == c
    # the read-in has rank 8: its energy dimension, recomputed with numpy
    rows = [
        sd[layer.first_conv.key][:, :c].permute(0, 2, 3, 1).reshape(-1, c).double().numpy()
        for layer in structure.blocks[1].layers
    ]
    s2 = np.linalg.svd(np.concatenate(rows), compute_uv=False) ** 2
    dims = int(np.searchsorted(np.cumsum(s2) / s2.sum(), 0.9) + 1)
    assert first.read_in.dims == dims <= RANK
    assert first.read_in.p_value <= 0.05
    assert first.suggested_compression == round(dims / c / first.read_in.untrained_mean, 3)
    assert first.suggested_compression <= 0.5 and first.theta_half_supported is True
    assert second.suggested_compression is None  # block 3's read-in was left untrained


def test_redundancy_json_and_text(tmp_path):
    sd, structure = _plain()
    path = tmp_path / "m.pt"
    torch.save(_low_rank_read_in(sd, structure), path)
    result = CliRunner().invoke(cli, ["redundancy", str(path), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["concat_order"]["order"] == "oldest-first"
    first, second = payload["transitions"]
    assert {"suggested_compression", "measure", "untrained_reference", "read_in"} <= set(first)
    assert isinstance(first["suggested_compression"], float)
    assert second["suggested_compression"] is None
    assert first["untrained_reference"] == first["read_in"]["untrained_mean"]
    text = CliRunner().invoke(cli, ["redundancy", str(path)])
    assert text.exit_code == 0 and "suggested θ'" in text.stdout


def test_redundancy_module_does_not_import_matplotlib():
    code = "import sys, reuse_analysis.redundancy; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pca_dims_of_hand_built_samples():
    from reuse_analysis.redundancy import pca_dims

    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(500, 2, generator=generator)
    # five channels, all mixtures of two latent signals, one constant (ignored)
    mix = torch.tensor([[1.0, 0.0, 1.0, 2.0, 0.0], [0.0, 1.0, 1.0, -1.0, 0.0]])
    samples = latent @ mix + torch.tensor([0, 0, 0, 0, 7.0])
    assert pca_dims(samples) == 2
    assert pca_dims(torch.randn(2000, 6, generator=generator)) == 6


def test_redundancy_on_images(tmp_path):
    torch.manual_seed(0)
    model = create_model("densenet40", block_config=(2, 2, 2), num_classes=4)
    path = tmp_path / "m.pt"
    torch.save(model.state_dict(), path)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (16, 32, 32, 3), dtype=np.uint8)
    y = np.arange(16) % 4
    data = tmp_path / "tiny.npz"
    np.savez(data, x_train=x, y_train=y, x_test=x, y_test=y)
    args = ["redundancy", str(path), "--json", "--dataset", f"npz:{data}", "--images", "8"]
    result = CliRunner().invoke(cli, [*args, "--data-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    first, second = json.loads(result.stdout)["transitions"]
    for t in (first, second):
        pca = t["activation_pca"]
        assert pca["images"] == 8 and 0 < pca["fraction"] <= 1
        assert pca["dims"] == round(pca["fraction"] * t["channels"])
        assert pca["untrained_mean"] is not None
    assert first["suggested_compression"] is None  # untrained weights: no suggestion
