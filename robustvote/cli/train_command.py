"""``robustvote train``: train models; ``robustvote train matvit`` trains a nested MatViT."""

from __future__ import annotations

import click
import torch

from robustvote.matformer.model import STEMS, MatViTConfig
from robustvote.matformer.train import DEFAULT_HOLDOUT, split_training_set, train_matvit
from robustvote.cli.options import adversarial_training_options
from robustvote.threat import format_eps
from robustvote.training import AdvMode, EpochRecord, TrainConfig


def _echo_epoch(record: EpochRecord, model: torch.nn.Module) -> None:
    parts = [f"epoch {record.epoch}", f"train_loss={record.loss:.4f}", f"lr={record.lr:.2e}", f"time={record.seconds:.0f}s"]
    for letter in ("S", "M", "L", "XL"):
        loss, acc = record.metrics.get(f"loss_{letter}"), record.metrics.get(f"acc_{letter}")
        if loss is not None and acc is not None:
            parts.append(f"{letter}: loss={loss:.4f} acc={100 * acc:.1f}%")
    click.echo("  ".join(parts), err=True)


@click.group("train")
def train_group() -> None:
    """Train models for a pool."""


@train_group.command("matvit")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False, path_type=str),
              help="Folder with CIFAR-10 train.npz or cifar-10-batches-py (default: $ROBUSTVOTE_DATA_DIR, else the download cache).")
@click.option("--epochs", required=True, type=int, help="Number of epochs.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Output folder: model.safetensors and model.json (the checkpoint), optimizer.safetensors, training.json.")
@adversarial_training_options
@click.option("--steps", default=10, show_default=True, type=int, help="PGD steps per batch (with --adv pgd).")
@click.option("--dim", default=128, show_default=True, type=int, help="Token width.")
@click.option("--depth", default=6, show_default=True, type=int, help="Number of transformer blocks.")
@click.option("--heads", default=4, show_default=True, type=int, help="Attention heads per block.")
@click.option("--d-ff", "d_ff", default=512, show_default=True, type=int, help="Full (XL) FFN hidden width, a multiple of 8.")
@click.option("--patch", default=4, show_default=True, type=int, help="Patch size in pixels.")
@click.option("--stem", default="patch", show_default=True, type=click.Choice(STEMS),
              help="Token embedding: one strided convolution (patch) or a convolutional stem (conv, patch a power of two).")
@click.option("--n-train", default=None, type=int, help="Training images after shuffling (default: all that are not held out).")
@click.option("--holdout", default=DEFAULT_HOLDOUT, show_default=True, type=int,
              help="Shuffled training images held out for the per-epoch accuracy of each granularity.")
@click.option("--batch-size", default=128, show_default=True, type=int, help="Images per optimizer step.")
@click.option("--lr", default=1e-3, show_default=True, type=float, help="Peak AdamW learning rate.")
@click.option("--weight-decay", default=0.05, show_default=True, type=float, help="AdamW weight decay.")
@click.option("--warmup-epochs", default=1.0, show_default=True, type=float, help="Epochs of linear learning-rate warm-up before the cosine decay.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the shuffle, initialization, augmentation and random starts.")
@click.option("--threads", default=None, type=int, help="CPU threads for torch (default: torch's choice).")
@click.option("--resume", is_flag=True, help="Continue the run in --out after its last finished epoch.")
def matvit_command(data_dir: str | None, epochs: int, out_dir: str, adv: str, eps: float, steps: int, dim: int,
                   depth: int, heads: int, d_ff: int, patch: int, stem: str, n_train: int | None, holdout: int, batch_size: int,
                   lr: float, weight_decay: float, warmup_epochs: float, seed: int, threads: int | None,
                   resume: bool) -> None:
    """Train a MatViT on CIFAR-10, summing the loss of its S, M, L and XL granularities.

    Prints one line per epoch with the training loss and the held-out loss and clean
    accuracy of each granularity.
    """
    if threads is not None:
        if threads < 1:
            raise click.BadParameter(f"expected at least 1 thread, got {threads}", param_hint="--threads")
        torch.set_num_threads(threads)
    model_config = MatViTConfig(dim=dim, depth=depth, heads=heads, d_ff=d_ff, patch=patch, stem=stem)
    train_config = TrainConfig(
        epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
        adv=AdvMode(adv), eps=eps, steps=steps, seed=seed,
    )
    split = split_training_set(data_dir, seed, n_train, holdout)
    click.echo(
        f"training MatViT dim={dim} depth={depth} heads={heads} d_ff={d_ff} patch={patch} stem={stem} on "
        f"{split.train_labels.shape[0]} images, adv={adv} eps={format_eps(eps)}, {epochs} epochs -> {out_dir}",
        err=True,
    )
    train_matvit(model_config, train_config, split, out_dir, resume=resume, on_epoch_end=_echo_epoch)
    click.echo(f"{out_dir}/model.safetensors")
