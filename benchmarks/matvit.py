"""Parameter count and forward time of the S, M, L and XL submodels of a MatViT, relative to XL.

Usage::

    python benchmarks/matvit.py [--checkpoint zoo/matvit_cifar10.safetensors] [--batch-size 256]
                                [--repeats 10] [--threads 1]

Each granularity is extracted into a standalone model, then timed on one batch of random
32×32 images (the content does not change the cost). The reported time is the median of
``--repeats`` forward passes after one warm-up pass, in milliseconds per batch.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from robustvote.matformer import ALL_GRANULARITIES
from robustvote.matformer.checkpoint import load_matvit
from robustvote.matformer.extract import count_parameters, extract_submodel

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent.parent / "zoo" / "matvit_cifar10.safetensors"


def time_forward(model: torch.nn.Module, images: torch.Tensor, repeats: int) -> float:
    """Return the median wall time of one forward pass over ``images``, in milliseconds."""
    timings = []
    with torch.no_grad():
        model(images)
        for _ in range(repeats):
            started = time.perf_counter()
            model(images)
            timings.append(1000 * (time.perf_counter() - started))
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="Nested MatViT .safetensors file.")
    parser.add_argument("--batch-size", type=int, default=256, help="Images per timed forward pass.")
    parser.add_argument("--repeats", type=int, default=10, help="Timed passes per granularity.")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch.")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    nested = load_matvit(args.checkpoint)
    images = torch.rand(args.batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    rows = []
    for granularity in ALL_GRANULARITIES:
        submodel = extract_submodel(nested, granularity)
        rows.append((granularity.value, count_parameters(submodel), time_forward(submodel, images, args.repeats)))

    xl_parameters, xl_time = rows[-1][1], rows[-1][2]
    print(f"checkpoint {args.checkpoint}, batch {args.batch_size}, {args.threads} thread(s), "
          f"median of {args.repeats} passes, torch {torch.__version__}")
    print(f"{'granularity':<12}{'parameters':>12}{'rel. XL':>9}{'ms/batch':>11}{'rel. XL':>9}")
    for name, parameters, milliseconds in rows:
        print(f"{name:<12}{parameters:>12}{parameters / xl_parameters:>9.3f}{milliseconds:>11.1f}{milliseconds / xl_time:>9.3f}")


if __name__ == "__main__":
    main()
