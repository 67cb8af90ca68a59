"""Feature-reuse analysis of densely connected networks (Huang et al., 2017, §5 and Fig. 5).

::

    import reuse_analysis

    result = reuse_analysis.analyze("model.pt")   # or a state_dict, or an nn.Module
    result.table                                   # pandas DataFrame, one row per connection
    fig = result.heatmap(cmap="jet")               # matplotlib Figure (Figure 5)

The names below are imported on first use, so that ``import reuse_analysis`` (and
``reuse-analysis --help``) stays fast: torch, pandas and matplotlib load only when needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name → the module that defines it.
_EXPORTS = {
    "Analysis": "reuse_analysis.analysis",
    "analyze": "reuse_analysis.analysis",
    "analyze_traced": "reuse_analysis.traced",
    "infer_structure": "reuse_analysis.structure",
    "create_model": "reuse_analysis.models",
    "plot_reuse_heatmap": "reuse_analysis.plotting",
    "plot_difference": "reuse_analysis.plotting",
    "agreement_figure": "reuse_analysis.plotting",
    "sweep_figure": "reuse_analysis.plotting",
}

__all__ = [
    "Analysis",
    "__version__",
    "agreement_figure",
    "analyze",
    "analyze_traced",
    "create_model",
    "infer_structure",
    "plot_difference",
    "plot_reuse_heatmap",
    "sweep_figure",
]

if TYPE_CHECKING:
    from reuse_analysis.analysis import Analysis, analyze
    from reuse_analysis.models import create_model
    from reuse_analysis.plotting import (
        agreement_figure,
        plot_difference,
        plot_reuse_heatmap,
        sweep_figure,
    )
    from reuse_analysis.structure import infer_structure
    from reuse_analysis.traced import analyze_traced


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'reuse_analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
