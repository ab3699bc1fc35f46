"""Mix'n'Match extraction: slice a nested MatViT into a standalone model at one granularity per layer."""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from robustvote.errors import ConfigError
from robustvote.matformer.granularity import GranularitySpec, parse_granularity
from robustvote.matformer.model import MatViT

logger = logging.getLogger(__name__)


def extract_submodel(model: MatViT, granularity: GranularitySpec) -> MatViT:
    """Return a standalone MatViT that keeps the first ``d_ff/divisor`` FFN units of each layer.

    The result stores only the kept units (layer i's ``fc1`` rows ``[:m_i]`` and ``fc2``
    columns ``[:, :m_i]``), shares no tensors with ``model``, and returns the same logits as
    ``model(x, granularity=granularity)``. It is in eval mode.
    """
    config = model.config
    if not config.nested:
        raise ConfigError(
            f"this MatViT was already extracted at granularity {','.join(config.granularity or ())}; "
            "extract from the nested checkpoint instead"
        )
    layers = parse_granularity(granularity, config.depth)
    widths = tuple(g.width(config.d_ff) for g in layers)
    sliced_config = replace(config, ffn_widths=widths, granularity=tuple(g.value for g in layers))
    sliced = MatViT(sliced_config)

    state = {}
    for key, tensor in model.state_dict().items():
        state[key] = tensor.detach().clone()
    for index, width in enumerate(widths):
        prefix = f"blocks.{index}.ffn."
        state[prefix + "fc1.weight"] = state[prefix + "fc1.weight"][:width].clone()
        state[prefix + "fc1.bias"] = state[prefix + "fc1.bias"][:width].clone()
        state[prefix + "fc2.weight"] = state[prefix + "fc2.weight"][:, :width].clone()
    sliced.load_state_dict(state, strict=True)
    logger.debug("extracted granularity %s: %d parameters", ",".join(sliced_config.granularity), count_parameters(sliced))
    return sliced.eval()


def count_parameters(model: torch.nn.Module) -> int:
    """Return the number of trainable-parameter entries (buffers such as the normalization excluded)."""
    return sum(parameter.numel() for parameter in model.parameters())
