"""How much of what a transition writes does the next block need: low-rank evidence.

Counting the channels that carry 90 % of the usage gives ≈ 0.85–0.9 of the channels for any
non-sparse magnitude distribution, untrained networks included, so it cannot tell a
redundant transition from a fresh one. Redundancy shows in *rank* instead: if the next
block only reads a few directions of the transition's output, the matrix of its read-in
weights has few large singular values.

Per transition (after block ``b``):

* **read-in** — every layer of block ``b+1`` reads the transition's ``c`` output channels
  through its first conv's row-0 slice; stacked, ``[filters·kh·kw of all layers, c]``.
  Measure: the fewest singular directions holding ``ENERGY`` of its squared singular
  values, as a fraction of ``c``.
* **transition conv** — the same fraction of the transition's own ``[c, C]`` weight.

Each comes with what the same shapes freshly initialised give (``SEEDS`` seeds, kaiming
normal as torchvision's DenseNet): a random matrix already needs ≈ 0.8 of its dimensions
for 90 % of its energy, so only a fraction *below* that reference is evidence. The
suggestion is ``θ' = θ · fraction / untrained fraction`` when the read-in is below every
untrained seed but one (one-sided p ≤ ``ALPHA``) by at least ``EFFECT``, else ``None``.

Pure numpy and torch on weights alone; no plotting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from reuse_analysis.nulls import init_like
from reuse_analysis.structure import ConcatOrder, DenseNetStructure

ENERGY = 0.9
SEEDS = 20
ALPHA = 0.05
#: Least drop below the untrained fraction (absolute) before a compression is suggested.
EFFECT = 0.05


@dataclass(frozen=True)
class Reference:
    """The measure on the model and on ``seeds`` fresh initialisations of its shapes."""

    fraction: float  # fewest directions for ENERGY of the squared singular values ÷ width
    dims: int
    untrained_mean: float
    untrained_sd: float
    p_value: float  # share of seeds at or below the model's fraction, (1 + k) / (1 + n)
    #: Cumulative share of the squared singular values, model and first untrained seed
    #: (for the report's plot; not in the JSON).
    curve: tuple[float, ...] = field(default=(), repr=False, compare=False)
    untrained_curve: tuple[float, ...] = field(default=(), repr=False, compare=False)

    @property
    def below_untrained(self) -> bool:
        return self.p_value <= ALPHA and self.untrained_mean - self.fraction >= EFFECT


@dataclass(frozen=True)
class TransitionRedundancy:
    """The redundancy measures of one transition and the compression they suggest."""

    transition: int  # the block the transition follows
    channels: int  # its output channels (the next block's c0)
    compression: float  # its θ
    row0_vs_other: float  # next block's layers: mean |w| on row 0 ÷ on their other sources
    read_in: Reference
    transition_conv: Reference
    measure: str  # what suggested_compression came from
    suggested_compression: float | None  # θ', None without evidence of redundancy
    theta_half_supported: bool | None  # plain DenseNet only: does θ' reach DenseNet-C's 0.5?

    def describe(self) -> str:
        """The measures in words, next to the untrained reference, and θ'."""
        i, c = self.read_in, self.transition_conv
        return (
            f"after block {self.transition}: {self.channels} channels (θ = {self.compression:g}); "
            f"read-in rank fraction {i.fraction:.3f} (untrained {i.untrained_mean:.3f} ± "
            f"{i.untrained_sd:.3f}, p = {i.p_value:.3f}); transition conv {c.fraction:.3f} "
            f"(untrained {c.untrained_mean:.3f}); row 0 gets {self.row0_vs_other:.2f}× the "
            f"weight of the other sources; {self.suggestion()}"
        )

    def suggestion(self) -> str:
        """θ' in words, or why there is none (and, on a plain DenseNet, DenseNet-C's 0.5)."""
        if self.suggested_compression is None:
            text = "no suggested θ' (no lower rank than untrained)"
        else:
            text = f"suggested θ' ≈ {self.suggested_compression:.2f}"
        if self.theta_half_supported is not None:
            text += "; DenseNet-C's θ = 0.5 is " + (
                "supported" if self.theta_half_supported else "not supported by these weights"
            )
        return text

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("read_in", "transition_conv"):
            d[key] = {k: _round(v) for k, v in d[key].items() if "curve" not in k}
            d[key]["below_untrained"] = getattr(self, key).below_untrained
        d["untrained_reference"] = _round(self.read_in.untrained_mean)
        d["row0_vs_other"] = _round(self.row0_vs_other)
        return d


def _round(v: float | int) -> float | int | None:
    if isinstance(v, int):
        return v
    return None if not math.isfinite(v) else round(float(v), 4)


def energy_curve(matrix: torch.Tensor) -> tuple[float, ...]:
    """Cumulative share of the squared singular values, largest first."""
    s2 = torch.linalg.svdvals(matrix.to(torch.float64)) ** 2
    return tuple((torch.cumsum(s2, 0) / s2.sum()).tolist()) if float(s2.sum()) > 0 else ()


def energy_dims(matrix: torch.Tensor, energy: float = ENERGY) -> int:
    """Fewest singular directions whose squared singular values reach ``energy`` of the sum."""
    s2 = torch.linalg.svdvals(matrix.to(torch.float64)) ** 2
    if float(s2.sum()) == 0:
        return 0
    cum = torch.cumsum(s2, 0) / s2.sum()
    return int(torch.searchsorted(cum, torch.tensor(energy, dtype=cum.dtype)).item()) + 1


def _rows(weight: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """``[out·kh·kw, stop-start]``: the weights a conv applies to channels start..stop."""
    w = weight[:, start:stop]
    return w.permute(0, *range(2, w.ndim), 1).reshape(-1, stop - start)


def _reference(matrix: torch.Tensor, shapes: list[torch.Size], width: int, build, seeds: int):
    dims = energy_dims(matrix)
    fraction = dims / width
    generator = torch.Generator().manual_seed(0)
    fresh = [build([init_like(torch.empty(s), generator) for s in shapes]) for _ in range(seeds)]
    samples = np.array([energy_dims(m) / width for m in fresh])
    p = (1 + (samples <= fraction).sum()) / (1 + len(samples))
    return Reference(
        fraction,
        dims,
        float(samples.mean()),
        float(samples.std(ddof=1)),
        float(p),
        energy_curve(matrix),
        energy_curve(fresh[0]),
    )


def transition_redundancy(
    state_dict: Mapping[str, torch.Tensor],
    structure: DenseNetStructure,
    concat_order: ConcatOrder = "oldest-first",
    *,
    seeds: int = SEEDS,
) -> list[TransitionRedundancy]:
    """Per transition: read-in and transition-conv rank against untrained, and θ'."""
    out = []
    for block, nxt in zip(structure.blocks, structure.blocks[1:], strict=False):
        if block.extra_kind != "transition":
            continue
        theta, c = block.extra.compression, nxt.in_channels
        slices = [(layer, nxt.source_slices(layer.index, concat_order)) for layer in nxt.layers]
        zero = [(layer.first_conv.key, s[0][1], s[0][2]) for layer, s in slices]
        weights = [state_dict[key] for key, _, _ in zero]
        read_in = torch.cat([_rows(w, a, b) for w, (_, a, b) in zip(weights, zero, strict=True)])
        # Fresh read-ins: each layer's whole conv initialised, then its row-0 slice taken
        # (kaiming's scale depends on the full fan-in, though the rank fraction does not).
        ref_in = _reference(
            read_in,
            [w.shape for w in weights],
            c,
            lambda ws, zero=zero: torch.cat(
                [_rows(w, a, b) for w, (_, a, b) in zip(ws, zero, strict=True)]
            ),
            seeds,
        )
        conv = state_dict[block.extra.conv.key]
        flat = conv.reshape(conv.shape[0], -1)
        ref_conv = _reference(
            flat, [conv.shape], min(flat.shape), lambda ws: ws[0].reshape(ws[0].shape[0], -1), seeds
        )
        ratios = []
        for (_, s), w in zip(slices, weights, strict=True):
            if len(s) > 1:  # row 0 against the other sources of the same conv (same fan-in)
                usage = (
                    w.detach().double().abs().mean(dim=tuple(i for i in range(w.ndim) if i != 1))
                )
                other = np.mean([float(usage[a:b].mean()) for _, a, b in s[1:]])
                ratios.append(float(usage[s[0][1] : s[0][2]].mean()) / other)
        suggested = (
            round(theta * ref_in.fraction / ref_in.untrained_mean, 3)
            if ref_in.below_untrained
            else None
        )
        out.append(
            TransitionRedundancy(
                transition=block.index,
                channels=c,
                compression=theta,
                row0_vs_other=float(np.mean(ratios)) if ratios else math.nan,
                read_in=ref_in,
                transition_conv=ref_conv,
                measure=f"read-in rank: directions for {100 * ENERGY:.0f} % of the energy of "
                "the next block's weights on the transition's output, ÷ the untrained reference",
                suggested_compression=suggested,
                theta_half_supported=(suggested <= 0.5 if suggested is not None else False)
                if theta >= 0.99
                else None,
            )
        )
    return out


# ----------------------------------------------------------------- on images (--dataset)
#: Fresh initialisations the activation reference runs (each is a forward pass over the
#: images, so fewer than the weight references' 20: the mean and spread are shown, and
#: the suggestion keeps coming from the weights alone).
ACTIVATION_SEEDS = 5


@dataclass(frozen=True)
class ActivationDims:
    """PCA dimensionality of one transition's outputs on images, next to untrained."""

    transition: int
    fraction: float  # fewest components for ENERGY of the standardised variance ÷ channels
    dims: int
    untrained_mean: float
    untrained_sd: float
    images: int

    def to_dict(self) -> dict:
        return {k: _round(v) for k, v in asdict(self).items()}


def pca_dims(samples: torch.Tensor, energy: float = ENERGY) -> int:
    """Fewest principal components of the standardised ``samples`` ``[n, channels]``
    holding ``energy`` of the variance (correlation PCA).

    Standardised, because an untrained network's eval-mode batch norms (mean 0, variance
    1) leave its channels at arbitrary scales; a channel that never varies counts as 0.
    """
    x = samples.to(torch.float64)
    x = x - x.mean(dim=0)
    std = x.std(dim=0)
    return energy_dims(x[:, std > 0] / std[std > 0], energy)


def _transition_outputs(model: torch.nn.Module, names: list[str], x: torch.Tensor) -> list:
    """Each named transition module's output on ``x``, as ``[images·h·w, channels]``."""
    modules = dict(model.named_modules())
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    hooks = [
        modules[name].register_forward_hook(
            lambda _m, _i, out, name=name: captured[name].append(out.detach())
        )
        for name in names
    ]
    try:
        with torch.no_grad():
            for batch in x.split(128):
                model(batch)
    finally:
        for h in hooks:
            h.remove()
    outs = [torch.cat(captured[n]) for n in names]
    return [o.permute(0, 2, 3, 1).reshape(-1, o.shape[1]) for o in outs]


def activation_redundancy(
    state_dict: Mapping[str, torch.Tensor],
    structure: DenseNetStructure,
    checkpoint: object,
    dataset: str | None,
    data_dir: str = "data",
    images: int = 256,
) -> list[ActivationDims]:
    """PCA dimensionality of every transition's output on ``images`` training images, for
    the model and for ``ACTIVATION_SEEDS`` fresh initialisations of the same DenseNet."""
    from reuse_analysis.models import DenseNet
    from reuse_analysis.probes import load_data, probe_images, runnable_model

    model = runnable_model(state_dict, structure, checkpoint)
    x, _ = probe_images(load_data(model, checkpoint, dataset, data_dir), "train", images)
    names = [t.name for t in structure.transitions]
    model_dims = [pca_dims(s) for s in _transition_outputs(model, names, x)]
    ref = []
    for seed in range(ACTIVATION_SEEDS):
        torch.manual_seed(seed)
        fresh = DenseNet(model.config).eval()
        ref.append([pca_dims(s) for s in _transition_outputs(fresh, names, x)])
    out = []
    after = [b.index for b in structure.blocks if b.extra_kind == "transition"]
    for i, t in enumerate(structure.transitions):
        width = t.conv.out_channels
        samples = np.array([r[i] for r in ref]) / width
        out.append(
            ActivationDims(
                transition=after[i],
                fraction=model_dims[i] / width,
                dims=model_dims[i],
                untrained_mean=float(samples.mean()),
                untrained_sd=float(samples.std(ddof=1)) if len(samples) > 1 else 0.0,
                images=len(x),
            )
        )
    return out
