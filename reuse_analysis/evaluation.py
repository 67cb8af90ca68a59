"""Rebuild a model from a checkpoint alone and measure it on a data set's test split."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from reuse_analysis.checkpoint import load_checkpoint
from reuse_analysis.data import SPLITS, DataError, load_dataset
from reuse_analysis.errors import ReuseAnalysisError
from reuse_analysis.runtime import eval_subset, evaluate, pick_device


def rebuild_model(checkpoint: Any):
    """The nn.Module a checkpoint describes, with its weights loaded (strict)."""
    from reuse_analysis.models import model_from_config

    if checkpoint.config is None or checkpoint.config.get("rebuilt_from_weights"):
        # Not written by `train`: rebuilt from the checkpoint's own tensors.
        return _rebuild_from_weights(checkpoint)
    try:
        model = model_from_config(checkpoint.config, arch=checkpoint.arch)
    except (ValueError, TypeError) as exc:
        raise ReuseAnalysisError(
            f"{checkpoint.path}: the recorded config does not describe "
            f"{checkpoint.arch or 'a DenseNet'} ({exc})"
        ) from None
    try:
        model.load_state_dict(checkpoint.state_dict, strict=True)
    except RuntimeError as exc:
        raise ReuseAnalysisError(
            f"{checkpoint.path}: weights do not fit the recorded config ({str(exc)[:200]})"
        ) from None
    return model


def _rebuild_from_weights(checkpoint: Any):
    from reuse_analysis.probes import ProbeError, runnable_model
    from reuse_analysis.structure import infer_structure

    structure = infer_structure(checkpoint.state_dict)
    try:
        return runnable_model(checkpoint.state_dict, structure)
    except ProbeError as exc:
        message = str(exc).replace("the weights: data-driven metrics need", "evaluate needs")
        raise ReuseAnalysisError(f"{checkpoint.path}: {message}") from None


def override_normalisation(
    ds: Any, mean: tuple[float, ...] | None, std: tuple[float, ...] | None
) -> None:
    """Replace ``ds``'s input normalisation by --mean/--std when given (checked)."""
    if (mean is None) != (std is None) or (
        mean is not None
        and not (len(mean) == len(std) == ds.in_channels and all(s > 0 for s in std))
    ):
        raise ReuseAnalysisError(
            f"--mean and --std need {ds.in_channels} values each (std > 0), given together"
        )
    if mean is not None:
        ds.mean, ds.std = tuple(mean), tuple(std)


def check_model_fits_data(
    path: str | os.PathLike[str], config: Mapping[str, Any], name: str, ds: Any
) -> None:
    """Raise if the data set's images or labels cannot go through the recorded model."""
    channels, classes = config.get("in_channels"), config.get("num_classes")
    mismatch = None
    if channels is not None and channels != ds.in_channels:
        mismatch = f"{channels}-channel images", f"{ds.in_channels}-channel images"
    elif classes is not None and ds.num_classes > classes:
        mismatch = f"{classes} classes", f"{ds.num_classes} classes"
    if mismatch:
        built_for, has = mismatch
        raise ReuseAnalysisError(
            f"{path} was built for {built_for} but {name} has {has}; "
            "use the data set it was trained on (the default)"
        )


def recorded_data(
    path: str | os.PathLike[str],
    meta: Mapping[str, Any],
    dataset: str | None,
    data_dir: str | os.PathLike[str],
    config: Mapping[str, Any] | None = None,
    *,
    splits: Sequence[str] = SPLITS,
) -> Any:
    """The data set named (default: the one the checkpoint records), standardised with the
    statistics the model was trained with when the checkpoint records them, and checked
    against the model's input channels and classes (``config``).

    Only ``splits`` are loaded: with the recorded statistics, evaluating (``("test",)``)
    reads nothing of the training images. A plain class folder (no train/test folders) is
    split 90/10 when the model was trained on it (the held-out tenth is what it has not
    seen) and is evaluated whole otherwise.
    """
    recorded = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else {}
    name = dataset or recorded.get("name")
    if name is None:
        raise ReuseAnalysisError(f"{path} records no data set; pass --dataset NAME")
    trained_on_it = name == recorded.get("name")
    stats = (recorded["mean"], recorded["std"]) if recorded.get("mean") else None
    try:
        ds = load_dataset(
            name,
            data_dir,
            splits=splits,
            stats=stats,
            whole_folder=not trained_on_it and "train" not in splits,
        )
    except DataError as exc:
        if dataset is not None:
            raise
        raise DataError(
            f"{exc} (the data set recorded in {path}); pass --dataset NAME where it is"
        ) from None
    if config is not None:
        check_model_fits_data(path, config, name, ds)
    known = recorded.get("classes")
    if trained_on_it and known and ds.classes and list(known) != ds.classes:
        raise DataError(
            f"{name} now has the classes {', '.join(ds.classes)}, but {path} was trained "
            f"on {', '.join(known)}; pass --dataset NAME of the same classes"
        )
    return ds


def evaluate_checkpoint(
    path: str | os.PathLike[str],
    *,
    dataset: str | None = None,
    data_dir: str = "data",
    batch_size: int = 256,
    limit: int | None = None,
    device: str = "auto",
    trust_pickle: bool = False,
    checkpoint: Any = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> dict[str, Any]:
    """Top-1 accuracy and mean loss of a checkpoint on a test split; the data set defaults
    to the recorded one. ``split`` in the result says which images the test split is.

    ``checkpoint``: the file already loaded (``load_checkpoint(path)``), so it is read once.
    A checkpoint not written by ``train`` is rebuilt from its tensors and checked on the
    training images (:mod:`reuse_analysis.rebuild`), then evaluated like any other (a plain
    class folder whole); ``mean``/``std`` replace the input normalisation (default: the
    recorded one, else the data set's usual statistics)."""
    ckpt = checkpoint or load_checkpoint(path, trust_pickle=trust_pickle)
    model = rebuild_model(ckpt)
    rebuilt = hasattr(model, "rebuilt_from")
    config = ckpt.config if ckpt.config is not None else model.config.to_dict()
    ds = recorded_data(path, ckpt.meta, dataset, data_dir, config, splits=("test",))
    override_normalisation(ds, mean, std)
    check = None
    if rebuilt:
        # A rebuild is checked on the training images its running statistics came from;
        # the normalisation that fits them is the one it is evaluated with.
        from reuse_analysis.rebuild import check_on_data

        train = recorded_data(path, ckpt.meta, dataset, data_dir, config, splits=("train",))
        override_normalisation(train, mean, std)
        check = check_on_data(model, train, ckpt.meta, str(path), given=mean is not None)
        ds.mean, ds.std = train.mean, train.std
    test = eval_subset(ds.test, limit)
    dev = pick_device(device)
    loss, acc = evaluate(model.to(dev), test, ds, dev, batch_size=batch_size, progress=True)
    return {
        "model": str(path),
        "dataset": ds.name,
        "split": ds.test_split,
        "images": len(test),
        "accuracy": acc,
        "loss": loss,
        **({"bn_check": check, "mean": list(ds.mean), "std": list(ds.std)} if check else {}),
    }
