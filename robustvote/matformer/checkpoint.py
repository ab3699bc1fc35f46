"""MatViT checkpoints: weights in ``NAME.safetensors``, the model config in ``NAME.json`` beside it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file

from robustvote.errors import ConfigError, ModelLoadError
from robustvote.io import write_json_atomic
from robustvote.matformer.model import MatViT, MatViTConfig
from robustvote.training import save_model_weights

CONFIG_FORMAT = "matvit"
CONFIG_FORMAT_VERSION = 1


def config_path(weights_path: str | os.PathLike[str]) -> Path:
    """Return the JSON config path that belongs to a ``.safetensors`` weight file."""
    return Path(weights_path).with_suffix(".json")


def write_config(weights_path: str | os.PathLike[str], config: MatViTConfig, extra: dict[str, Any] | None = None) -> None:
    """Write the JSON config of the checkpoint ``weights_path``; ``extra`` adds free-form fields such as training info."""
    payload = {"format": CONFIG_FORMAT, "format_version": CONFIG_FORMAT_VERSION, "model": config.to_json()}
    if extra:
        payload.update(extra)
    write_json_atomic(config_path(weights_path), payload)


def save_matvit(model: MatViT, weights_path: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> None:
    """Write ``model``'s weights as safetensors and its config as JSON, both atomically."""
    path = Path(weights_path)
    if path.suffix != ".safetensors":
        raise ConfigError(f"MatViT weights go to a .safetensors file, got {path}; change the file name")
    save_model_weights(model, path)
    write_config(path, model.config, extra)


def read_config(weights_path: str | os.PathLike[str]) -> tuple[MatViTConfig, dict[str, Any]]:
    """Return the model config and the whole JSON payload of a checkpoint."""
    path = config_path(weights_path)
    if not path.is_file():
        raise ModelLoadError(
            f"MatViT config {path} not found; a MatViT checkpoint is NAME.safetensors plus NAME.json beside it"
        )
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"failed to read MatViT config {path}: {exc}; rewrite it with save_matvit or robustvote extract") from None
    if not isinstance(payload, dict) or payload.get("format") != CONFIG_FORMAT or "model" not in payload:
        raise ModelLoadError(f"{path} is not a MatViT config: expected a JSON object with format 'matvit' and a 'model' entry")
    if payload.get("format_version") != CONFIG_FORMAT_VERSION:
        raise ModelLoadError(
            f"MatViT config {path} has format_version {payload.get('format_version')!r}; "
            f"this robustvote reads version {CONFIG_FORMAT_VERSION}"
        )
    try:
        config = MatViTConfig.from_json(payload["model"])
    except (ConfigError, TypeError) as exc:
        raise ModelLoadError(f"invalid MatViT config {path}: {exc}") from None
    return config, payload


def load_matvit(weights_path: str | os.PathLike[str]) -> MatViT:
    """Load a MatViT checkpoint (nested or extracted) in eval mode, strictly."""
    path = Path(weights_path)
    if not path.is_file():
        raise ModelLoadError(f"MatViT weights {path} not found; pass an existing .safetensors file")
    config, _ = read_config(path)
    try:
        weights = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(f"failed to read MatViT weights {path}: {exc}; the file is damaged or not safetensors") from None
    model = MatViT(config)
    from robustvote.zoo.sources.state_dict_source import load_strict

    load_strict(model, weights, f"MatViT checkpoint {path}")
    return model.eval()
