"""Data sets for training and evaluation, held in memory as uint8 tensors when small.

Names: ``cifar10``, ``cifar100``, ``svhn``, ``mnist``, ``fashion-mnist`` (torchvision,
downloaded into ``data_dir`` when absent), ``npz:PATH`` (arrays ``x_train y_train x_test
y_test``, images uint8 N×H×W×C) and ``imagefolder:PATH`` (class folders, split into
``train/`` and ``test/`` or ``val/``, as a folder or ``.tar.gz``; a folder holding
``train.tar.gz`` and ``test.tar.gz`` works too). Small images are decoded once and
cached as ``.npz`` in ``data_dir``; large ones (ImageNet) stream through ImageFolder.
"""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from reuse_analysis.errors import ReuseAnalysisError

TORCHVISION_SETS = ("cifar10", "cifar100", "svhn", "mnist", "fashion-mnist")
# Per-channel mean and std over the training images (÷255), the published values.
_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
}
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm")
# Above this side length images stream from disk with ImageNet-style crops.
_IN_MEMORY_MAX_SIDE = 64


class DataError(ReuseAnalysisError):
    """A data set that cannot be found, downloaded or read."""


@dataclass
class ImageData:
    """One split of a data set: uint8 images N×C×H×W and int64 labels, in memory."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: torch.Tensor) -> ImageData:
        return ImageData(self.images[idx], self.labels[idx])

    def batch(
        self,
        idx: torch.Tensor,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        augment: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Standardised float images ``idx``, with the paper's "+" augmentation if asked."""
        x = self.images[idx]
        if augment:
            x = random_crop_flip(x, generator or torch.Generator())
        return normalize(x, mean, std)


@dataclass
class FolderData:
    """A split of large images read from disk per batch (ImageNet-style crops at 224 px).

    Training batches take a random-resized crop and a flip; evaluation resizes to 256 and
    takes the central 224 crop. Images decode on a thread pool (PIL releases the GIL).
    """

    files: list[Path]
    labels: torch.Tensor
    size: int = 224

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: torch.Tensor) -> FolderData:
        return FolderData([self.files[i] for i in idx.tolist()], self.labels[idx], self.size)

    def batch(
        self,
        idx: torch.Tensor,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        *,
        augment: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        from concurrent.futures import ThreadPoolExecutor

        from torchvision.transforms import v2

        if augment:
            tf = v2.Compose([v2.RandomResizedCrop(self.size), v2.RandomHorizontalFlip()])
        else:
            tf = v2.Compose([v2.Resize(round(self.size * 256 / 224)), v2.CenterCrop(self.size)])
        paths = [self.files[i] for i in idx.tolist()]
        with ThreadPoolExecutor(max_workers=min(8, len(paths))) as pool:
            images = list(pool.map(_read_rgb, paths))
        # The transforms draw from torch's global generator, which the caller seeds per step.
        x = torch.stack([tf(img) for img in images])
        return normalize(x, mean, std)


def _read_rgb(path: Path) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


@dataclass
class DataSet:
    """Train and test splits with what the model and the checkpoint need to know."""

    name: str
    train: ImageData | FolderData
    test: ImageData | FolderData
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        """Plain-data record for checkpoints and model cards."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "classes": list(self.classes),
            "train_size": len(self.train) if self.train is not None else None,
            "test_size": len(self.test) if self.test is not None else None,
        }


def _from_nhwc(x: np.ndarray, y: np.ndarray) -> ImageData:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.dtype != np.uint8:
        raise DataError(f"images must be uint8 N×H×W×C arrays, got {x.dtype} {x.shape}")
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    labels = torch.as_tensor(np.asarray(y), dtype=torch.int64).reshape(-1)
    if len(images) != len(labels):
        raise DataError(f"{len(images)} images but {len(labels)} labels")
    return ImageData(images, labels)


def _stats(train: ImageData) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (÷255) of the training images; a channel that never varies
    gets the std of one grey level, so that standardising it stays finite."""
    x = train.images[:: max(1, len(train) // 10000)].to(torch.float64) / 255
    std = x.std(dim=(0, 2, 3)).nan_to_num(0.0).clamp(min=1 / 255)
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(std.tolist())


def _dataset(name: str, train: ImageData, test: ImageData, classes: list[str]) -> DataSet:
    mean, std = _STATS.get(name) or _stats(train)
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    return DataSet(
        name=name,
        train=train,
        test=test,
        num_classes=max(num_classes, len(classes)),
        in_channels=train.images.shape[1],
        image_size=train.images.shape[2],
        mean=tuple(mean),
        std=tuple(std),
        classes=[str(c) for c in classes],
    )


def _torchvision(name: str, data_dir: Path, download: bool) -> DataSet:
    from torchvision import datasets

    root = data_dir / name
    try:
        if name in ("cifar10", "cifar100"):
            cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
            tr, te = (cls(root, train=t, download=download) for t in (True, False))
            return _dataset(
                name,
                _from_nhwc(tr.data, tr.targets),
                _from_nhwc(te.data, te.targets),
                tr.classes,
            )
        if name == "svhn":
            tr, te = (datasets.SVHN(root, split=s, download=download) for s in ("train", "test"))
            train = ImageData(torch.from_numpy(tr.data), torch.as_tensor(tr.labels))
            test = ImageData(torch.from_numpy(te.data), torch.as_tensor(te.labels))
            return _dataset(name, train, test, [str(i) for i in range(10)])
        cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
        tr, te = (cls(root, train=t, download=download) for t in (True, False))
        return _dataset(
            name,
            _from_nhwc(tr.data.numpy(), tr.targets.numpy()),
            _from_nhwc(te.data.numpy(), te.targets.numpy()),
            list(tr.classes),
        )
    except (RuntimeError, OSError) as exc:
        raise DataError(
            f"{name} is not in {root} and could not be downloaded ({exc}); on a machine "
            "without internet, copy the data set there or use npz:PATH / imagefolder:PATH"
        ) from None


def _npz(path: Path, name: str) -> DataSet:
    if not path.is_file():
        raise DataError(f"{path}: no such file (npz:PATH needs x_train, y_train, x_test, y_test)")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(z.files)
            if missing:
                raise DataError(f"{path} lacks the arrays {', '.join(sorted(missing))}")
            classes = [str(c) for c in z["classes"]] if "classes" in z.files else []
            train = _from_nhwc(z["x_train"], z["y_train"])
            test = _from_nhwc(z["x_test"], z["y_test"])
    except (ValueError, OSError) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc})") from None
    return _dataset(name, train, test, classes)


def _extract(archive: Path, data_dir: Path) -> Path:
    """Extract a .tar.gz once into data_dir (keyed by its path and size); return the folder."""
    key = hashlib.sha1(f"{archive.resolve()}:{archive.stat().st_size}".encode()).hexdigest()[:10]
    dest = data_dir / f"{archive.name.split('.')[0]}-{key}"
    done = dest / ".extracted"
    if not done.exists():
        dest.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(dest, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise DataError(f"{archive} could not be extracted ({exc})") from None
        done.touch()
    return dest


def _split_roots(path: Path, data_dir: Path) -> dict[str, Path]:
    """Find the train/test class-folder roots of an imagefolder: argument."""
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar")):
        sibling = {s: path.with_name(path.name.replace("train", s)) for s in ("test", "val")}
        path_dir = _extract(path, data_dir)
        for split, arch in sibling.items():
            if "train" in path.name and arch.is_file():
                test_dir = _extract(arch, data_dir)
                return {"train": _descend(path_dir, "train"), "test": _descend(test_dir, split)}
        path = path_dir
    if path.is_dir():
        tarballs = {p.name.split(".")[0]: p for p in path.glob("*.tar.gz")}
        if "train" in tarballs and ("test" in tarballs or "val" in tarballs):
            test = tarballs.get("test") or tarballs["val"]
            return {
                "train": _descend(_extract(tarballs["train"], data_dir), "train"),
                "test": _descend(_extract(test, data_dir), test.name.split(".")[0]),
            }
        roots = {s: _descend(path, s) for s in ("train", "test", "val")}
        if roots["train"] != path and (roots["test"] != path or roots["val"] != path):
            return {
                "train": roots["train"],
                "test": roots["test"] if roots["test"] != path else roots["val"],
            }
        return {"all": path}
    raise DataError(f"{path}: no such folder or archive for imagefolder:")


def _descend(root: Path, split: str) -> Path:
    """``root/split`` if it exists, else root (an archive may hold the split folder itself)."""
    return root / split if (root / split).is_dir() else root


def _class_files(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root} holds no class folders")
    files = [
        (f, i)
        for i, c in enumerate(classes)
        for f in sorted((root / c).rglob("*"))
        if f.suffix.lower() in _IMAGE_EXTENSIONS
    ]
    if not files:
        raise DataError(f"{root} holds no images ({', '.join(_IMAGE_EXTENSIONS)})")
    return classes, files


def _decode(files: list[tuple[Path, int]]) -> ImageData:
    from PIL import Image
    from tqdm import tqdm

    images = []
    for f, _ in tqdm(files, desc=f"decoding {files[0][0].parent.parent.name}", unit="img"):
        with Image.open(f) as im:
            images.append(np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im))
    return _from_nhwc(np.stack(images), np.array([label for _, label in files]))


def _imagefolder(path: Path, data_dir: Path, name: str) -> DataSet:
    roots = _split_roots(path, data_dir)
    classes, train_files = _class_files(roots.get("train", roots.get("all")))
    from PIL import Image

    with Image.open(train_files[0][0]) as im:
        side = max(im.size)
    if side > _IN_MEMORY_MAX_SIDE:
        if "all" in roots:
            raise DataError(f"{path}: large-image folders need train/ and val/ (or test/) splits")
        test_classes, test_files = _class_files(roots["test"])
        if test_classes != classes:
            raise DataError(f"{roots['test']} has other classes than {roots['train']}")

        def split(files: list[tuple[Path, int]]) -> FolderData:
            return FolderData([f for f, _ in files], torch.tensor([c for _, c in files]))

        return DataSet(
            name=name,
            train=split(train_files),
            test=split(test_files),
            num_classes=len(classes),
            in_channels=3,
            image_size=224,
            mean=(0.485, 0.456, 0.406),  # the ImageNet statistics everyone uses
            std=(0.229, 0.224, 0.225),
            classes=classes,
        )
    cache = data_dir / f"{name.replace(':', '_').replace('/', '_')[-60:]}.npz"
    if cache.is_file():
        return _npz(cache, name)
    if "all" in roots:
        data = _decode(train_files)
        train, test = _holdout(data)
    else:
        train = _decode(train_files)
        test_classes, test_files = _class_files(roots["test"])
        if test_classes != classes:
            raise DataError(f"{roots['test']} has other classes than {roots['train']}")
        test = _decode(test_files)
    _save_npz(cache, train, test, classes)
    return _dataset(name, train, test, classes)


def _holdout(data: ImageData, fraction: float = 0.1) -> tuple[ImageData, ImageData]:
    """Every tenth image of each class becomes the test split (deterministic)."""
    test_mask = torch.zeros(len(data), dtype=torch.bool)
    for c in data.labels.unique():
        idx = (data.labels == c).nonzero().flatten()
        test_mask[idx[:: round(1 / fraction)]] = True
    return (
        ImageData(data.images[~test_mask], data.labels[~test_mask]),
        ImageData(data.images[test_mask], data.labels[test_mask]),
    )


def _save_npz(path: Path, train: ImageData, test: ImageData, classes: list[str]) -> None:
    from reuse_analysis._io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            x_train=train.images.permute(0, 2, 3, 1).numpy(),
            y_train=train.labels.numpy(),
            x_test=test.images.permute(0, 2, 3, 1).numpy(),
            y_test=test.labels.numpy(),
            classes=np.array(classes),
        )


def load_dataset(name: str, data_dir: str | Path = "data", *, download: bool = True) -> DataSet:
    """Load a data set by name (see the module docstring); raises DataError with a fix."""
    data_dir = Path(data_dir)
    if name in TORCHVISION_SETS:
        return _torchvision(name, data_dir, download)
    kind, _, arg = name.partition(":")
    if kind == "npz" and arg:
        return _npz(Path(arg).expanduser(), name)
    if kind == "imagefolder" and arg:
        return _imagefolder(Path(arg).expanduser(), data_dir, name)
    raise DataError(
        f"unknown data set {name!r}; use one of {', '.join(TORCHVISION_SETS)}, "
        "npz:PATH or imagefolder:PATH"
    )


def normalize(
    images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """uint8 N×C×H×W → float, scaled to [0, 1] and standardised per channel."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.float() / 255 - m) / s


def random_crop_flip(
    images: torch.Tensor, generator: torch.Generator, pad: int = 4
) -> torch.Tensor:
    """The paper's "+" augmentation on a uint8 batch: random crop with zero padding, flips."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w)
    batch_idx = torch.arange(n).view(n, 1, 1, 1)
    chan_idx = torch.arange(images.shape[1]).view(1, -1, 1, 1)
    out = padded[batch_idx, chan_idx, rows, cols]
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out
