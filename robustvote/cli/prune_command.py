"""``robustvote prune``: group-lasso training, greedy pruning of hidden units, fine-tuning."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import click
import torch

from robustvote.cli.options import adversarial_training_options, device_options
from robustvote.data import load_cifar10
from robustvote.errors import ConfigError
from robustvote.evaluation import evaluate_clean, resolve_device
from robustvote.io import check_writable, write_json_atomic
from robustvote.matformer.train import split_training_set
from robustvote.pruning.groups import GroupLasso, UnitGroup
from robustvote.pruning.member import check_prunable, prune_member, trainable, write_pruned_member
from robustvote.pruning.prune import PruneRule, count_parameters
from robustvote.threat import Norm, ThreatModel, format_eps
from robustvote.training import AdvMode, TrainConfig
from robustvote.zoo import MemberSpec, load_member, load_pool_file
from robustvote.zoo.spec import NUM_CLASSES, parse_member

logger = logging.getLogger(__name__)


def _resolve_member(pool_path: str | None, member: str | None, checkpoint: str | None, architecture: str | None,
                    arch_kwargs: str | None, key: str | None, mean: str | None, std: str | None
                    ) -> tuple[MemberSpec, ThreatModel | None]:
    """Return the member to prune and the pool's threat model (``None`` for a bare checkpoint)."""
    if (pool_path is None) == (checkpoint is None):
        raise ConfigError("name the model to prune with either --pool and --member, or --checkpoint and --architecture")
    if pool_path is not None:
        if member is None:
            raise ConfigError("--pool needs --member NAME, the member to prune")
        pool = load_pool_file(pool_path)
        return pool.subset([member]).members[0], pool.threat_model
    if architecture is None:
        raise ConfigError("--checkpoint needs --architecture module:function, the factory that builds the model")
    raw: dict[str, object] = {
        "name": member or Path(str(checkpoint)).stem, "source": "state_dict", "path": checkpoint,
        "architecture": architecture, "key": key,
    }
    if arch_kwargs:
        try:
            raw["arch_kwargs"] = json.loads(arch_kwargs)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--arch-kwargs {arch_kwargs!r} is not valid JSON ({exc.msg}); write e.g. '{{\"width\": 100}}'") from None
    if (mean is None) != (std is None):
        raise ConfigError("--mean and --std go together; give both or neither")
    if mean is not None:
        raw["normalize"] = {"mean": mean.split(","), "std": str(std).split(",")}
    return parse_member(raw, 0, Path.cwd(), "--checkpoint"), None


def _clean_accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                    device: torch.device) -> float:
    result = evaluate_clean([model], ["model"], images, labels, num_classes=NUM_CLASSES["cifar10"], batch_size=batch_size, device=device)
    return result.member_accuracy()["model"]


@click.command("prune")
@click.option("--pool", "pool_path", default=None, type=click.Path(dir_okay=False, path_type=str),
              help="Pool file that lists the member to prune (with --member).")
@click.option("--member", default=None, help="Name of the member to prune; with --checkpoint, the name of the result's source.")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False, path_type=str),
              help="A state-dict checkpoint to prune instead of a pool member (with --architecture).")
@click.option("--architecture", default=None, help="Factory module:function that builds the --checkpoint model.")
@click.option("--arch-kwargs", default=None, help="JSON object of factory arguments for --checkpoint, e.g. '{\"width\": 100}'.")
@click.option("--key", default=None, help="Dotted path of the state dict inside --checkpoint, e.g. state_dict.0.")
@click.option("--mean", default=None, help="Per-channel normalization mean of --checkpoint, e.g. 0.4914,0.4822,0.4465.")
@click.option("--std", default=None, help="Per-channel normalization std of --checkpoint.")
@click.option("--layers", "layer_pairs", multiple=True, required=True,
              help="Layer pair FIRST,SECOND=WIDTH_ARG whose hidden units are pruned (module paths; repeatable), "
                   "e.g. 5,7=width for the hidden layer of robustvote.zoo.architectures:cnn_a.")
@click.option("--lam", required=True, type=float, help="Group-lasso strength added to the loss during --train-epochs.")
@click.option("--lasso-eps", default=1e-3, show_default=True, type=float,
              help="Smoothing of the group lasso: sqrt(||w||^2 + eps^2) per unit.")
@click.option("--threshold", default=None, type=float,
              help="Drop units whose norm is below this, a fraction of the largest norm with --relative.")
@click.option("--relative/--absolute", default=True, show_default=True, help="Read --threshold relative to the largest unit norm.")
@click.option("--target-width", default=None, type=int, help="Keep at most this many units per pair, the largest first.")
@click.option("--train-epochs", default=1, show_default=True, type=int, help="Epochs with the penalty before pruning (0 skips).")
@click.option("--finetune-epochs", default=1, show_default=True, type=int, help="Epochs without the penalty after pruning (0 skips).")
@click.option("--lr", default=1e-3, show_default=True, type=float, help="Peak AdamW learning rate of both phases.")
@click.option("--weight-decay", default=0.0, show_default=True, type=float, help="AdamW weight decay of both phases.")
@adversarial_training_options
@click.option("--n-train", default=10000, show_default=True, type=int, help="Shuffled CIFAR-10 training images used.")
@click.option("--train-batch-size", default=128, show_default=True, type=int, help="Images per optimizer step.")
@click.option("--n", "n_test", default=1000, show_default=True, type=int, help="Test images (from index 0) for clean accuracy.")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False, path_type=str),
              help="Folder with CIFAR-10 train.npz/test.npz (default: $ROBUSTVOTE_DATA_DIR, else the download cache).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the shuffle and of training.")
@click.option("--name", default=None, help="Member name of the result (default: source name with its widths).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output weights (.safetensors); a one-member pool file (.yaml) and a report (.json) go beside it.")
@device_options
def prune_command(pool_path: str | None, member: str | None, checkpoint: str | None, architecture: str | None,
                  arch_kwargs: str | None, key: str | None, mean: str | None, std: str | None,
                  layer_pairs: tuple[str, ...], lam: float, lasso_eps: float, threshold: float | None, relative: bool,
                  target_width: int | None, train_epochs: int, finetune_epochs: int, lr: float, weight_decay: float,
                  adv: str, eps: float, n_train: int, train_batch_size: int, n_test: int, data_dir: str | None,
                  seed: int, name: str | None, out_path: Path, device: str, batch_size: int) -> None:
    """Train a member with a group-lasso penalty on its hidden units, prune the weak units, fine-tune.

    The pruned layers are rebuilt physically smaller. Writes the weights to --out, and a
    pool file with the pruned member and a JSON report beside them. Prints widths,
    parameter counts and clean accuracy before and after.
    """
    groups = tuple(UnitGroup.parse(text) for text in layer_pairs)
    spec, pool_threat = _resolve_member(pool_path, member, checkpoint, architecture, arch_kwargs, key, mean, std)
    check_prunable(spec, groups)
    lasso = GroupLasso(groups, lam, lasso_eps)
    rule = PruneRule(threshold, relative, target_width)
    if out_path.suffix != ".safetensors":
        raise ConfigError(f"--out {out_path} must end in .safetensors")
    check_writable(out_path, "--out")
    for label, epochs in (("--train-epochs", train_epochs), ("--finetune-epochs", finetune_epochs)):
        if epochs < 0:
            raise ConfigError(f"invalid {label} {epochs}: expected 0 or more")

    def phase(epochs: int) -> TrainConfig | None:
        if epochs == 0:
            return None
        return TrainConfig(epochs=epochs, batch_size=train_batch_size, lr=lr, weight_decay=weight_decay,
                           warmup_epochs=min(1.0, epochs / 4), adv=AdvMode(adv), eps=eps, seed=seed)

    penalty_config, finetune_config = phase(train_epochs), phase(finetune_epochs)
    torch_device = resolve_device(device)
    split = split_training_set(data_dir, seed, n_train, holdout=1)
    test = load_cifar10("test", 0, n_test, data_dir)

    loaded = load_member(spec)
    original_parameters = count_parameters(loaded.model.model)
    original_accuracy = _clean_accuracy(loaded.model, test.images, test.labels, batch_size, torch_device)
    started = time.perf_counter()
    outcome = prune_member(
        trainable(loaded), lasso, rule, split.train_images, split.train_labels,
        penalty_config=penalty_config, finetune_config=finetune_config, device=torch_device,
    )
    pruned_accuracy = _clean_accuracy(outcome.model, test.images, test.labels, batch_size, torch_device)

    widths = "-".join(str(g.width_after) for g in outcome.pruning.groups)
    member_name = name or f"{spec.name}_pruned{widths}"
    threat = pool_threat or ThreatModel(Norm.LINF, eps)
    pool_file = out_path.with_suffix(".yaml")
    entry = write_pruned_member(outcome.model, spec, outcome.pruning, member_name, out_path, pool_file, threat)

    report = {
        "source": spec.name, "name": member_name, "weights": str(out_path), "pool_file": str(pool_file),
        "sha256": entry["sha256"], "arch_kwargs": entry["arch_kwargs"],
        "groups": [
            {"pair": str(g.group), "width_before": g.width_before, "width_after": g.width_after,
             "kept_units": g.kept.tolist(), "norms": [round(float(v), 6) for v in g.norms]}
            for g in outcome.pruning.groups
        ],
        "parameters_before": original_parameters, "parameters_after": count_parameters(outcome.model.model),
        "lam": lam, "lasso_eps": lasso_eps, "threshold": threshold, "relative": relative, "target_width": target_width,
        "penalty_training": penalty_config.to_json() if penalty_config else None,
        "finetuning": finetune_config.to_json() if finetune_config else None,
        "penalty_history": [record.__dict__ for record in outcome.penalty_history],
        "finetune_history": [record.__dict__ for record in outcome.finetune_history],
        "n_train": n_train, "seed": seed, "test_indices": f"test[0:{n_test}]",
        "clean_accuracy_before": original_accuracy, "clean_accuracy_after": pruned_accuracy,
        "runtime_s": time.perf_counter() - started,
    }
    write_json_atomic(out_path.with_suffix(".json"), report)

    click.echo(f"pruned {spec.name} -> {member_name} ({format_eps(eps)} {adv} training, lam={lam:g})")
    for group in report["groups"]:
        click.echo(f"  layers {group['pair']}: {group['width_before']} -> {group['width_after']} units")
    click.echo(f"  parameters: {report['parameters_before']} -> {report['parameters_after']}")
    click.echo(f"  clean accuracy on {report['test_indices']}: "
               f"{100 * original_accuracy:.2f}% -> {100 * pruned_accuracy:.2f}%")
    click.echo(f"  wrote {out_path}, {pool_file} and {out_path.with_suffix('.json')}")
