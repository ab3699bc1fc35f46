"""``robustvote select``: attack each member alone, measure diversity, rank odd-size subsets."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from robustvote.cli.options import data_options, device_options, pool_option
from robustvote.data import load_cifar10
from robustvote.errors import ConfigError
from robustvote.evaluation import resolve_device
from robustvote.selection import (
    MatrixSetup,
    build_matrix,
    check_size,
    data_digest,
    format_table,
    make_member_attacker,
    measure_diversity,
    search_size,
    write_diversity_csv,
    write_heatmap,
    write_selection,
)
from robustvote.selection.search import DEFAULT_BEAM_WIDTH, DEFAULT_MAX_EXHAUSTIVE
from robustvote.zoo import load_members, load_pool_file

logger = logging.getLogger(__name__)

DEFAULT_SUITE = "apgd-ce,apgd-t"
SELECTION_START = 5000
DEFAULT_SIZES = (3, 5, 7)


def parse_sizes(text: str | None, pool_size: int) -> list[int]:
    """Parse ``3,5,7`` into checked odd sizes; ``None`` means 3, 5 and 7 up to the pool size."""
    if text is None:
        sizes = [size for size in DEFAULT_SIZES if size <= pool_size]
        if not sizes:
            raise ConfigError(
                f"the pool has {pool_size} member(s), too few for a vote of 3; add members to the pool"
            )
        return sizes
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(f"invalid --sizes {text!r}: expected comma-separated odd integers such as 3,5,7") from None
    if not sizes:
        raise ConfigError(f"--sizes {text!r} names no size; give comma-separated odd integers such as 3,5,7")
    for size in sizes:
        check_size(size, pool_size)
    return sizes


def resolve_suite(text: str):
    """Load a suite file (a path to ``.yaml``/``.yml`` or an existing file) or build one from names."""
    from robustvote.attacks import load_suite, suite_from_names

    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        return load_suite(text)
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ConfigError(f"--suite {text!r} names no attack; give a suite file or names such as {DEFAULT_SUITE}")
    return suite_from_names(names)


def warn_on_overlap(split: str, start: int, n: int, eval_start: int, eval_n: int) -> None:
    """Warn when the selection slice shares images with the planned evaluation slice (test split)."""
    if split != "test":
        return
    overlap = min(start + n, eval_start + eval_n) - max(start, eval_start)
    if overlap > 0:
        logger.warning(
            "the selection slice test[%d:%d] shares %d images with the evaluation slice test[%d:%d]; "
            "subsets chosen on those images look better there than they are, so choose --start "
            "outside the evaluation slice",
            start, start + n, overlap, eval_start, eval_start + eval_n,
        )


@click.command("select")
@pool_option
@click.option("--sizes", default=None,
              help="Comma-separated odd subset sizes [default: 3,5,7 up to the pool size].")
@click.option("--suite", "suite_text", default=DEFAULT_SUITE, show_default=True,
              help="Attacks run on each member alone: a suite file (attacks/*.yaml) or comma-separated attack names.")
@data_options(default_n=500, default_start=SELECTION_START)
@click.option("--eval-start", default=0, show_default=True, type=int,
              help="First test image of the slice you will evaluate on; the selection slice should not overlap it.")
@click.option("--eval-n", default=1000, show_default=True, type=int,
              help="Number of test images you will evaluate on.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the attacks.")
@device_options
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False, path_type=str),
              help="Output folder [default: selection-<pool file name> in the current folder].")
@click.option("--top", default=5, show_default=True, type=click.IntRange(min=1),
              help="Subsets reported per size.")
@click.option("--max-exhaustive", default=DEFAULT_MAX_EXHAUSTIVE, show_default=True, type=click.IntRange(min=1),
              help="Largest number of subsets of one size that is searched exhaustively; beyond it, beam search.")
@click.option("--beam-width", default=DEFAULT_BEAM_WIDTH, show_default=True, type=click.IntRange(min=1),
              help="Subsets kept per step of beam search.")
@click.option("--recompute", is_flag=True,
              help="Attack every member again and replace a cached robustness matrix made with another setup.")
def select_command(pool_path: str, sizes: str | None, suite_text: str, data_dir: str | None, split: str,
                   start: int, n: int, eval_start: int, eval_n: int, seed: int, device: str, batch_size: int,
                   out_dir: str | None, top: int, max_exhaustive: int, beam_width: int, recompute: bool) -> None:
    """Choose members for a majority vote from how each member fails under attack.

    Each member is attacked on its own on the selection slice (default test[5000:5500]); the
    robustness matrix is cached in the output folder and reused for members that did not
    change. Subsets of each odd size are ranked by the fraction of examples on which a majority
    of them is individually robust, ties broken by the clean accuracy of their vote. Writes
    subsets.csv, members.csv, pairs.csv, heatmap.png, selection.json and best_k<size>.yaml.
    """
    pool = load_pool_file(pool_path)
    size_list = parse_sizes(sizes, len(pool.members))
    suite = resolve_suite(suite_text)
    out = Path(out_dir) if out_dir else Path(f"selection-{Path(pool_path).stem}")
    warn_on_overlap(split, start, n, eval_start, eval_n)

    data = load_cifar10(split, start, n, data_dir)
    setup = MatrixSetup(
        dataset=pool.dataset,
        norm=pool.threat_model.norm.value,
        eps=pool.threat_model.eps,
        split=data.split.value,
        start=start,
        n=len(data),
        data_sha256=data_digest(data),
        suite=suite.to_dict()["attacks"],
        seed=seed,
    )
    members = load_members(pool)
    attacker = make_member_attacker(
        suite, pool.threat_model, seed=seed, batch_size=batch_size, device=resolve_device(device)
    )
    build = build_matrix(members, data, setup, attacker, cache_path=out / "matrix.json", recompute=recompute)
    matrix = build.matrix

    diversity = measure_diversity(matrix.names, matrix.robust, matrix.clean_correct, matrix.adv_labels, matrix.labels)
    write_diversity_csv(diversity, out / "members.csv", out / "pairs.csv")
    write_heatmap(diversity, out / "heatmap.png",
                  title=f"{Path(pool_path).name}: {pool.threat_model} on {setup.data_indices}, {' + '.join(suite.names)}")

    searches = [
        search_size(matrix.robust, matrix.clean_predictions, matrix.labels, size, num_classes=pool.num_classes,
                    top=top, max_exhaustive=max_exhaustive, beam_width=beam_width)
        for size in size_list
    ]
    rows = write_selection(out, pool, matrix, searches, diversity, attacked=build.attacked, reused=build.reused)

    click.echo(f"robustness matrix: {len(build.attacked)} member(s) attacked, {len(build.reused)} reused "
               f"({setup.data_indices}, {pool.threat_model}, {' + '.join(suite.names)})")
    click.echo(format_table(rows))
    click.echo(f"wrote {out}")
