"""``robustvote extract``: slice a nested MatViT checkpoint into a standalone submodel."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from robustvote.errors import ConfigError
from robustvote.matformer.checkpoint import config_path, load_matvit, save_matvit
from robustvote.matformer.extract import count_parameters, extract_submodel

logger = logging.getLogger(__name__)


@click.command("extract")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Nested MatViT weights (.safetensors with its .json config beside it).")
@click.option("--granularity", required=True,
              help="One of S, M, L, XL for every layer, or one letter per layer, e.g. S,M,L,XL.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Output .safetensors file; its .json config is written beside it.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def extract_command(checkpoint: str, granularity: str, out_path: str, force: bool) -> None:
    """Write the submodel of one granularity (Mix'n'Match) as a standalone MatViT.

    The extracted model keeps only the first hidden units of each FFN and returns the same
    logits as the nested model at that granularity. Prints its parameter count.
    """
    out = Path(out_path)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {out_path} must end in .safetensors; its .json config is written beside it")
    if out.exists() and out.resolve() == Path(checkpoint).resolve():
        raise ConfigError(f"--out {out_path} is the nested checkpoint itself; choose another file name")
    for existing in (out, config_path(out)):
        if existing.exists() and not force:
            raise ConfigError(f"{existing} already exists; pass --force to replace it, or choose another --out")
    nested = load_matvit(checkpoint)
    submodel = extract_submodel(nested, granularity)
    save_matvit(submodel, out_path, {"extracted_from": checkpoint})
    parameters, total = count_parameters(submodel), count_parameters(nested)
    logger.info("wrote %s", out_path)
    click.echo(
        f"{out_path}: granularity {','.join(submodel.config.granularity or ())}, "
        f"{parameters} parameters ({100 * parameters / total:.1f}% of the nested model's {total})"
    )
