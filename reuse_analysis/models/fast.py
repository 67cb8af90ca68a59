"""A model set up for its fastest training step on a device: layout and compilation.

What is fastest was measured by ``benchmarks/train_throughput.py`` (README, *Benchmarks*):
for this project's DenseNets, autocast (bf16 on the CPU, fp16 on CUDA) with channels-last
and the fused dense blocks' compiled elementwise kernels; ``torch.compile(model)`` would
trace the blocks layer by layer instead (dynamo does not enter the fused block). Any other
model gets ``torch.compile(model)``. Autocast itself stays with the training loop
(``torch.autocast(device.type, dtype=...)`` around the forward pass).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from reuse_analysis.models import _efficient
from reuse_analysis.models.densenet import _DenseBlock


def has_fused_blocks(model: nn.Module) -> bool:
    """Whether ``model`` holds dense blocks that run as one fused operation."""
    return any(isinstance(m, _DenseBlock) and m.fused for m in model.modules())


def prepare_for_training(
    model: nn.Module, device: torch.device | str, *, channels_last: bool, compile: bool
) -> nn.Module:
    """``model`` on ``device`` in the chosen memory format, compiled where asked.

    With ``compile``: a model with fused dense blocks keeps its modules and switches the
    blocks' compiled kernels on (process-wide; the first step compiles them, seconds, cached
    in ``TORCHINDUCTOR_CACHE_DIR``); any other model is returned as ``torch.compile(model)``
    (its state_dict keys then carry the ``_orig_mod.`` prefix). Returns the model to train."""
    model = model.to(device)
    if compile and torch.device(device).type == "cpu":
        # inductor's C++ build looks for a CUDA toolkit and warns wherever there is none.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if not compile:
        return model
    if has_fused_blocks(model):
        _efficient.use_compiled_kernels(True)
        return model
    return torch.compile(model)
