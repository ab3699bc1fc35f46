"""Overparameterized matrix sensing: the setting in which greedy pruning provably works.

Rajaraman, Devvrit, Mokhtari and Ramchandran, "Greedy Pruning with Group Lasso Provably
Generalizes for Matrix Sensing" (NeurIPS 2023). A rank-r ground truth ``M* = U* U*^T`` (U*
is d×r with orthonormal columns) is observed through n symmetric Gaussian measurements
``y_i = <A_i, M*> + noise``. An overparameterized factor U (d×k, k > r) is fit by gradient
descent on ``(1/n) sum_i (<A_i, U U^T> - y_i)^2`` from a small random start. With a smooth
group-lasso penalty on the columns of U, only r columns keep a large norm, so dropping the
small ones and fine-tuning recovers M*; without it, the fit spreads over many columns of
comparable norm.

Errors are reported as root mean squared errors. Because ``<A, D>`` for the symmetric
Gaussian ``A = (G + G^T) / 2`` and a symmetric D is normal with variance ``||D||_F^2``, the
test error on fresh noiseless measurements is, in expectation, exactly
``||U U^T - M*||_F``, so it is computed in closed form instead of sampled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from robustvote.errors import ConfigError
from robustvote.pruning.prune import PruneRule, select_units

DTYPE = torch.float64


@dataclass(frozen=True)
class SensingProblem:
    """Ground truth and measurements.

    ``ground_truth`` is U* (d×r, orthonormal columns); ``measurements`` is A (n×d×d,
    symmetric); ``targets`` is y (n); ``noise`` the standard deviation of the additive
    Gaussian noise in y.
    """

    ground_truth: torch.Tensor
    measurements: torch.Tensor
    targets: torch.Tensor
    noise: float

    @property
    def dim(self) -> int:
        return int(self.ground_truth.shape[0])

    @property
    def rank(self) -> int:
        return int(self.ground_truth.shape[1])

    @property
    def n(self) -> int:
        return int(self.targets.shape[0])


def make_problem(dim: int, rank: int, n: int, *, noise: float = 0.0, seed: int = 0) -> SensingProblem:
    """Draw U* (``dim``×``rank``) and ``n`` noisy symmetric Gaussian measurements of U* U*^T."""
    if not 1 <= rank <= dim:
        raise ConfigError(f"invalid rank {rank} for dimension {dim}; expected 1 <= rank <= dim")
    if n < 1:
        raise ConfigError(f"invalid number of measurements n={n}; expected at least 1")
    if noise < 0:
        raise ConfigError(f"invalid noise standard deviation {noise}; expected a number >= 0")
    generator = torch.Generator().manual_seed(seed)
    ground_truth, _ = torch.linalg.qr(torch.randn(dim, rank, generator=generator, dtype=DTYPE))
    gaussian = torch.randn(n, dim, dim, generator=generator, dtype=DTYPE)
    measurements = (gaussian + gaussian.transpose(1, 2)) / 2
    targets = measure(measurements, ground_truth) + noise * torch.randn(n, generator=generator, dtype=DTYPE)
    return SensingProblem(ground_truth, measurements, targets, noise)


def measure(measurements: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Return ``<A_i, U U^T>`` for each of the n×d×d measurements A and the d×k factor U."""
    return torch.einsum("nij,ij->n", measurements, factor @ factor.T)


def sensing_loss(problem: SensingProblem, factor: torch.Tensor) -> torch.Tensor:
    """Return the training loss ``(1/n) sum_i (<A_i, U U^T> - y_i)^2`` (scalar)."""
    return (measure(problem.measurements, factor) - problem.targets).pow(2).mean()


def column_norms(factor: torch.Tensor) -> torch.Tensor:
    """Return the l2 norm of each column of the d×k factor U (shape k)."""
    return factor.detach().norm(dim=0)


def column_group_lasso(factor: torch.Tensor, lam: float, eps: float) -> torch.Tensor:
    """Return ``lam * sum_j sqrt(||u_j||^2 + eps^2)`` over the columns u_j of U (scalar)."""
    return lam * (factor.pow(2).sum(dim=0) + eps**2).sqrt().sum()


def small_random_init(dim: int, width: int, *, scale: float = 1e-2, seed: int = 0) -> torch.Tensor:
    """Return a d×k factor with i.i.d. N(0, ``scale``^2) entries."""
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(dim, width, generator=generator, dtype=DTYPE)


@dataclass(frozen=True)
class DescentConfig:
    """Plain gradient descent: ``steps`` steps of size ``lr`` on loss + group lasso (``lam``, ``eps``)."""

    steps: int = 3000
    lr: float = 0.1
    lam: float = 0.0
    eps: float = 1e-3


def gradient_descent(problem: SensingProblem, start: torch.Tensor, config: DescentConfig) -> torch.Tensor:
    """Run gradient descent from ``start`` (d×k) and return the final factor (d×k)."""
    factor = start.detach().clone().requires_grad_(True)
    for _ in range(config.steps):
        objective = sensing_loss(problem, factor)
        if config.lam > 0:
            objective = objective + column_group_lasso(factor, config.lam, config.eps)
        (gradient,) = torch.autograd.grad(objective, factor)
        with torch.no_grad():
            factor -= config.lr * gradient
        if not torch.isfinite(factor).all():
            raise ConfigError(f"gradient descent diverged with lr={config.lr}; lower the step size")
    return factor.detach()


def train_error(problem: SensingProblem, factor: torch.Tensor) -> float:
    """Return the training RMSE, the square root of :func:`sensing_loss`."""
    return math.sqrt(float(sensing_loss(problem, factor)))


def test_error(problem: SensingProblem, factor: torch.Tensor) -> float:
    """Return ``||U U^T - M*||_F``, the expected RMSE on fresh noiseless measurements."""
    truth = problem.ground_truth @ problem.ground_truth.T
    return float(torch.linalg.matrix_norm(factor @ factor.T - truth))


def statistical_rate(problem: SensingProblem) -> float:
    """Return ``noise * sqrt(r * d / n)``, the order of the best achievable test error."""
    return problem.noise * math.sqrt(problem.rank * problem.dim / problem.n)


@dataclass(frozen=True)
class Stage:
    """Train and test RMSE of one factor."""

    train: float
    test: float


@dataclass(frozen=True)
class PruningRun:
    """One train → prune → fine-tune run: the trained d×k factor, its column norms, the kept
    column indices (by decreasing norm), the pruned-and-fine-tuned factor, and errors."""

    trained: torch.Tensor
    norms: torch.Tensor
    kept: torch.Tensor
    finetuned: torch.Tensor
    before: Stage
    pruned: Stage
    after: Stage

    @property
    def survivors(self) -> int:
        return int(self.kept.numel())


def _stage(problem: SensingProblem, factor: torch.Tensor) -> Stage:
    return Stage(train_error(problem, factor), test_error(problem, factor))


def train_prune_finetune(
    problem: SensingProblem,
    width: int,
    train: DescentConfig,
    rule: PruneRule,
    finetune: DescentConfig,
    *,
    init_scale: float = 1e-2,
    seed: int = 0,
) -> PruningRun:
    """Fit a d×``width`` factor with ``train``, drop columns by ``rule``, then fine-tune.

    ``finetune`` normally has ``lam=0``: the penalty only decides which columns survive, and
    fine-tuning without it removes the shrinkage it causes.
    """
    start = small_random_init(problem.dim, width, scale=init_scale, seed=seed)
    trained = gradient_descent(problem, start, train)
    norms = column_norms(trained)
    kept = select_units(norms, rule)
    pruned = trained[:, kept]
    finetuned = gradient_descent(problem, pruned, finetune)
    return PruningRun(
        trained, norms, kept, finetuned,
        _stage(problem, trained), _stage(problem, pruned), _stage(problem, finetuned),
    )
