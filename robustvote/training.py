"""A generic, seeded, resumable training loop for CIFAR-sized image classifiers.

One epoch shuffles the training set, augments each batch (random crop after 4-pixel zero
padding, horizontal flip), optionally replaces the batch by adversarial examples made against
the same ``loss_fn``, adds an optional penalty, and takes an AdamW step. The learning rate
rises linearly during the warm-up epochs, then follows a cosine decay to zero (per step).

Adversarial training modes (eps in [0, 1] pixel scale, Linf):

- ``fgsm-rs``: FGSM from a uniform random start with step 1.25·eps, the "fast adversarial
  training" of Wong, Rice and Kolter, "Fast is better than free" (ICLR 2020).
- ``pgd``: K steps of signed-gradient ascent from a uniform random start with step 2.5·eps/K,
  projected onto the eps-ball and the [0, 1] box (Madry et al., ICLR 2018).

Every epoch draws its randomness (shuffling, augmentation, random starts) from generators
seeded with ``(seed, epoch)``, so a run resumed from the checkpoint of a finished epoch
continues exactly as the uninterrupted run would. With ``out_dir`` set, each finished epoch
writes ``model.safetensors``, ``optimizer.safetensors`` and ``training.json`` there, each
through an atomic rename; nothing is pickled.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from robustvote.errors import ConfigError, ModelLoadError
from robustvote.io import atomic_output, write_json_atomic

logger = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
PenaltyFn = Callable[[nn.Module], torch.Tensor]
EvalFn = Callable[[nn.Module], Mapping[str, float]]
EpochCallback = Callable[["EpochRecord", nn.Module], None]

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "training.json"
STATE_FORMAT_VERSION = 1
CROP_PADDING = 4


class AdvMode(str, Enum):
    """Perturbation applied to training inputs before each weight update."""

    NONE = "none"
    FGSM_RS = "fgsm-rs"
    PGD = "pgd"

    @classmethod
    def parse(cls, value: str | AdvMode) -> AdvMode:
        if isinstance(value, AdvMode):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            choices = ", ".join(mode.value for mode in cls)
            raise ConfigError(f"invalid adversarial training mode {value!r}: expected one of {choices}") from None


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of :func:`train`.

    ``eps`` and ``step_size`` are in [0, 1] pixel scale. ``step_size=None`` picks the
    published default of the mode: 1.25·eps for ``fgsm-rs``, 2.5·eps/steps for ``pgd``.
    ``steps`` counts PGD iterations and is ignored by the other modes. ``warmup_epochs`` may
    be fractional. ``grad_clip`` caps the global gradient norm when set.
    """

    epochs: int
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    adv: AdvMode = AdvMode.NONE
    eps: float = 2 / 255
    steps: int = 10
    step_size: float | None = None
    seed: int = 0
    augment: bool = True
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "adv", AdvMode.parse(self.adv))
        if self.epochs < 1:
            raise ConfigError(f"invalid number of epochs {self.epochs}: expected at least 1")
        if self.batch_size < 1:
            raise ConfigError(f"invalid batch size {self.batch_size}: expected at least 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"invalid learning rate {self.lr}: expected a positive number")
        if self.weight_decay < 0:
            raise ConfigError(f"invalid weight decay {self.weight_decay}: expected 0 or more")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise ConfigError(
                f"invalid warm-up of {self.warmup_epochs} epochs: expected between 0 and epochs={self.epochs}"
            )
        if not 0 <= self.eps <= 1:
            raise ConfigError(f"invalid eps {self.eps}: expected a radius in [0, 1] pixel scale, e.g. 2/255")
        if self.adv is not AdvMode.NONE and self.eps == 0:
            raise ConfigError(f"adversarial training mode {self.adv.value!r} needs eps > 0, e.g. 2/255")
        if self.steps < 1:
            raise ConfigError(f"invalid number of attack steps {self.steps}: expected at least 1")
        if self.step_size is not None and self.step_size <= 0:
            raise ConfigError(f"invalid attack step size {self.step_size}: expected a positive number")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"invalid gradient clipping norm {self.grad_clip}: expected a positive number")

    def attack_step_size(self) -> float:
        """Return the signed-gradient step of the adversarial mode, in pixel scale."""
        if self.step_size is not None:
            return self.step_size
        if self.adv is AdvMode.FGSM_RS:
            return 1.25 * self.eps
        return 2.5 * self.eps / self.steps

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["adv"] = self.adv.value
        return payload


@dataclass(frozen=True)
class EpochRecord:
    """Measurements of one finished epoch: mean training loss and penalty over its batches,
    the learning rate at its last step, its wall time in seconds, and ``eval_fn``'s metrics."""

    epoch: int
    loss: float
    penalty: float
    lr: float
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Return the learning rate at optimizer step ``step`` (0-based): linear warm-up, then cosine to 0."""
    total = config.epochs * steps_per_epoch
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def augment_batch(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Randomly crop N×C×H×W images after zero-padding 4 pixels per side, then flip half horizontally."""
    n, _, height, width = images.shape
    padded = nn.functional.pad(images, (CROP_PADDING,) * 4)
    top = torch.randint(0, 2 * CROP_PADDING + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * CROP_PADDING + 1, (n,), generator=generator)
    rows = (top[:, None] + torch.arange(height)[None, :])[:, None, :, None]
    cols = (left[:, None] + torch.arange(width)[None, :])[:, None, None, :]
    batch_index = torch.arange(n)[:, None, None, None]
    channel_index = torch.arange(images.shape[1])[None, :, None, None]
    cropped = padded[batch_index, channel_index, rows, cols]
    flip = torch.rand(n, generator=generator) < 0.5
    cropped[flip] = cropped[flip].flip(-1)
    return cropped


def _uniform_start(x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1
    return (noise.to(x.device) * eps).requires_grad_(True)


def make_adversarial(
    model: nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor, config: TrainConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """Return Linf adversarial examples (same shape as ``x``, in [0, 1]) that raise ``loss_fn``.

    Follows ``config.adv`` (see the module docstring). Gradients go to the perturbation only,
    so the model's parameter gradients are left untouched.
    """
    eps, alpha = config.eps, config.attack_step_size()
    delta = _uniform_start(x, eps, generator)
    iterations = 1 if config.adv is AdvMode.FGSM_RS else config.steps
    for _ in range(iterations):
        loss = loss_fn(model, (x + delta).clamp(0, 1), y)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = (delta + alpha * grad.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
        delta.requires_grad_(True)
    return (x + delta.detach()).clamp(0, 1)


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # Seeding per epoch makes a resumed run draw the same numbers as an uninterrupted one.
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _as_float_images(batch: torch.Tensor) -> torch.Tensor:
    if batch.dtype == torch.uint8:
        return batch.float().div_(255)
    return batch.float()


def _check_data(images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.ndim != 4:
        raise ConfigError(f"training images must be N×C×H×W, got shape {tuple(images.shape)}")
    if labels.shape != (images.shape[0],):
        raise ConfigError(
            f"got {tuple(labels.shape)} labels for {images.shape[0]} training images; expected one label per image"
        )
    if images.shape[0] == 0:
        raise ConfigError("the training set is empty; pass at least one image")


def _save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    with atomic_output(path) as temporary:
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, temporary, metadata=metadata)


def save_model_weights(model: nn.Module, path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> None:
    """Write ``model``'s state dict to a safetensors file through an atomic rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _save_safetensors_atomic(dict(model.state_dict()), target, metadata)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in extra.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": extra["param_groups"]})


def _write_checkpoint(
    out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig, n_images: int,
    history: list[EpochRecord],
) -> None:
    save_model_weights(model, out_dir / MODEL_FILE)
    tensors, extra = _optimizer_tensors(optimizer)
    _save_safetensors_atomic(tensors, out_dir / OPTIMIZER_FILE)
    # training.json is written last: it names the finished epoch only once both weight files are complete.
    write_json_atomic(out_dir / STATE_FILE, {
        "format_version": STATE_FORMAT_VERSION,
        "finished_epochs": len(history),
        "n_images": n_images,
        "config": config.to_json(),
        "optimizer": extra,
        "history": [asdict(record) for record in history],
    })


def _load_checkpoint(
    out_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig, n_images: int
) -> list[EpochRecord]:
    state_path = out_dir / STATE_FILE
    if not state_path.is_file():
        logger.info("no checkpoint in %s yet; starting from epoch 1", out_dir)
        return []
    try:
        state = json.loads(state_path.read_text())
        saved = dict(state["config"])
        history = [EpochRecord(**record) for record in state["history"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"failed to read training state {state_path}: {exc}; delete {out_dir} to start over") from None
    differing = sorted(key for key, value in config.to_json().items() if saved.get(key) != value)
    if differing:
        details = ", ".join(f"{key}: {saved.get(key)!r} -> {config.to_json()[key]!r}" for key in differing)
        raise ConfigError(
            f"cannot resume from {out_dir}: the training settings differ from the checkpoint's ({details}); "
            "rerun with the original settings or choose a new output folder"
        )
    if state.get("n_images", n_images) != n_images:
        raise ConfigError(
            f"cannot resume from {out_dir}: it was trained on {state['n_images']} images, not {n_images}; "
            "rerun with the original training set or choose a new output folder"
        )
    try:
        weights = load_file(str(out_dir / MODEL_FILE))
        optimizer_tensors = load_file(str(out_dir / OPTIMIZER_FILE))
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(f"failed to read checkpoint in {out_dir}: {exc}; delete the folder to start over") from None
    model.load_state_dict(weights, strict=True)
    _restore_optimizer(optimizer, optimizer_tensors, state["optimizer"])
    logger.info("resumed from %s after epoch %d of %d", out_dir, len(history), config.epochs)
    return history


def _run_epoch(
    model: nn.Module, loss_fn: LossFn, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig,
    optimizer: torch.optim.Optimizer, epoch: int, penalty: PenaltyFn | None, device: torch.device,
    progress: bool,
) -> tuple[float, float, float]:
    """Train one epoch (1-based ``epoch``); return the mean loss, mean penalty and last learning rate."""
    generator = _epoch_generator(config.seed, epoch)
    torch.manual_seed(config.seed * 1_000_003 + epoch)  # dropout and other global-RNG layers
    order = torch.randperm(images.shape[0], generator=generator)
    steps_per_epoch = math.ceil(images.shape[0] / config.batch_size)
    model.train()
    total_loss = total_penalty = 0.0
    lr = config.lr
    batches = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{config.epochs}", disable=not progress, leave=False)
    for step in batches:
        index = order[step * config.batch_size : (step + 1) * config.batch_size]
        x = _as_float_images(images[index])
        if config.augment:
            x = augment_batch(x, generator)
        x, y = x.to(device), labels[index].to(device)
        if config.adv is not AdvMode.NONE:
            x = make_adversarial(model, loss_fn, x, y, config, generator)

        lr = learning_rate(config, (epoch - 1) * steps_per_epoch + step, steps_per_epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = loss_fn(model, x, y)
        objective = loss
        penalty_value = 0.0
        if penalty is not None:
            extra = penalty(model)
            objective = objective + extra
            penalty_value = float(extra.detach())
        if not torch.isfinite(objective):
            raise FloatingPointError(
                f"training loss became {float(objective)} at epoch {epoch}, step {step + 1}; lower the learning rate"
            )
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        total_loss += float(loss.detach())
        total_penalty += penalty_value
        batches.set_postfix(loss=f"{total_loss / (step + 1):.4f}")
    return total_loss / steps_per_epoch, total_penalty / steps_per_epoch, lr


def train(
    model: nn.Module,
    loss_fn: LossFn,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    penalty: PenaltyFn | None = None,
    eval_fn: EvalFn | None = None,
    on_epoch_end: EpochCallback | None = None,
    device: torch.device | None = None,
    progress: bool = True,
) -> list[EpochRecord]:
    """Train ``model`` in place and return one :class:`EpochRecord` per finished epoch.

    ``images``: N×3×H×W, float in [0, 1] or uint8 in [0, 255] (converted per batch, which
    saves memory). ``labels``: int64 N. ``loss_fn(model, x, y)`` returns the scalar training
    loss, and adversarial examples are made against it. ``penalty(model)`` returns a scalar
    added to the loss (e.g. a group-lasso term); it is not part of the attacked loss.
    ``eval_fn(model)`` runs after each epoch in eval mode without gradients, and its metrics
    go into the record and the log line. ``on_epoch_end(record, model)`` runs after the
    checkpoint of that epoch is written.

    With ``out_dir``, every finished epoch is checkpointed there. ``resume=True`` loads the
    checkpoint, which must come from the same :class:`TrainConfig`, and continues after its
    last finished epoch (the returned history includes the earlier epochs). Without
    ``resume``, an ``out_dir`` that already contains a checkpoint is an error, so no run is
    overwritten by accident.
    """
    _check_data(images, labels)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if not trainable:
        raise ConfigError(
            "the model has no parameter with requires_grad=True, so training would change nothing; "
            "call parameter.requires_grad_(True) on the parameters to train (loaded pool members come frozen)"
        )
    device = device or trainable[0].device
    model.to(device)
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)

    history: list[EpochRecord] = []
    folder = Path(out_dir) if out_dir is not None else None
    if folder is not None:
        if resume:
            history = _load_checkpoint(folder, model, optimizer, config, images.shape[0])
        elif (folder / STATE_FILE).exists():
            raise ConfigError(
                f"{folder} already contains a training checkpoint; resume it (--resume) or choose another output folder"
            )
        folder.mkdir(parents=True, exist_ok=True)
    elif resume:
        raise ConfigError("resume needs the output folder that contains the checkpoint; pass out_dir")

    logger.info(
        "training on %d images for %d epochs (adv=%s, eps=%.5f, batch size %d, lr %g)",
        images.shape[0], config.epochs, config.adv.value, config.eps, config.batch_size, config.lr,
    )
    for epoch in range(len(history) + 1, config.epochs + 1):
        started = time.perf_counter()
        loss, penalty_mean, lr = _run_epoch(
            model, loss_fn, images, labels, config, optimizer, epoch, penalty, device, progress
        )
        metrics: dict[str, float] = {}
        if eval_fn is not None:
            model.eval()
            with torch.no_grad():
                metrics = {key: float(value) for key, value in eval_fn(model).items()}
            model.train()
        record = EpochRecord(epoch, loss, penalty_mean, lr, time.perf_counter() - started, metrics)
        history.append(record)
        metric_text = " ".join(f"{key}={value:.4f}" for key, value in metrics.items())
        logger.info("epoch %d/%d loss=%.4f penalty=%.4g lr=%.3g time=%.0fs %s",
                    epoch, config.epochs, loss, penalty_mean, lr, record.seconds, metric_text)
        if folder is not None:
            _write_checkpoint(folder, model, optimizer, config, images.shape[0], history)
        if on_epoch_end is not None:
            on_epoch_end(record, model)
    model.eval()
    return history
