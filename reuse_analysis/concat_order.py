"""Which way a checkpoint's dense layers concatenated their inputs, read from its weights.

A dense layer's first batch norm holds running statistics of every channel it reads. The
channels layer ``t`` reads are all read again by layer ``t+1`` (and the last layer's by
the transition or final norm), so in a trained file they carry *identical*
``running_mean``/``running_var`` in both norms: layer ``t``'s statistics are the prefix of
the next norm's when the block concatenates oldest first (``[x_0, x_1, …]``), and the
suffix when it concatenates newest first (``torch.cat([new, old])``). At initialisation
every norm holds mean 0, variance 1, so both sides match and nothing is decided; a file
without running statistics decides nothing either, and the order is then *assumed*.

Pure functions of a state_dict and its structure: :func:`detect_concat_order` says what
the file holds, :func:`resolve_concat_order` turns a requested order (``auto`` or an
explicit one) into the order to use, how it was chosen, and a warning when an explicit
order contradicts the statistics.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass

import torch

from reuse_analysis.structure import CONCAT_ORDERS, ConcatOrder, DenseNetStructure

DETECTED = "detected from batch-norm statistics"
ASSUMED = "assumed (nothing in the file decides)"
REQUESTED = "requested (--concat-order)"
#: Requests :func:`resolve_concat_order` accepts.
REQUESTS: tuple[str, ...] = ("auto", *CONCAT_ORDERS)
#: The order used when nothing decides: torchvision's and most code's.
DEFAULT_ORDER: ConcatOrder = "oldest-first"
# Two norms saw the same channels in the same forward passes, so their running statistics
# agree bit for bit; the tolerance only absorbs a float16 round trip of the file.
_RTOL, _ATOL = 1e-4, 1e-6
# When both orders find exclusive matches (a file edited by hand, a fine-tuned copy whose
# norms were partly reset), one must beat the other this many times over to decide.
_MAJORITY = 3


@dataclass(frozen=True)
class Evidence:
    """Counts of consecutive norm pairs whose shared channels match on each side."""

    oldest_first: int  # pairs matching as a prefix only
    newest_first: int  # pairs matching as a suffix only
    both: int  # pairs matching on both sides (statistics still at their initial values)
    neither: int  # pairs matching on no side
    pairs: int  # pairs compared (norms with running statistics on both sides)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class OrderDecision:
    """The concat order to use, how it was chosen, and the evidence behind it."""

    order: ConcatOrder
    basis: str  # DETECTED, ASSUMED or REQUESTED
    detected: ConcatOrder | None  # what the statistics say, None when they decide nothing
    evidence: Evidence
    warning: str | None = None  # an explicit order the statistics contradict

    @property
    def provenance(self) -> str:
        """``detected``, ``given`` (an explicit request) or ``assumed`` (nothing decided)."""
        return {DETECTED: "detected", REQUESTED: "given"}.get(self.basis, "assumed")

    def describe(self) -> str:
        """The order and what it rests on, briefly, for every printed output and title:
        ``oldest-first (detected: 36 of 36 batch-norm pairs, 0 against)``,
        ``newest-first (given)``, ``oldest-first (assumed: detection inconclusive, …)``."""
        e = self.evidence
        old, new = e.oldest_first, e.newest_first
        if self.basis == DETECTED:
            won, lost = (old, new) if self.order == "oldest-first" else (new, old)
            return f"{self.order} (detected: {won} of {e.pairs} batch-norm pairs, {lost} against)"
        if self.basis == REQUESTED:
            if self.detected is not None and self.detected != self.order:
                return f"{self.order} (given; the batch-norm statistics say {self.detected})"
            return f"{self.order} (given)"
        if e.pairs == 0:
            why = "no batch-norm running statistics to compare"
        elif e.both == e.pairs:
            why = f"all {e.pairs} batch-norm pairs at their initial values"
        else:
            why = f"{old} vs {new} of {e.pairs} batch-norm pairs"
        return f"{self.order} (assumed: detection inconclusive, {why})"

    def to_dict(self) -> dict:
        return {
            "order": self.order,
            "basis": self.basis,
            "provenance": self.provenance,
            "detected": self.detected,
            "evidence": self.evidence.to_dict(),
            "warning": self.warning,
            "description": self.describe(),
        }


def _stats(state_dict: Mapping[str, torch.Tensor], norm: str | None) -> torch.Tensor | None:
    """``[2, channels]`` running mean and variance of ``norm`` in float64, if it has them."""
    if norm is None:
        return None
    mean = state_dict.get(f"{norm}.running_mean")
    var = state_dict.get(f"{norm}.running_var")
    if mean is None or var is None or mean.shape != var.shape or mean.ndim != 1:
        return None
    return torch.stack([mean.detach().double(), var.detach().double()])


def _norm_chains(structure: DenseNetStructure) -> Iterator[list[str | None]]:
    """Per block, the norms in front of each layer, then the one in front of its extra."""
    for block in structure.blocks:
        norms: list[str | None] = [layer.norm for layer in block.layers]
        if block.extra is not None:
            norms.append(block.extra.norm)
        yield norms


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.allclose(a, b, rtol=_RTOL, atol=_ATOL))


def count_evidence(
    state_dict: Mapping[str, torch.Tensor], structure: DenseNetStructure
) -> Evidence:
    """Compare every consecutive pair of norms of every block on both sides."""
    prefix = suffix = both = neither = pairs = 0
    for norms in _norm_chains(structure):
        stats = [_stats(state_dict, n) for n in norms]
        for a, b in itertools.pairwise(stats):
            if a is None or b is None or a.shape[1] >= b.shape[1]:
                continue
            width = a.shape[1]
            head, tail = _same(a, b[:, :width]), _same(a, b[:, -width:])
            pairs += 1
            if head and tail:
                both += 1
            elif head:
                prefix += 1
            elif tail:
                suffix += 1
            else:
                neither += 1
    return Evidence(prefix, suffix, both, neither, pairs)


def _decide(evidence: Evidence) -> ConcatOrder | None:
    old, new = evidence.oldest_first, evidence.newest_first
    if old > 0 and old >= _MAJORITY * new:
        return "oldest-first"
    if new > 0 and new >= _MAJORITY * old:
        return "newest-first"
    return None


def detect_concat_order(
    state_dict: Mapping[str, torch.Tensor], structure: DenseNetStructure
) -> OrderDecision:
    """The order the batch-norm statistics record, or the default when they decide nothing."""
    evidence = count_evidence(state_dict, structure)
    detected = _decide(evidence)
    if detected is None:
        return OrderDecision(DEFAULT_ORDER, ASSUMED, None, evidence)
    return OrderDecision(detected, DETECTED, detected, evidence)


def describe_evidence(evidence: Evidence) -> str:
    """``of 36 consecutive batch-norm pairs, 36 share … oldest-first and 0 newest-first``."""
    text = (
        f"of {evidence.pairs} consecutive batch-norm pairs, {evidence.oldest_first} share "
        f"running statistics oldest-first and {evidence.newest_first} newest-first"
    )
    if evidence.both:
        text += f", {evidence.both} either way (statistics at their initial values)"
    return text


def resolve_concat_order(
    state_dict: Mapping[str, torch.Tensor],
    structure: DenseNetStructure,
    requested: str = "auto",
) -> OrderDecision:
    """Turn ``auto`` or an explicit order into the order to use (see the module docstring).

    An explicit order is always honoured; when the statistics say otherwise the decision
    carries a one-line ``warning`` naming the evidence.
    """
    if requested not in REQUESTS:
        raise ValueError(f"concat order must be one of {', '.join(REQUESTS)}, not {requested!r}")
    found = detect_concat_order(state_dict, structure)
    if requested == "auto":
        return found
    warning = None
    if found.detected is not None and found.detected != requested:
        warning = (
            f"--concat-order {requested} contradicts the weights: "
            f"{describe_evidence(found.evidence)}; the file was written {found.detected}, "
            "so the reuse pattern is read mirrored (use --concat-order auto)"
        )
    return OrderDecision(requested, REQUESTED, found.detected, found.evidence, warning)  # type: ignore[arg-type]


def order_line(decision: OrderDecision) -> str:
    """``oldest-first (detected: 36 of 36 batch-norm pairs, 0 against)`` for every output."""
    return decision.describe()


def order_attrs(decision: OrderDecision) -> dict[str, object]:
    """The ``attrs`` a reuse table records about its order (read by text, plotting, report:
    the tiers that never import torch get the description ready-made)."""
    return {
        "concat_order": decision.order,
        "concat_order_basis": decision.basis,
        "concat_order_evidence": decision.evidence.to_dict(),
        "concat_order_warning": decision.warning,
        "concat_order_text": decision.describe(),
    }
