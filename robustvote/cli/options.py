"""Options shared by several commands, defined once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from robustvote.errors import ConfigError
from robustvote.evaluation import resolve_device
from robustvote.io import check_writable
from robustvote.threat import parse_eps

F = TypeVar("F", bound=Callable[..., Any])


def _compose(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


pool_option = click.option(
    "--pool", "pool_path", required=True, type=click.Path(dir_okay=False, path_type=str),
    help="Pool file (YAML) listing the members.",
)
members_option = click.option(
    "--members", default=None, help="Comma-separated member names to use instead of the whole pool."
)


def _check_batch_size(ctx: click.Context, param: click.Parameter, value: int) -> int:
    if value < 1:
        raise click.BadParameter(f"expected a positive batch size, got {value}")
    return value


def _check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        device = resolve_device(value)
    except RuntimeError:
        raise click.BadParameter(f"unknown device {value!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise click.BadParameter(f"device {value!r} requested but CUDA is not available; use --device cpu")
    return value


def device_options(function: F) -> F:
    """Add ``--device`` and ``--batch-size``."""
    return _compose(
        click.option("--device", default="auto", show_default=True, callback=_check_device,
                     help="Torch device: auto picks CUDA when available, else CPU."),
        click.option("--batch-size", default=256, show_default=True, type=int, callback=_check_batch_size,
                     help="Images per forward pass."),
    )(function)


def data_options(default_n: int | None = 1000, default_start: int = 0, default_split: str = "test") -> Callable[[F], F]:
    """Add ``--data-dir``, ``--split``, ``--start`` and ``--n``."""
    return _compose(
        click.option("--data-dir", default=None, type=click.Path(file_okay=False, path_type=str),
                     help="Folder with CIFAR-10 as train.npz/test.npz or cifar-10-batches-py "
                          "(default: $ROBUSTVOTE_DATA_DIR, else the download cache)."),
        click.option("--split", default=default_split, show_default=True, type=click.Choice(["test", "train"]),
                     help="CIFAR-10 split."),
        click.option("--start", default=default_start, show_default=True, type=int, help="First image index."),
        click.option("--n", "n", default=default_n, show_default=True, type=int, help="Number of images."),
    )


def _check_csv(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        check_writable(value, "--csv")
    return value


csv_option = click.option(
    "--csv", "csv_path", default=None, type=click.Path(dir_okay=False, path_type=str), callback=_check_csv,
    help="Also write the table as CSV to this file (checked for writability before any work starts).",
)


def split_list(text: str, option: str) -> list[str]:
    """Split a comma-separated option value; an empty item is an error naming the option."""
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise ConfigError(f"{option} {text!r} has an empty item; separate values with single commas")
    return items


def parse_member_list(text: str | None) -> list[str] | None:
    """Split ``a,b,c`` into names; ``None`` means the whole pool."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ConfigError(f"--members {text!r} names no member; give comma-separated names")
    return names


def _parse_eps_option(ctx: click.Context, param: click.Parameter, value: str) -> float:
    return parse_eps(value)


def adversarial_training_options(function: F) -> F:
    """Add ``--adv`` and ``--eps`` for commands that train, with the modes of robustvote.training."""
    from robustvote.training import AdvMode

    return _compose(
        click.option("--adv", default="none", show_default=True, type=click.Choice([m.value for m in AdvMode]),
                     help="Adversarial training: fgsm-rs (FGSM from a random start, Wong et al. 2020) "
                          "or pgd (Madry et al. 2018)."),
        click.option("--eps", default="2/255", show_default=True, callback=_parse_eps_option,
                     help="Linf radius of adversarial training in [0, 1] pixel scale, e.g. 2/255."),
    )(function)
