"""Every way a DenseNet's weights arrive on disk loads to the same state_dict."""

from __future__ import annotations

import argparse
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision
from layouts import AttrBlocksNet

from reuse_analysis.checkpoint import (
    check_finite,
    count_parameters,
    load_checkpoint,
    save_checkpoint,
    strip_wrapper_prefixes,
    upgrade_legacy_keys,
)
from reuse_analysis.errors import CheckpointError


@pytest.fixture(scope="module")
def small():
    """A small DenseNet-BC (bearpaw-style names) and its state_dict."""
    torch.manual_seed(0)
    model = AttrBlocksNet(layers=(2, 2, 2), trans_names=("bn1", "conv1"), fc="fc")
    return model, OrderedDict(model.state_dict())


def _same(a, b):
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _save(obj, path, **kw):
    torch.save(obj, path, **kw)
    return path


@pytest.mark.parametrize(
    ("wrap", "container"),
    [
        (lambda sd: sd, "raw state_dict"),
        (
            lambda sd: {"state_dict": sd, "epoch": 3, "best_acc": 94.1},
            "state_dict under 'state_dict'",
        ),
        (lambda sd: {"model": sd, "optimizer": {}, "epoch": 1}, "state_dict under 'model'"),
        (lambda sd: {"model_state_dict": sd, "epoch": 1}, "state_dict under 'model_state_dict'"),
        (lambda sd: {"net": sd, "acc": 93.2, "epoch": 200}, "state_dict under 'net'"),
    ],
)
def test_wrappers(tmp_path, small, wrap, container):
    _, sd = small
    loaded = load_checkpoint(_save(wrap(sd), tmp_path / "m.pt"))
    _same(loaded.state_dict, sd)
    assert loaded.container == container


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "model.", "module._orig_mod."])
def test_prefixes(tmp_path, small, prefix):
    _, sd = small
    wrapped = {prefix + k: v for k, v in sd.items()}
    _same(load_checkpoint(_save(wrapped, tmp_path / "m.pt")).state_dict, sd)


def test_lightning_checkpoint(tmp_path, small):
    _, sd = small
    ckpt = {
        "state_dict": {"model." + k: v for k, v in sd.items()},
        "pytorch-lightning_version": "2.4.0",
        "epoch": 9,
        "global_step": 1000,
        "hyper_parameters": {"lr": 0.1, "arch": "densenet"},
    }
    loaded = load_checkpoint(_save(ckpt, tmp_path / "m.ckpt"))
    _same(loaded.state_dict, sd)
    assert loaded.meta["epoch"] == 9
    assert loaded.meta["hyper_parameters"]["lr"] == 0.1


def test_torchvision_reference_script_checkpoint_with_namespace_args(tmp_path, small):
    """torchvision's references/train.py stores argparse args; allow-listed, no opt-in."""
    _, sd = small
    args = argparse.Namespace(lr=0.1, model="densenet121", output_dir=None)
    ckpt = {"model": sd, "optimizer": {}, "lr_scheduler": {}, "epoch": 89, "args": args}
    loaded = load_checkpoint(_save(ckpt, tmp_path / "m.pth"))
    _same(loaded.state_dict, sd)
    assert loaded.meta["args"]["model"] == "densenet121"


def test_numpy_scalars_beside_weights_load_safely(tmp_path, small):
    _, sd = small
    ckpt = {"net": sd, "acc": np.float64(93.5), "epoch": np.int64(300), "hist": np.arange(3)}
    loaded = load_checkpoint(_save(ckpt, tmp_path / "m.pt"))
    assert loaded.meta["acc"] == 93.5 and loaded.meta["epoch"] == 300


def test_legacy_torchvision_keys_and_legacy_format(tmp_path):
    sd = torchvision.models.densenet121().state_dict()
    old = {k.replace("norm1", "norm.1").replace("conv2", "conv.2"): v for k, v in sd.items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    path = _save(old, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    loaded = load_checkpoint(path)
    _same(loaded.state_dict, sd)
    model = torchvision.models.densenet121()
    model.load_state_dict(loaded.state_dict, strict=True)


def test_upgrade_legacy_keys_leaves_modern_keys_alone():
    sd = {
        "features.denseblock1.denselayer1.norm.1.weight": torch.ones(1),
        "fc.weight": torch.ones(1),
    }
    assert list(upgrade_legacy_keys(sd)) == [
        "features.denseblock1.denselayer1.norm1.weight",
        "fc.weight",
    ]
    assert list(strip_wrapper_prefixes({"module.a": 1, "module.b": 2})) == ["a", "b"]
    assert list(strip_wrapper_prefixes({"module.a": 1, "b": 2})) == ["module.a", "b"]


def test_torchscript_archive(tmp_path, small):
    model, sd = small
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.trace(model.eval(), torch.randn(1, 3, 32, 32))
        torch.jit.save(scripted, tmp_path / "m.ts")
    loaded = load_checkpoint(tmp_path / "m.ts")
    assert loaded.container == "TorchScript archive"
    _same(loaded.state_dict, sd)


def test_pickled_module_loads_without_running_its_code(tmp_path, small):
    """A whole pickled module: its tensors and module tree read, its classes never imported."""
    model, sd = small
    path = _save(model, tmp_path / "whole.pt")
    loaded = load_checkpoint(path)
    _same(loaded.state_dict, sd)
    assert loaded.container == "pickled layouts.AttrBlocksNet module, read without running its code"
    legacy = load_checkpoint(
        _save(model, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    )
    _same(legacy.state_dict, sd)


def test_own_format_round_trip(tmp_path, small):
    _, sd = small
    path = save_checkpoint(
        tmp_path / "ours.pt", sd, arch="tiny", config={"growth_rate": 12}, epoch=5, accuracy=0.5
    )
    loaded = load_checkpoint(path)
    _same(loaded.state_dict, sd)
    assert loaded.arch == "tiny" and loaded.config == {"growth_rate": 12}
    assert loaded.meta["epoch"] == 5 and loaded.container == "reuse-analysis checkpoint"
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)), "not a PyTorch checkpoint"),
        (lambda p: p.write_text('{"weights": [1, 2, 3]}'), "JSON file"),
        (lambda p: p.write_text("hello\nthis is text\n"), "text file"),
        (lambda p: torch.save([1, 2, 3], p), "holds a list"),
        (lambda p: torch.save({"epoch": 3, "lr": 0.1}, p), "no weight tensors"),
    ],
)
def test_bad_files(tmp_path, make, message):
    path = tmp_path / "bad.pt"
    make(path)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_truncated_file(tmp_path, small):
    _, sd = small
    full = _save(sd, tmp_path / "full.pt").read_bytes()
    for cut in (len(full) // 2, len(full) - 100):
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(full[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupted"):
            load_checkpoint(path)
    legacy = _save(sd, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False).read_bytes()
    path = tmp_path / "legacy_cut.pt"
    path.write_bytes(legacy[: len(legacy) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_check_finite_names_the_tensor():
    sd = {"a.weight": torch.ones(3), "b.weight": torch.tensor([1.0, float("nan"), float("inf")])}
    with pytest.raises(CheckpointError, match=r"b\.weight \(2 of 3\)"):
        check_finite(sd)
    check_finite({"a.weight": torch.ones(2), "n": torch.tensor(3)})


def test_count_parameters_skips_running_statistics():
    bn = torch.nn.BatchNorm2d(4)
    assert count_parameters(bn.state_dict()) == 8
