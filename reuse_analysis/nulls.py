"""What an untrained or a channel-shuffled network gives: the baselines every verdict needs.

Two null models of a checkpoint, built from its weights alone (no data):

* **untrained** — the same architecture freshly initialised from the tensors' shapes with
  the initialisers torchvision's DenseNet (and this project's) use: convolutions
  ``kaiming_normal_`` (fan-in, ReLU gain: N(0, 2/fan_in)), a linear layer as ``nn.Linear``
  does (U(±1/√fan_in)), batch norms γ = 1, β = 0, mean 0, variance 1.
* **permuted** — the model's own weights with each target's input channels shuffled: the
  magnitudes stay, which channel came from which source is destroyed.

Only the tensors the weight metric reads are rebuilt (each target's first conv, the
transition convs, the classifier and the norms in front of them), which keeps twenty
seeds of DenseNet-121 to a second or two.

Also here: the signs that a checkpoint was never trained (:func:`untrained_signs`) and
how well each concat order fits the per-channel weight pattern (:func:`order_fit`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import numpy as np
import torch

from reuse_analysis.metrics import channel_usage
from reuse_analysis.structure import (
    CONCAT_ORDERS,
    ConcatOrder,
    DenseBlock,
    DenseNetStructure,
)


def targets(block: DenseBlock) -> Iterator[tuple[int, str, str, str | None]]:
    """``(target, kind, weight key, norm)`` of every target column of ``block``."""
    for t in block.targets():
        yield t.index, t.kind, t.weight_key, t.norm


def target_keys(structure: DenseNetStructure) -> list[tuple[str, str | None]]:
    """``(weight key, norm)`` of every target of every block."""
    return [(key, norm) for b in structure.blocks for _, _, key, norm in targets(b)]


def init_like(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A fresh tensor of ``weight``'s shape, initialised as torchvision's DenseNet does."""
    shape = weight.shape
    fan_in = math.prod(shape[1:])
    if len(shape) == 4:  # nn.init.kaiming_normal_: N(0, 2 / fan_in)
        return torch.randn(shape, generator=generator) * math.sqrt(2.0 / fan_in)
    bound = 1.0 / math.sqrt(fan_in)  # nn.Linear: kaiming_uniform_(a=√5) = U(±1/√fan_in)
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound


def _reset_norm(out: dict[str, torch.Tensor], norm: str | None) -> None:
    for name, value in (
        ("weight", 1.0),
        ("bias", 0.0),
        ("running_mean", 0.0),
        ("running_var", 1.0),
    ):
        key = f"{norm}.{name}"
        if norm is not None and key in out:
            out[key] = torch.full_like(out[key], value, dtype=torch.float32)


def untrained_like(
    state_dict: Mapping[str, torch.Tensor], structure: DenseNetStructure, seed: int
) -> dict[str, torch.Tensor]:
    """The targets' weights and norms of ``state_dict`` freshly initialised (seed ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    out = dict(state_dict)
    for key, norm in target_keys(structure):
        out[key] = init_like(state_dict[key], generator)
        _reset_norm(out, norm)
    return out


def permuted_inputs(
    state_dict: Mapping[str, torch.Tensor], structure: DenseNetStructure, seed: int
) -> dict[str, torch.Tensor]:
    """Each target's input channels (and its norm's, alike) shuffled (seed ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    out = dict(state_dict)
    for key, norm in target_keys(structure):
        weight = state_dict[key]
        perm = torch.randperm(weight.shape[1], generator=generator)
        out[key] = weight[:, perm]
        for name in ("weight", "bias", "running_mean", "running_var"):
            nkey = f"{norm}.{name}"
            if norm is not None and nkey in out and out[nkey].numel() == len(perm):
                out[nkey] = out[nkey][perm]
    return out


# ----------------------------------------------------------------- does it look trained?
#: A conv whose weights' std is within this factor of kaiming's N(0, 2/fan_in) is "at
#: initialisation scale"; the signs below need most of the convs to be there.
_INIT_SCALE_BAND = (0.9, 1.1)


def _init_scale_share(state_dict: Mapping[str, torch.Tensor]) -> tuple[float, int]:
    """Share of the convolutions whose weights' std is within the init band, and how many."""
    inside = total = 0
    lo, hi = _INIT_SCALE_BAND
    for key, value in state_dict.items():
        if key.endswith("weight") and value.ndim == 4 and value.shape[1:].numel() >= 16:
            expected = math.sqrt(2.0 / value.shape[1:].numel())
            ratio = float(value.detach().float().std()) / expected
            inside += lo <= ratio <= hi
            total += 1
    return (inside / total if total else math.nan), total


def untrained_signs(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """What in the file says it was never (or hardly) trained; empty when nothing does."""
    signs = []
    means = [v for k, v in state_dict.items() if k.endswith("running_mean")]
    vars_ = [v for k, v in state_dict.items() if k.endswith("running_var")]
    if (
        means
        and all(bool((m == 0).all()) for m in means)
        and all(bool((v == 1).all()) for v in vars_)
    ):
        signs.append("every batch norm's running statistics are at their initial values (0, 1)")
    tracked = [int(v) for k, v in state_dict.items() if k.endswith("num_batches_tracked")]
    if tracked and max(tracked) == 0:
        signs.append("num_batches_tracked = 0 in every batch norm")
    share, total = _init_scale_share(state_dict)
    if total and share >= 0.9:
        signs.append(
            f"{100 * share:.0f} % of the {total} convolutions have weights at initialisation "
            f"scale (std within {_INIT_SCALE_BAND[0]:g}–{_INIT_SCALE_BAND[1]:g}× kaiming's)"
        )
    return signs


# ----------------------------------------------------------------- which order fits?
def _eta_squared(usage: np.ndarray, slices: list[tuple[int, int, int]]) -> float:
    """Share of the per-channel usage variance that lies between source slices."""
    total = float(((usage - usage.mean()) ** 2).sum())
    if total == 0:
        return math.nan
    between = sum(
        (stop - start) * (usage[start:stop].mean() - usage.mean()) ** 2 for _, start, stop in slices
    )
    return float(between / total)


def order_fit(
    state_dict: Mapping[str, torch.Tensor], structure: DenseNetStructure
) -> dict[ConcatOrder, float]:
    """Mean η² of each layer's per-channel |w| grouped by source slices, for each order.

    Channels that came from one source share a norm's scale and a history, so in a trained
    network their weights are alike: the true order groups them, the other one cuts across
    them. Equal fits (both NaN, or c0 = k where the slices coincide) decide nothing.
    """
    fits: dict[ConcatOrder, list[float]] = {o: [] for o in CONCAT_ORDERS}  # type: ignore[misc]
    for block in structure.blocks:
        for target, _, key, _ in targets(block):
            if target < 3 or block.in_channels == block.growth_rate:
                continue
            usage = channel_usage(state_dict[key])
            for order in CONCAT_ORDERS:
                fits[order].append(_eta_squared(usage, block.source_slices(target, order)))  # type: ignore[index]
    return {
        o: float(np.nanmean(v)) if v and not np.all(np.isnan(v)) else math.nan
        for o, v in fits.items()
    }


#: The other order must explain this much more of the per-channel variance (η², absolute)
#: and at least 1.5 times as much before a warning says the pattern fits it better.
_FIT_MARGIN = 0.03


def checkpoint_warnings(
    state_dict: Mapping[str, torch.Tensor] | None,
    structure: DenseNetStructure,
    attrs: Mapping[str, object],
) -> list[str]:
    """One line per reason the analysis of this file cannot mean much (stderr, report cover).

    ``attrs`` are the reuse table's (the concat order used and its decision).
    """
    lines = []
    warning = attrs.get("concat_order_warning")
    if warning:
        lines.append(str(warning))
    if state_dict is None:
        return lines
    signs = untrained_signs(state_dict)
    if any("batch norm" in sign for sign in signs):
        lines.append(
            "the weights look untrained (" + "; ".join(signs) + "): the reuse pattern and "
            "the verdicts describe an initialisation, not learning"
        )
    elif signs:
        lines.append(
            "the weights look barely trained (" + "; ".join(signs) + "): the reuse pattern "
            "and the verdicts say little about what training does"
        )
    order = attrs.get("concat_order")
    if order in CONCAT_ORDERS:
        fit = order_fit(state_dict, structure)
        other = next(o for o in CONCAT_ORDERS if o != order)
        mine, theirs = fit[order], fit[other]  # type: ignore[index]
        if theirs - mine >= _FIT_MARGIN and theirs >= 1.5 * mine:
            lines.append(
                f"the per-channel weight pattern fits {other} better than the {order} used "
                f"(η² {theirs:.2f} against {mine:.2f}): check --concat-order"
            )
    return lines
