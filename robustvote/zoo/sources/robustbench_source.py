"""``source: robustbench``: a RobustBench model id, loaded from a local ``model_dir`` cache.

RobustBench keeps checkpoints at ``<model_dir>/<dataset>/<threat_model>/<id>.pt``. A cached
checkpoint loads without network access. A missing one is downloaded by RobustBench, and a
failed download is an error that names the file RobustBench expected.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from torch import nn

from robustvote.compat import import_robustbench
from robustvote.errors import ConfigError, ModelLoadError
from robustvote.zoo.registry import register_source
from robustvote.zoo.spec import MemberSpec

logger = logging.getLogger(__name__)

MODEL_DIR_ENV = "ROBUSTVOTE_ROBUSTBENCH_DIR"
_DATASETS = {"cifar10": "cifar10"}


def default_model_dir() -> Path:
    """Return ``$ROBUSTVOTE_ROBUSTBENCH_DIR`` or ``~/.cache/robustvote/robustbench``."""
    env = os.environ.get(MODEL_DIR_ENV)
    return Path(env) if env else Path.home() / ".cache" / "robustvote" / "robustbench"


def expected_checkpoint(model_dir: Path, dataset: str, threat_model: str, model_id: str) -> Path:
    """Return the path where RobustBench caches the checkpoint of ``model_id``."""
    return model_dir / dataset / threat_model / f"{model_id}.pt"


@register_source(
    "robustbench", optional=("model_dir", "dataset", "threat_model", "id"), path_fields=("model_dir",)
)
def load_robustbench(spec: MemberSpec) -> nn.Module:
    """Load a RobustBench model zoo entry (``id``, or ``name`` when ``id`` is absent)."""
    utils = import_robustbench()
    from robustbench.model_zoo import model_dicts

    model_id = str(spec.option("id") or spec.name)
    dataset = str(spec.option("dataset", "cifar10"))
    threat_model = str(spec.option("threat_model", "Linf"))
    model_dir = Path(str(spec.option("model_dir") or default_model_dir())).expanduser()

    try:
        zoo = model_dicts[utils.BenchmarkDataset(dataset)][utils.ThreatModel(threat_model)]
    except ValueError:
        raise ConfigError(
            f"member {spec.name!r}: RobustBench has no zoo for dataset {dataset!r} and threat model "
            f"{threat_model!r}; use e.g. dataset: cifar10, threat_model: Linf or L2"
        ) from None
    if model_id not in zoo:
        close = sorted(k for k in zoo if k.lower().startswith(model_id.lower()[:6]))[:5]
        hint = f" (similar ids: {', '.join(close)})" if close else ""
        raise ConfigError(
            f"member {spec.name!r}: {model_id!r} is not a RobustBench {dataset} {threat_model} model id{hint}"
        )

    checkpoint = expected_checkpoint(model_dir, dataset, threat_model, model_id)
    if not checkpoint.is_file():
        logger.info("%s not cached at %s; RobustBench will download it", model_id, checkpoint)
    try:
        # RobustBench calls torch.load without weights_only; torch 2.6 and newer then
        # default to weights_only=True, which the pinned torch versions do.
        model = utils.load_model(
            model_name=model_id, model_dir=str(model_dir), dataset=dataset, threat_model=threat_model
        )
    except Exception as exc:  # gdown, requests and torch raise many unrelated types offline
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not checkpoint.is_file():
            raise ModelLoadError(
                f"RobustBench checkpoint {checkpoint} is missing and the download failed ({first}); "
                f"download it where the internet is reachable and copy it there, or set "
                f"model_dir / ${MODEL_DIR_ENV} to a folder that has it"
            ) from None
        raise ModelLoadError(f"cannot load RobustBench model {model_id} from {checkpoint}: {first}") from None
    return model
