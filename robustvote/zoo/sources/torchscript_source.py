"""``source: torchscript``: a scripted or traced module saved with ``torch.jit.save``."""

from __future__ import annotations

import torch
from torch import nn

from robustvote.errors import ModelLoadError
from robustvote.zoo.checkpoint import require_file
from robustvote.zoo.registry import register_source
from robustvote.zoo.spec import MemberSpec


@register_source("torchscript", required=("path",))
def load_torchscript(spec: MemberSpec) -> nn.Module:
    """Load a TorchScript archive, whose code runs in the TorchScript interpreter, not through pickle."""
    path = require_file(spec.path, spec.name)
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"cannot load TorchScript file {path} (member {spec.name!r}): {first}; "
            "save it with torch.jit.save(torch.jit.script(model), path)"
        ) from None
