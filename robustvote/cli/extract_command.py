"""``robustvote extract``: slice a nested MatViT checkpoint into a standalone submodel."""

from __future__ import annotations

import logging

import click

from robustvote.matformer.checkpoint import load_matvit, save_matvit
from robustvote.matformer.extract import count_parameters, extract_submodel

logger = logging.getLogger(__name__)


@click.command("extract")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Nested MatViT weights (.safetensors with its .json config beside it).")
@click.option("--granularity", required=True,
              help="One of S, M, L, XL for every layer, or one letter per layer, e.g. S,M,L,XL.")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Output .safetensors file; its .json config is written beside it.")
def extract_command(checkpoint: str, granularity: str, out_path: str) -> None:
    """Write the submodel of one granularity (Mix'n'Match) as a standalone MatViT.

    The extracted model keeps only the first hidden units of each FFN and returns the same
    logits as the nested model at that granularity. Prints its parameter count.
    """
    nested = load_matvit(checkpoint)
    submodel = extract_submodel(nested, granularity)
    save_matvit(submodel, out_path, {"extracted_from": checkpoint})
    parameters, total = count_parameters(submodel), count_parameters(nested)
    logger.info("wrote %s", out_path)
    click.echo(
        f"{out_path}: granularity {','.join(submodel.config.granularity or ())}, "
        f"{parameters} parameters ({100 * parameters / total:.1f}% of the nested model's {total})"
    )
