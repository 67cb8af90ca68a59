"""Data sets: npz, image folders (plain and tarred), augmentation, offline errors."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reuse_analysis.data import DataError, load_dataset, normalize
from reuse_analysis.data import random_crop_flip as augment

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _write_folder(root: Path, classes=("cat", "dog", "emu"), per_class=4, size=8):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for i, c in enumerate(classes):
            d = root / split / c
            d.mkdir(parents=True)
            for j in range(per_class):
                pixels = np.full((size, size, 3), 40 * i, np.uint8) + rng.integers(
                    0, 9, (size, size, 3), dtype=np.uint8
                )
                Image.fromarray(pixels).save(d / f"{j}.png")
    return root


def test_a_channel_that_never_varies_standardises_to_finite_values(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (6, 4, 4, 2), dtype=np.uint8)
    x[..., 1] = 7  # the second channel is constant
    path = tmp_path / "flat.npz"
    np.savez(path, x_train=x, y_train=np.arange(6) % 2, x_test=x, y_test=np.arange(6) % 2)
    ds = load_dataset(f"npz:{path}", tmp_path)
    assert ds.std[1] == pytest.approx(1 / 255) and ds.std[0] > 0.1
    batch = ds.train.batch(torch.arange(6), ds.mean, ds.std)
    assert torch.isfinite(batch).all() and torch.equal(batch[:, 1], torch.zeros_like(batch[:, 1]))


def test_npz_round_trip(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (10, 6, 6, 1), dtype=np.uint8)
    y = np.arange(10) % 2
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x[:4], y_test=y[:4], classes=np.array(["a", "b"]))
    ds = load_dataset(f"npz:{path}", tmp_path)
    assert ds.train.images.shape == (10, 1, 6, 6) and ds.train.images.dtype == torch.uint8
    assert torch.equal(ds.train.images[3, 0], torch.from_numpy(x[3, :, :, 0]))
    assert ds.num_classes == 2 and ds.in_channels == 1 and ds.image_size == 6
    assert ds.classes == ["a", "b"]
    assert ds.mean[0] == pytest.approx(x.mean() / 255, rel=1e-6)


def test_npz_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")
    path = tmp_path / "partial.npz"
    np.savez(path, x_train=np.zeros((2, 4, 4, 3), np.uint8), y_train=np.zeros(2))
    with pytest.raises(DataError, match="lacks the arrays x_test, y_test"):
        load_dataset(f"npz:{path}")
    with pytest.raises(DataError, match="unknown data set"):
        load_dataset("imagenet-22k")


def test_imagefolder_plain_and_tarred(tmp_path):
    root = _write_folder(tmp_path / "pets")
    ds = load_dataset(f"imagefolder:{root}", tmp_path / "cache")
    assert ds.classes == ["cat", "dog", "emu"]
    assert len(ds.train) == 12 and len(ds.test) == 12
    assert ds.train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # the same folders as train.tar.gz + test.tar.gz, as in shared/data/cifar10
    tars = tmp_path / "tars"
    tars.mkdir()
    for split in ("train", "test"):
        with tarfile.open(tars / f"{split}.tar.gz", "w:gz") as tar:
            tar.add(root / split, arcname=split)
    tarred = load_dataset(f"imagefolder:{tars}", tmp_path / "cache2")
    assert torch.equal(tarred.train.images, ds.train.images)
    assert torch.equal(tarred.test.labels, ds.test.labels)
    # decoded once, then read from the cache
    assert list((tmp_path / "cache2").glob("*.npz"))


def test_imagefolder_without_split_holds_out_a_tenth(tmp_path):
    root = _write_folder(tmp_path / "pets", per_class=10)
    ds = load_dataset(f"imagefolder:{root / 'train'}", tmp_path / "cache")
    assert len(ds.test) == 3 and len(ds.train) == 27


def test_offline_torchvision_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="could not be downloaded"):
        load_dataset("cifar10", tmp_path, download=False)


def test_augment_crops_and_flips_deterministically():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 3, 8, 8)
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    # every output is a (possibly flipped) 8×8 window of the zero-padded input
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(2):
        windows = [padded[i, :, r : r + 8, c : c + 8] for r in range(9) for c in range(9)]
        assert any(torch.equal(a[i], w) or torch.equal(a[i], w.flip(-1)) for w in windows)


def test_normalize():
    x = torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)
    assert normalize(x, (0.5,), (0.25,)).unique().tolist() == [2.0]


@pytest.mark.skipif(not (SHARED / "cifar10" / "small.npz").is_file(), reason="no ../shared data")
def test_shared_cifar10_subset():
    ds = load_dataset(f"npz:{SHARED / 'cifar10' / 'small.npz'}")
    assert (len(ds.train), len(ds.test)) == (2000, 500)
    assert ds.classes[0] == "airplane" and ds.num_classes == 10
    assert torch.bincount(ds.train.labels).tolist() == [200] * 10
