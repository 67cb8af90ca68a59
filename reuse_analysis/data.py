"""Data sets for training and evaluation, held in memory as uint8 tensors when small.

Names: ``cifar10``, ``cifar100``, ``svhn``, ``mnist``, ``fashion-mnist`` (torchvision,
downloaded into ``data_dir`` when absent), ``npz:PATH`` (arrays ``x_train y_train x_test
y_test``, images uint8 N×H×W×C) and ``imagefolder:PATH`` (class folders, split into
``train/`` and ``test/`` or ``val/``, as a folder or ``.tar.gz``; a folder holding
``train.tar.gz`` and ``test.tar.gz`` works too). A plain class folder is split: every
tenth image of each class is held out as the test split (a note on stderr says so), or,
for evaluating a model that was not trained on it, it is the test split whole.

Only the splits asked for are read: evaluating decodes (and extracts) nothing of the
training split. Small images are decoded once and cached per split as ``.npz`` in
``data_dir``; large ones (ImageNet) stream through ImageFolder.
"""

from __future__ import annotations

import hashlib
import sys
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from reuse_analysis.errors import ReuseAnalysisError

#: The splits a data set has; ``load_dataset(..., splits=…)`` loads only those asked for.
SPLITS = ("train", "test")
TORCHVISION_SETS = ("cifar10", "cifar100", "svhn", "mnist", "fashion-mnist")
# Per-channel mean and std over the training images (÷255), the published values.
_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
}
#: Per-channel (mean, std) of images scaled to [0, 1].
Stats = tuple[tuple[float, ...], tuple[float, ...]]
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
    """Train and test splits with what the model and the checkpoint need to know.

    A split that was not asked for (``load_dataset(..., splits=("test",))``) is ``None``.
    """

    name: str
    train: ImageData | FolderData | None
    test: ImageData | FolderData | None
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str] = field(default_factory=list)
    #: What the test split is, in words ("the test/ folder", "every image of …").
    test_split: str = "the test split"

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


def _stats(train: ImageData) -> Stats:
    """Per-channel mean and std (÷255) of the training images; a channel that never varies
    gets the std of one grey level, so that standardising it stays finite."""
    x = train.images[:: max(1, len(train) // 10000)].to(torch.float64) / 255
    std = x.std(dim=(0, 2, 3)).nan_to_num(0.0).clamp(min=1 / 255)
    return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(std.tolist())


def _dataset(
    name: str,
    splits: dict[str, ImageData],
    classes: list[str],
    stats: Stats | None,
    train_images: Callable[[], ImageData],
    *,
    labels: int = 0,
    test_split: str = "the test split",
) -> DataSet:
    """A DataSet of the splits loaded. Statistics: ``stats`` if they fit the images' channels,
    else the published ones, else those of the training images (``train_images()`` reads
    them when the training split was not asked for)."""
    train, test = splits.get("train"), splits.get("test")
    ref = train if train is not None else test
    channels = ref.images.shape[1]
    if stats is None or len(stats[0]) != channels:
        stats = _STATS.get(name) or _stats(train if train is not None else train_images())
    seen = [int(d.labels.max()) + 1 for d in (train, test) if d is not None and len(d)]
    return DataSet(
        name=name,
        train=train,
        test=test,
        num_classes=max([*seen, labels, len(classes)]),
        in_channels=channels,
        image_size=ref.images.shape[2],
        mean=tuple(stats[0]),
        std=tuple(stats[1]),
        classes=[str(c) for c in classes],
        test_split=test_split,
    )


def _torchvision(
    name: str, data_dir: Path, download: bool, splits: Sequence[str], stats: Stats | None
) -> DataSet:
    from torchvision import datasets

    root = data_dir / name
    try:
        if name == "svhn":
            sets = {s: datasets.SVHN(root, split=s, download=download) for s in splits}
            data = {
                s: ImageData(torch.from_numpy(d.data), torch.as_tensor(d.labels))
                for s, d in sets.items()
            }
            classes = [str(i) for i in range(10)]
        else:
            cls = {
                "cifar10": datasets.CIFAR10,
                "cifar100": datasets.CIFAR100,
                "mnist": datasets.MNIST,
                "fashion-mnist": datasets.FashionMNIST,
            }[name]
            sets = {s: cls(root, train=s == "train", download=download) for s in splits}
            data = {
                s: _from_nhwc(np.asarray(d.data), np.asarray(d.targets)) for s, d in sets.items()
            }
            classes = list(next(iter(sets.values())).classes)
    except (RuntimeError, OSError) as exc:
        raise DataError(
            f"{name} is not in {root} and could not be downloaded ({exc}); on a machine "
            "without internet, copy the data set there or use npz:PATH / imagefolder:PATH"
        ) from None
    return _dataset(name, data, classes, stats, _published_only)


def _published_only() -> ImageData:
    raise AssertionError("torchvision sets are standardised with the published statistics")


def _npz_splits(path: Path, splits: Sequence[str]) -> tuple[dict[str, ImageData], list[str], int]:
    """The splits asked for from an .npz of x_train, y_train, x_test, y_test (and classes),
    its classes and the number of labels in both splits; an .npz holds its arrays
    separately, so only those read are loaded."""
    if not path.is_file():
        raise DataError(f"{path}: no such file (npz:PATH needs x_train, y_train, x_test, y_test)")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(z.files)
            if missing:
                raise DataError(f"{path} lacks the arrays {', '.join(sorted(missing))}")
            classes = [str(c) for c in z["classes"]] if "classes" in z.files else []
            data = {s: _from_nhwc(z[f"x_{s}"], z[f"y_{s}"]) for s in splits}
            labels = max(int(np.max(z[f"y_{s}"], initial=-1)) + 1 for s in SPLITS)
    except (ValueError, OSError) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc})") from None
    return data, classes, labels


def _npz(path: Path, name: str, splits: Sequence[str], stats: Stats | None) -> DataSet:
    data, classes, labels = _npz_splits(path, splits)

    def train_images() -> ImageData:
        return _npz_splits(path, ["train"])[0]["train"]

    return _dataset(name, data, classes, stats, train_images, labels=labels)


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


_ARCHIVES = (".tar.gz", ".tgz", ".tar")


@dataclass(frozen=True)
class _Source:
    """Where one split's class folders are: a folder, or an archive extracted on first use;
    ``folder`` is the split's subfolder in it, when it has one (``train``, ``test``, ``val``)."""

    path: Path
    folder: str = ""

    def root(self, data_dir: Path) -> Path:
        base = _extract(self.path, data_dir) if self.path.is_file() else self.path
        return _descend(base, self.folder) if self.folder else base


def _sources(path: Path, data_dir: Path) -> dict[str, _Source]:
    """The train and test sources of an imagefolder: argument (``{"all": …}`` for a plain
    class folder), without extracting the archive of a split that is not needed."""
    if path.is_file() and path.name.endswith(_ARCHIVES):
        if "train" in path.name:
            for split in ("test", "val"):
                sibling = path.with_name(path.name.replace("train", split))
                if sibling.is_file():
                    return {"train": _Source(path, "train"), "test": _Source(sibling, split)}
        path = _extract(path, data_dir)  # one archive holding the whole data set
    if path.is_dir():
        tarballs = {p.name.split(".")[0]: p for p in path.glob("*.tar.gz")}
        if "train" in tarballs and ("test" in tarballs or "val" in tarballs):
            test = "test" if "test" in tarballs else "val"
            return {
                "train": _Source(tarballs["train"], "train"),
                "test": _Source(tarballs[test], test),
            }
        has = {s: (path / s).is_dir() for s in ("train", "test", "val")}
        if has["train"] and (has["test"] or has["val"]):
            return {
                "train": _Source(path, "train"),
                "test": _Source(path, "test" if has["test"] else "val"),
            }
        return {"all": _Source(path)}
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


def _decode(files: list[tuple[Path, int]], what: str) -> ImageData:
    from PIL import Image
    from tqdm import tqdm

    images = []
    for f, _ in tqdm(files, desc=f"decoding {what}", unit="img"):
        with Image.open(f) as im:
            images.append(np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im))
    return _from_nhwc(np.stack(images), np.array([label for _, label in files]))


def _holdout(files: list[tuple[Path, int]], every: int = 10) -> dict[str, list[tuple[Path, int]]]:
    """Every tenth image of each class (in file order) is the test split (deterministic)."""
    seen: dict[int, int] = {}
    split: dict[str, list[tuple[Path, int]]] = {"train": [], "test": []}
    for f, label in files:
        n = seen[label] = seen.get(label, -1) + 1
        split["test" if n % every == 0 else "train"].append((f, label))
    return split


def _note(message: str) -> None:
    """A line on stderr that does not break a progress bar (stdout is for results)."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


class _Folder:
    """The class folders of an imagefolder: argument, listed (and extracted) on first use."""

    def __init__(self, path: Path, data_dir: Path, whole: bool) -> None:
        self.path, self.data_dir = path, data_dir
        self.sources = _sources(path, data_dir)
        self.plain = "all" in self.sources
        self.whole = whole and self.plain
        self._listed: dict[str, tuple[list[str], list[tuple[Path, int]]]] = {}

    def files(self, split: str) -> tuple[list[str], list[tuple[Path, int]]]:
        """Classes and (file, label) pairs of ``split`` (``train``, ``test`` or ``all``)."""
        if self.plain:
            if "all" not in self._listed:
                self._listed["all"] = _class_files(self.sources["all"].root(self.data_dir))
            classes, files = self._listed["all"]
            return classes, files if split == "all" else _holdout(files)[split]
        if split not in self._listed:
            self._listed[split] = _class_files(self.sources[split].root(self.data_dir))
        return self._listed[split]

    def describe_test(self, images: int) -> str:
        if self.whole:
            return f"every image of {self.path} ({images}; it has no train/test folders)"
        if self.plain:
            return f"every tenth image of each class of {self.path} ({images} images held out)"
        return f"the {self.sources['test'].folder}/ split of {self.path} ({images} images)"


class _SplitCache:
    """Decoded splits of small images in ``data_dir``: ``KEY.SPLIT.npz`` (``SPLIT``: train,
    test, or ``all`` for a whole folder), KEY from the data set's name. The older ``KEY.npz``
    of both splits, which runs in progress read, stays valid and is read first."""

    def __init__(self, data_dir: Path, name: str) -> None:
        self.data_dir = data_dir
        self.key = name.replace(":", "_").replace("/", "_")[-60:]
        self.both = data_dir / f"{self.key}.npz"

    def file(self, split: str) -> Path | None:
        if split != "all" and self.both.is_file():
            return self.both
        path = self.data_dir / f"{self.key}.{split}.npz"
        return path if path.is_file() else None

    def read(self, split: str) -> tuple[ImageData, list[str]] | None:
        path = self.file(split)
        if path is None:
            return None
        if path == self.both:
            data, classes, _ = _npz_splits(path, [split])
            return data[split], classes
        return _read_split(path)

    def write(self, split: str, data: ImageData, classes: list[str]) -> None:
        _save_split(self.data_dir / f"{self.key}.{split}.npz", data, classes)


def _imagefolder(
    path: Path,
    data_dir: Path,
    name: str,
    splits: Sequence[str],
    stats: Stats | None,
    whole_folder: bool,
) -> DataSet:
    folder = _Folder(path, data_dir, whole_folder)
    if folder.whole and "train" in splits:
        raise DataError(f"{path} is evaluated whole: it has no training split")
    cache = _SplitCache(data_dir, name)
    stored = {s: "all" if folder.whole else s for s in SPLITS}

    def load(split: str) -> tuple[ImageData, list[str]]:
        hit = cache.read(stored[split])
        if hit is not None:
            return hit
        classes, files = folder.files(stored[split])
        data = _decode(files, f"the {'' if folder.whole else split + ' '}images of {path}")
        cache.write(stored[split], data, classes)
        return data, classes

    if not all(cache.file(stored[s]) for s in splits):
        large = _large(folder, name, {s: stored[s] for s in splits}, stats)
        if large is not None:
            return large
    loaded = {s: load(s) for s in splits}
    data = {s: d for s, (d, _) in loaded.items()}
    classes = _same_classes(path, [c for _, c in loaded.values()])
    return _small(folder, name, data, classes, stats, lambda: load("train")[0])


def _small(
    folder: _Folder,
    name: str,
    data: dict[str, ImageData],
    classes: list[str],
    stats: Stats | None,
    train_images: Callable[[], ImageData],
) -> DataSet:
    if folder.whole and (stats is None or len(stats[0]) != data["test"].images.shape[1]):
        stats = _stats(data["test"])  # no training images: the folder's own statistics
    test = data.get("test")
    described = folder.describe_test(len(test)) if test is not None else "not loaded"
    if folder.plain and not folder.whole:
        _note(
            f"{folder.path} has no train/ and test/ folders, so every tenth image of each "
            "class is held out as the test split and the rest is the training split"
        )
    return _dataset(name, data, classes, stats, train_images, test_split=described)


def _large(
    folder: _Folder, name: str, stored: dict[str, str], stats: Stats | None
) -> DataSet | None:
    """Large images (ImageNet) stream from disk: file lists, nothing decoded; None for
    images small enough to hold in memory. Statistics: ``stats``, else ImageNet's."""
    from PIL import Image

    listed = {s: folder.files(stored[s]) for s in stored}
    with Image.open(next(iter(listed.values()))[1][0][0]) as im:
        if max(im.size) <= _IN_MEMORY_MAX_SIDE:
            return None
    if folder.plain and not folder.whole:
        raise DataError(
            f"{folder.path}: large-image folders need train/ and val/ (or test/) splits"
        )
    classes = _same_classes(folder.path, [c for c, _ in listed.values()])

    def split(files: list[tuple[Path, int]]) -> FolderData:
        return FolderData([f for f, _ in files], torch.tensor([c for _, c in files]))

    data = {s: split(files) for s, (_, files) in listed.items()}
    test = data.get("test")
    if stats is None or len(stats[0]) != 3:
        stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # the ImageNet statistics
    return DataSet(
        name=name,
        train=data.get("train"),
        test=test,
        num_classes=len(classes),
        in_channels=3,
        image_size=224,
        mean=tuple(stats[0]),
        std=tuple(stats[1]),
        classes=classes,
        test_split=folder.describe_test(len(test)) if test is not None else "not loaded",
    )


def _same_classes(path: Path, lists: list[list[str]]) -> list[str]:
    if any(c != lists[0] for c in lists[1:]):
        raise DataError(f"{path}: the test classes differ from the training classes")
    return lists[0]


def _read_split(path: Path) -> tuple[ImageData, list[str]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return _from_nhwc(z["x"], z["y"]), [str(c) for c in z["classes"]]
    except (ValueError, OSError, KeyError) as exc:
        raise DataError(
            f"{path} is not a readable cache ({exc}); delete it to decode again"
        ) from None


def _save_split(path: Path, data: ImageData, classes: list[str]) -> None:
    from reuse_analysis._io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            x=data.images.permute(0, 2, 3, 1).numpy(),
            y=data.labels.numpy(),
            classes=np.array(classes),
        )


def load_dataset(
    name: str,
    data_dir: str | Path = "data",
    *,
    download: bool = True,
    splits: Sequence[str] = SPLITS,
    stats: Stats | None = None,
    whole_folder: bool = False,
) -> DataSet:
    """Load a data set by name (see the module docstring); raises DataError with a fix.

    ``splits``: the ones to load (``("test",)`` to evaluate: nothing of the training split
    is decoded); the others are ``None``. ``stats``: the (mean, std) to standardise with,
    e.g. those a model was trained with; without them (or when they do not fit the images'
    channels) the published ones or the training images' own. ``whole_folder``: a plain
    class folder (no train/test folders) is the test split whole instead of being split
    90/10 (for evaluating a model that was not trained on it; test split only).
    """
    data_dir = Path(data_dir)
    splits = tuple(dict.fromkeys(splits))
    if not splits or set(splits) - set(SPLITS):
        raise DataError(f"splits must be some of {', '.join(SPLITS)}, not {splits}")
    if name in TORCHVISION_SETS:
        return _torchvision(name, data_dir, download, splits, stats)
    kind, _, arg = name.partition(":")
    if kind == "npz" and arg:
        return _npz(Path(arg).expanduser(), name, splits, stats)
    if kind == "imagefolder" and arg:
        return _imagefolder(Path(arg).expanduser(), data_dir, name, splits, stats, whole_folder)
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
