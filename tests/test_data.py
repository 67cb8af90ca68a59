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


# ----------------------------------------------------------------------------- splits
@pytest.fixture
def opened(monkeypatch):
    """Every image file PIL opens (decoding starts with Image.open)."""
    files: list[Path] = []
    real = Image.open

    def counting(fp, *args, **kwargs):
        files.append(Path(fp))
        return real(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting)
    return files


def _images_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*.png")}


def _key(name: str) -> str:
    """The cache's file name stem for a data set name (kept from the first version)."""
    return name.replace(":", "_").replace("/", "_")[-60:]


def _tarred(root: Path, dest: Path) -> Path:
    dest.mkdir()
    for split in ("train", "test"):
        with tarfile.open(dest / f"{split}.tar.gz", "w:gz") as tar:
            tar.add(root / split, arcname=split)
    return dest


def test_the_test_split_alone_decodes_only_the_test_images(tmp_path, opened):
    root = _write_folder(tmp_path / "pets", per_class=5)
    tars = _tarred(root, tmp_path / "tars")
    cache = tmp_path / "cache"
    stats = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    ds = load_dataset(f"imagefolder:{tars}", cache, splits=("test",), stats=stats)
    assert ds.train is None and len(ds.test) == 15
    assert (ds.mean, ds.std) == stats
    assert ds.test_split == f"the test/ split of {tars} (15 images)"
    # every test image decoded once (the first also opened to learn the image size), no
    # training image, and the training archive not even extracted
    names = [p.relative_to(next(p for p in p.parents if p.name == "test")) for p in opened]
    assert len(opened) == 16 and len(set(names)) == 15
    assert all("train" not in p.parts for p in opened)
    assert not list(cache.glob("train-*")) and list(cache.glob("test-*"))
    # the same pixels as the full load
    full = load_dataset(f"imagefolder:{root}", tmp_path / "cache2")
    assert torch.equal(ds.test.images, full.test.images)
    assert torch.equal(ds.test.labels, full.test.labels)
    # the test split is cached on its own: a second evaluation decodes nothing
    opened.clear()
    again = load_dataset(f"imagefolder:{tars}", cache, splits=("test",), stats=stats)
    assert opened == [] and torch.equal(again.test.images, ds.test.images)
    assert [p.name for p in cache.glob("*.npz")] == [f"{_key(f'imagefolder:{tars}')}.test.npz"]


def test_without_recorded_statistics_the_training_images_give_them(tmp_path, opened):
    root = _write_folder(tmp_path / "pets", per_class=5)
    full = load_dataset(f"imagefolder:{root}", tmp_path / "a")
    opened.clear()
    ds = load_dataset(f"imagefolder:{root}", tmp_path / "b", splits=("test",))
    assert ds.train is None and (ds.mean, ds.std) == (full.mean, full.std)
    assert any("train" in p.parts for p in opened)  # what the statistics cost


def test_npz_test_split_alone(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 255, (10, 4, 4, 3), dtype=np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x, y_train=np.arange(10) % 5, x_test=x[:2], y_test=[0, 1])
    ds = load_dataset(f"npz:{path}", tmp_path, splits=("test",))
    full = load_dataset(f"npz:{path}", tmp_path)
    assert ds.train is None and torch.equal(ds.test.images, full.test.images)
    # classes and statistics come from the whole file, as for the full load
    assert ds.num_classes == full.num_classes == 5 and ds.mean == full.mean


def test_the_older_cache_of_both_splits_stays_valid(tmp_path, opened):
    """Runs in progress read KEY.npz (x_train, y_train, x_test, y_test, classes)."""
    root = _write_folder(tmp_path / "pets")
    name = f"imagefolder:{root}"
    cache = tmp_path / "cache"
    cache.mkdir()
    x_train = np.full((6, 8, 8, 3), 7, np.uint8)
    x_train[0] = 200
    x_test = np.full((3, 8, 8, 3), 9, np.uint8)
    np.savez(
        cache / f"{_key(name)}.npz",
        x_train=x_train,
        y_train=np.array([0, 0, 1, 1, 2, 2]),
        x_test=x_test,
        y_test=np.array([0, 1, 2]),
        classes=np.array(["cat", "dog", "emu"]),
    )
    ds = load_dataset(name, cache)
    assert opened == []  # nothing decoded
    assert ds.describe() == {
        "name": name,
        "num_classes": 3,
        "in_channels": 3,
        "image_size": 8,
        "mean": pytest.approx([(200 + 5 * 7) / 6 / 255] * 3),
        "std": pytest.approx([np.std([200] * 64 + [7] * 5 * 64, ddof=1) / 255] * 3),
        "classes": ["cat", "dog", "emu"],
        "train_size": 6,
        "test_size": 3,
    }
    test_only = load_dataset(name, cache, splits=("test",), stats=(ds.mean, ds.std))
    assert test_only.train is None and torch.equal(test_only.test.images, ds.test.images)
    assert opened == [] and [p.name for p in cache.iterdir()] == [f"{_key(name)}.npz"]


def test_a_plain_class_folder_split_for_training_says_so(tmp_path, capsys):
    root = _write_folder(tmp_path / "pets", per_class=10)
    ds = load_dataset(f"imagefolder:{root / 'train'}", tmp_path / "cache")
    assert (len(ds.train), len(ds.test)) == (27, 3)
    assert ds.test.labels.tolist() == [0, 1, 2]
    assert "every tenth image of each class is held out as the test split" in (
        capsys.readouterr().err
    )
    assert (
        ds.test_split == f"every tenth image of each class of {root / 'train'} (3 images held out)"
    )


def test_a_plain_class_folder_can_be_the_test_split_whole(tmp_path, capsys, opened):
    root = _write_folder(tmp_path / "pets", per_class=10)
    plain = f"imagefolder:{root / 'train'}"
    ds = load_dataset(plain, tmp_path / "cache", splits=("test",), whole_folder=True)
    assert ds.train is None and len(ds.test) == 30
    assert ds.test.labels.tolist() == [0] * 10 + [1] * 10 + [2] * 10
    assert ds.test_split.startswith(f"every image of {root / 'train'} (30;")
    assert capsys.readouterr().err.count("held out") == 0
    assert {p for p in opened} == _images_under(root / "train")
    with pytest.raises(DataError, match="no training split"):
        load_dataset(plain, tmp_path / "cache", whole_folder=True)


# ----------------------------------------------------------------------------- evaluate
def _checkpoint(path: Path, dataset: dict) -> torch.nn.Module:
    from reuse_analysis.checkpoint import save_checkpoint
    from reuse_analysis.models import create_model

    torch.manual_seed(0)
    model = create_model(
        "densenet_bc_100", growth_rate=4, block_config=(2, 2), num_init_features=8, num_classes=3
    ).eval()
    save_checkpoint(
        path, model.state_dict(), arch="densenet_bc_100", config=model.config.to_dict(),
        dataset=dataset,
    )  # fmt: skip
    return model


def _accuracy(model, images, labels, mean, std) -> float:
    with torch.no_grad():
        return float((model(normalize(images, mean, std)).argmax(1) == labels).float().mean())


STATS = {"mean": [0.3, 0.2, 0.1], "std": [0.2, 0.3, 0.4]}


def test_evaluate_decodes_only_the_test_images(tmp_path, opened):
    from reuse_analysis.evaluation import evaluate_checkpoint

    root = _write_folder(tmp_path / "pets", per_class=6)
    tars = _tarred(root, tmp_path / "tars")
    name = f"imagefolder:{tars}"
    ckpt = tmp_path / "m.pt"
    model = _checkpoint(ckpt, {"name": name, "classes": ["cat", "dog", "emu"], **STATS})
    opened.clear()
    result = evaluate_checkpoint(ckpt, data_dir=str(tmp_path / "cache"), device="cpu")
    assert result["images"] == 18 and result["split"] == f"the test/ split of {tars} (18 images)"
    assert all("test" in p.parts and "train" not in p.parts for p in opened)
    assert not list((tmp_path / "cache").glob("train-*"))
    # the accuracy of the model on those images, standardised with the recorded statistics
    test = load_dataset(f"imagefolder:{root}", tmp_path / "other").test
    expected = _accuracy(model, test.images, test.labels, STATS["mean"], STATS["std"])
    assert result["accuracy"] == pytest.approx(expected)


@pytest.mark.parametrize("trained_on_it", [False, True])
def test_evaluate_on_a_plain_class_folder(tmp_path, capsys, trained_on_it):
    """Given for evaluation, a plain class folder is evaluated whole; the folder a model was
    trained on (split 90/10 then) gives its held-out tenth, and stderr says so."""
    from reuse_analysis.evaluation import evaluate_checkpoint

    root = _write_folder(tmp_path / "pets", per_class=10)
    plain = f"imagefolder:{root / 'train'}"
    ckpt = tmp_path / "m.pt"
    model = _checkpoint(ckpt, {"name": plain if trained_on_it else "cifar10", **STATS})
    result = evaluate_checkpoint(
        ckpt, dataset=plain, data_dir=str(tmp_path / "cache"), device="cpu"
    )
    note = "held out as the test split" in capsys.readouterr().err
    if trained_on_it:
        assert result["images"] == 3 and result["split"].startswith("every tenth image")
        assert note
        images = load_dataset(plain, tmp_path / "other").test
    else:
        assert result["images"] == 30 and result["split"].startswith("every image of")
        assert not note
        images = load_dataset(plain, tmp_path / "other", splits=("test",), whole_folder=True).test
    expected = _accuracy(model, images.images, images.labels, STATS["mean"], STATS["std"])
    assert result["accuracy"] == pytest.approx(expected)


def test_evaluate_refuses_a_data_set_whose_classes_changed(tmp_path):
    from reuse_analysis.evaluation import evaluate_checkpoint

    root = _write_folder(tmp_path / "pets", classes=("ant", "bee", "cow"))
    name = f"imagefolder:{root}"
    ckpt = tmp_path / "m.pt"
    _checkpoint(ckpt, {"name": name, "classes": ["cat", "dog", "emu"], **STATS})
    with pytest.raises(DataError, match="now has the classes ant, bee, cow"):
        evaluate_checkpoint(ckpt, data_dir=str(tmp_path / "cache"), device="cpu")


def test_large_images_of_the_test_split_alone_stream_with_the_given_statistics(tmp_path, opened):
    root = tmp_path / "big"
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for j in range(2):
                Image.new("RGB", (80, 72), (40 * j, 0, 0)).save(root / split / c / f"{j}.png")
    stats = ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    ds = load_dataset(f"imagefolder:{root}", tmp_path / "cache", splits=("test",), stats=stats)
    assert ds.train is None and (ds.mean, ds.std) == stats and ds.image_size == 224
    assert [f.relative_to(root / "val").as_posix() for f in ds.test.files] == [
        "a/0.png", "a/1.png", "b/0.png", "b/1.png"
    ]  # fmt: skip
    assert opened == [root / "val" / "a" / "0.png"]  # its size alone; nothing decoded
    assert ds.test_split == f"the val/ split of {root} (4 images)"
    assert load_dataset(f"imagefolder:{root}", tmp_path / "cache").mean == (0.485, 0.456, 0.406)
