"""Built-in member source kinds; importing this package registers them all."""

from robustvote.zoo.sources import (
    matvit_source,
    onnx_source,
    robustbench_source,
    state_dict_source,
    torchscript_source,
)

__all__ = ["matvit_source", "onnx_source", "robustbench_source", "state_dict_source", "torchscript_source"]
