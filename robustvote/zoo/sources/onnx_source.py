"""``source: onnx``: ONNX files converted to torch with onnx2torch.

Published ONNX models carry file-level quirks that onnx2torch does not handle. Each repair
below is decided by inspecting the graph, never by the member's name:

* gzip-compressed files are decompressed in memory (detected by the gzip magic bytes);
* an operator whose opset has no onnx2torch converter (e.g. Slice-1 in opset 9) triggers an
  upgrade of the whole model to opset 13 with ``onnx.version_converter``;
* a Reshape whose constant target shape starts with 1 and contains -1 (a batch dimension
  frozen to 1 at export) gets 0 there, which copies the batch size from its input;
* BatchNormalization inputs whose rank shape inference cannot derive get ``value_info``
  entries measured by one onnxruntime run, because onnx2torch picks BatchNorm1d/2d/3d by rank.

After conversion the module is checked to give the same logits for a batch of two as for
each image alone, so a converted member accepts any batch size.
"""

from __future__ import annotations

import gzip
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper, shape_inference
from torch import nn

from robustvote.errors import ModelLoadError
from robustvote.zoo.checkpoint import require_file
from robustvote.zoo.registry import register_source
from robustvote.zoo.spec import MemberSpec

logger = logging.getLogger(__name__)

# onnx2torch 1.5's Slice indexes with a list, which torch deprecates; the result is correct.
warnings.filterwarnings("ignore", message="Using a non-tuple sequence", module="onnx2torch")

UPGRADE_OPSET = 13
_GZIP_MAGIC = b"\x1f\x8b"
_BATCH_DIM = "batch"


def read_onnx(path: Path) -> onnx.ModelProto:
    """Read an ONNX file, decompressing it first when it is gzip-compressed."""
    data = path.read_bytes()
    if data[:2] == _GZIP_MAGIC:
        data = gzip.decompress(data)
    try:
        return onnx.load_model_from_string(data)
    except Exception as exc:  # onnx raises DecodeError or ValueError for damaged files
        raise ModelLoadError(f"cannot parse ONNX file {path}: {exc}") from None


def _default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return UPGRADE_OPSET


def unconvertible_ops(model: onnx.ModelProto) -> list[str]:
    """Return the operator types that onnx2torch has no converter for at the model's opset."""
    from onnx2torch.node_converters.registry import get_converter

    opset = _default_opset(model)
    missing = set()
    for node in model.graph.node:
        try:
            get_converter(node.op_type, opset, node.domain or "")
        except NotImplementedError:
            missing.add(f"{node.op_type}-{opset}")
    return sorted(missing)


def upgrade_opset_if_needed(model: onnx.ModelProto) -> onnx.ModelProto:
    """Upgrade the model to opset 13 when some operator lacks a converter at its own opset."""
    missing = unconvertible_ops(model)
    if not missing or _default_opset(model) >= UPGRADE_OPSET:
        return model
    logger.debug("upgrading opset %d to %d for %s", _default_opset(model), UPGRADE_OPSET, missing)
    from onnx import version_converter

    return version_converter.convert_version(model, UPGRADE_OPSET)


def _constant_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    tensors = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            tensors[node.output[0]] = node.attribute[0].t
    return tensors


def free_batch_dimension(model: onnx.ModelProto) -> int:
    """Replace a leading 1 in constant Reshape targets by 0 and free the graph's batch dims.

    Returns the number of Reshape targets changed.
    """
    constants = _constant_tensors(model)
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        tensor = constants[node.input[1]]
        shape = numpy_helper.to_array(tensor)
        if shape.ndim == 1 and shape.size >= 2 and shape[0] == 1 and -1 in shape[1:]:
            fixed = shape.copy()
            fixed[0] = 0
            tensor.CopyFrom(numpy_helper.from_array(fixed.astype(shape.dtype), tensor.name))
            changed += 1
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if len(dims) > 0 and dims[0].HasField("dim_value") and dims[0].dim_value == 1:
            dims[0].dim_param = _BATCH_DIM
    return changed


def _input_shape(model: onnx.ModelProto) -> tuple[str, list[int]] | None:
    initializers = {init.name for init in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    if len(inputs) != 1:
        return None
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in dims]
    return inputs[0].name, shape


def add_batchnorm_ranks(model: onnx.ModelProto) -> int:
    """Give every BatchNormalization input without a known shape a measured ``value_info``.

    Returns the number of entries added.
    """
    inferred = shape_inference.infer_shapes(model)
    known = {v.name for v in inferred.graph.value_info if v.type.tensor_type.shape.dim}
    known |= {v.name for v in model.graph.input} | {v.name for v in model.graph.output}
    wanted = sorted({n.input[0] for n in model.graph.node if n.op_type == "BatchNormalization"} - known)
    if not wanted:
        return 0
    signature = _input_shape(model)
    if signature is None:
        raise ModelLoadError("cannot measure BatchNormalization input ranks: the graph needs exactly one input")
    import onnxruntime

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in wanted:
        probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    session = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    input_name, shape = signature
    outputs = session.run(wanted, {input_name: np.zeros(shape, dtype=np.float32)})
    for name, value in zip(wanted, outputs):
        dims: list[int | str] = [_BATCH_DIM, *value.shape[1:]]
        model.graph.value_info.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims))
    return len(wanted)


def check_batch_independence(module: nn.Module, model: onnx.ModelProto, where: str) -> None:
    """Raise unless the module maps a batch of two to the logits of each image alone."""
    signature = _input_shape(model)
    if signature is None or len(signature[1]) != 4:
        logger.debug("%s: input shape unknown, batch check skipped", where)
        return
    _, shape = signature
    generator = torch.Generator().manual_seed(0)
    batch = torch.rand(2, *shape[1:], generator=generator)
    with torch.no_grad():
        together = module(batch)
        alone = torch.cat([module(batch[i : i + 1]) for i in range(2)])
    if together.shape != alone.shape or not torch.allclose(together, alone, atol=1e-4, rtol=1e-4):
        raise ModelLoadError(
            f"{where}: the converted model mixes examples across the batch dimension; the graph "
            "has a batch-dependent reshape that robustvote cannot repair, so re-export it with a dynamic batch"
        )


def convert_onnx(path: Path, where: str) -> nn.Module:
    """Read, repair and convert an ONNX file to a torch module in eval mode."""
    import onnx2torch

    model = read_onnx(path)
    model = upgrade_opset_if_needed(model)
    reshapes = free_batch_dimension(model)
    ranks = add_batchnorm_ranks(model)
    logger.debug("%s: %d reshape target(s) freed, %d BatchNorm rank(s) added", where, reshapes, ranks)
    still_missing = unconvertible_ops(model)
    if still_missing:
        raise ModelLoadError(
            f"{where}: onnx2torch has no converter for {', '.join(still_missing)}; "
            "re-export the model with opset 13 or newer"
        )
    try:
        module = onnx2torch.convert(model).eval()
    except (NotImplementedError, KeyError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{where}: onnx2torch failed to convert the model: {exc}") from None
    check_batch_independence(module, model, where)
    return module


@register_source("onnx", required=("path",))
def load_onnx(spec: MemberSpec) -> nn.Module:
    """Convert an ONNX file (optionally gzip-compressed) with onnx2torch."""
    path = require_file(spec.path, spec.name)
    return convert_onnx(path, f"member {spec.name!r} ({path})")
