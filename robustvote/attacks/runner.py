"""The runner: runs a suite batch by batch, judges every candidate on the hard vote, and keeps
the per-example worst case.

For each batch it scores the clean images with the conservative tie rule, then runs the
attacks in suite order, each only on examples still robust. Every candidate is projected onto
the eps-ball and [0, 1] and re-checked with :func:`robustvote.ensemble.vote_correct`; the
attack's own verdict is never used. Model passes are counted per attack, in per-image member
passes (a forward of an M-member vote on N images counts M·N).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from robustvote.attacks.audit import (
    audit_proposals,
    check_determinism,
    check_gradients,
    decision_flags,
    merge_audits,
    proposal_flags,
)
from robustvote.attacks.base import Attack, PassCounter, counted_ensemble, project
from robustvote.attacks.suite import Suite
from robustvote.ensemble import VotingEnsemble, conservative_prediction, vote_correct
from robustvote.errors import ConfigError, DataError
from robustvote.runs import OutcomeStore
from robustvote.threat import ThreatModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchOutcome:
    """Outcomes of one batch; arrays have one entry per example of the batch.

    ``adv_images`` (float B×3×H×W, the clean image where no attack succeeded) is kept in memory
    only and is ``None`` for batches read back from a run folder.
    """

    start: int
    clean_correct: np.ndarray
    per_attack_robust: dict[str, np.ndarray]
    adv_labels: np.ndarray
    counts: dict[str, dict[str, int]]
    runtime_s: dict[str, float]
    audit: dict[str, dict[str, Any]]
    adv_images: torch.Tensor | None = None

    def to_record(self) -> dict[str, Any]:
        """Return the JSON-serializable record stored in the run folder."""
        return {
            "start": self.start,
            "size": int(self.clean_correct.shape[0]),
            "attacks": list(self.per_attack_robust),
            "clean_correct": self.clean_correct.astype(int).tolist(),
            "per_attack_robust": {k: v.astype(int).tolist() for k, v in self.per_attack_robust.items()},
            "adv_labels": self.adv_labels.tolist(),
            "counts": self.counts,
            "runtime_s": self.runtime_s,
            "audit": self.audit,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> BatchOutcome:
        return cls(
            start=int(record["start"]),
            clean_correct=np.asarray(record["clean_correct"], dtype=bool),
            per_attack_robust={k: np.asarray(v, dtype=bool) for k, v in record["per_attack_robust"].items()},
            adv_labels=np.asarray(record["adv_labels"], dtype=np.int64),
            counts={k: dict(v) for k, v in record["counts"].items()},
            runtime_s={k: float(v) for k, v in record["runtime_s"].items()},
            audit={k: dict(v) for k, v in record["audit"].items()},
        )


@dataclass(frozen=True)
class SuiteResult:
    """Per-example outcomes of a suite on N examples, and what the attacks cost.

    ``clean_correct`` and ``robust`` are bool N masks under the conservative tie rule.
    ``per_attack_robust`` maps each attack, in suite order, to the bool N mask still robust
    after it and every attack before it. ``adv_labels`` is the int64 N label the conservative
    vote decides on the adversarial example found, or on the clean image when none was found:
    the true label where it is robust, else the most-voted other class (so an error by a tie
    names the rival class). ``counts`` gives per-image member passes per attack, and ``audit``
    the merged :func:`~robustvote.attacks.audit.audit_proposals` values per attack.
    ``adv_images`` contains the adversarial example found for each example (the clean image
    where none was found) when :func:`run_suite` was asked to keep them and no batch was read
    back from a run folder, which stores no images. Otherwise it is ``None``.
    """

    attack_names: list[str]
    clean_correct: torch.Tensor
    robust: torch.Tensor
    per_attack_robust: dict[str, torch.Tensor]
    adv_labels: torch.Tensor
    counts: dict[str, dict[str, int]]
    flags: list[str]
    runtime_s: dict[str, float]
    audit: dict[str, dict[str, Any]] = field(default_factory=dict)
    adv_images: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return int(self.clean_correct.numel())

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.float().mean())

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.float().mean())

    def attack_accuracy(self, name: str) -> float:
        """Return the robust accuracy after attack ``name`` and all attacks before it."""
        return float(self.per_attack_robust[name].float().mean())


def _derive_seed(seed: int, attack_index: int, batch_start: int) -> int:
    # Depends only on the run seed, the attack's position and the batch, so a resumed run and
    # an uninterrupted run draw the same numbers.
    return (seed * 1_000_003 + attack_index * 10_007 + batch_start) % (2**31 - 1)


def _judge(target: VotingEnsemble, candidates: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    votes = target.votes(candidates)
    return ~vote_correct(votes, labels), conservative_prediction(votes, labels)


def attack_batch(
    target: VotingEnsemble,
    images: torch.Tensor,
    labels: torch.Tensor,
    names: list[str],
    attacks: list[Attack],
    threat: ThreatModel,
    *,
    seed: int,
    start: int = 0,
) -> BatchOutcome:
    """Run ``attacks`` in order on one batch (already on the target's device) and judge them."""
    clean_votes = target.votes(images)
    robust = vote_correct(clean_votes, labels)
    clean_correct = robust.clone()
    adv_labels = conservative_prediction(clean_votes, labels)
    adv_images = images.clone()
    per_attack: dict[str, np.ndarray] = {}
    counts: dict[str, dict[str, int]] = {}
    runtime: dict[str, float] = {}
    audits: dict[str, dict[str, Any]] = {}

    for index, (name, attack) in enumerate(zip(names, attacks)):
        active = robust.nonzero().squeeze(1)
        counter = PassCounter()
        began = time.perf_counter()
        audit: dict[str, Any] = {"attacked": int(active.numel()), "broken": 0}
        if threat.norm not in attack.norms:
            audit["skipped"] = True
        elif active.numel():
            mixed = _derive_seed(seed, index, start)
            torch.manual_seed(mixed)
            generator = torch.Generator().manual_seed(mixed)
            x, y = images[active], labels[active]
            raw = attack.propose(counted_ensemble(target, counter), x, y, threat, generator=generator).detach()
            if raw.shape != x.shape:
                raise RuntimeError(f"attack {name} returned candidates of shape {tuple(raw.shape)}, expected {tuple(x.shape)}")
            candidates = project(raw, x, threat)
            audit.update(audit_proposals(raw, candidates, x, threat))
            fooled, predicted = _judge(target, candidates, y)
            broken = active[fooled]
            robust[broken] = False
            adv_labels[broken] = predicted[fooled]
            adv_images[broken] = candidates[fooled]
            audit["broken"] = int(fooled.sum())
        per_attack[name] = robust.cpu().numpy().copy()
        counts[name] = counter.snapshot()
        runtime[name] = time.perf_counter() - began
        audits[name] = audit
        logger.debug("batch %d: %s broke %d of %d", start, name, audit["broken"], audit["attacked"])

    return BatchOutcome(
        start=start,
        clean_correct=clean_correct.cpu().numpy(),
        per_attack_robust=per_attack,
        adv_labels=adv_labels.cpu().numpy(),
        counts=counts,
        runtime_s=runtime,
        audit=audits,
        adv_images=adv_images.cpu(),
    )


def _check_inputs(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> None:
    if images.dim() != 4 or images.shape[0] != labels.shape[0]:
        raise DataError(
            f"expected images N×C×H×W and N labels, got images {tuple(images.shape)} and labels {tuple(labels.shape)}"
        )
    if images.numel() and (float(images.min()) < 0 or float(images.max()) > 1):
        raise DataError("images must lie in [0, 1] pixel scale; divide uint8 images by 255")
    if batch_size < 1:
        raise ConfigError(f"invalid batch size {batch_size}; expected a positive integer")


def run_suite(
    target: VotingEnsemble,
    images: torch.Tensor,
    labels: torch.Tensor,
    suite: Suite,
    threat: ThreatModel,
    *,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device = torch.device("cpu"),
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    keep_adv_images: bool = False,
) -> SuiteResult:
    """Run ``suite`` on ``images`` (N×3×H×W in [0, 1]) and return the per-example worst case.

    With ``run_dir``, every finished batch is written to ``run_dir/outcomes/``; with ``resume``
    too, batches already there are read back instead of recomputed. Without ``resume``, a
    ``run_dir`` that already contains outcomes is an error. ``keep_adv_images`` keeps the
    worst-case images in the result (as large as ``images``); otherwise each batch's images are
    dropped when the batch is done.
    """
    _check_inputs(images, labels, batch_size)
    target = target.to(device).eval()
    names = suite.names
    attacks = suite.build()
    suite.require_norm(threat.norm)
    store = OutcomeStore(Path(run_dir), names, batch_size) if run_dir is not None else None
    if store is not None and not resume and store.finished_starts():
        raise ConfigError(
            f"run folder {run_dir} already contains outcomes; pass resume=True (--resume) to continue it "
            "or choose an empty folder"
        )

    first = images[:batch_size].to(device)
    flags = check_determinism(target, first)
    flags += check_gradients(target, first, labels[:batch_size].to(device))

    outcomes: list[BatchOutcome] = []
    starts = range(0, images.shape[0], batch_size)
    for start in tqdm(starts, desc=f"attack {suite.name}", disable=not progress, unit="batch"):
        record = store.read(start) if store is not None and resume else None
        if record is not None:
            outcomes.append(BatchOutcome.from_record(record))
            logger.info("batch %d read back from %s", start, store.folder)
            continue
        x = images[start : start + batch_size].to(device)
        y = labels[start : start + batch_size].to(device)
        outcome = attack_batch(target, x, y, names, attacks, threat, seed=seed, start=start)
        if store is not None:
            store.write(start, outcome.to_record())
        if not keep_adv_images:
            outcome = replace(outcome, adv_images=None)
        outcomes.append(outcome)

    return combine_outcomes(outcomes, names, [a.uses_gradients for a in attacks], threat, flags)


def combine_outcomes(
    outcomes: list[BatchOutcome],
    names: list[str],
    uses_gradients: list[bool],
    threat: ThreatModel,
    flags: list[str],
) -> SuiteResult:
    """Concatenate batch outcomes in order and add the suite-level flags."""
    def cat(arrays: list[np.ndarray], dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(arrays)).to(dtype) if arrays else torch.zeros(0, dtype=dtype)

    clean = cat([o.clean_correct for o in outcomes], torch.bool)
    per_attack = {name: cat([o.per_attack_robust[name] for o in outcomes], torch.bool) for name in names}
    robust = per_attack[names[-1]] if names else clean.clone()
    counts = {
        name: {kind: sum(o.counts[name][kind] for o in outcomes) for kind in ("forward", "backward")}
        for name in names
    }
    runtime = {name: sum(o.runtime_s[name] for o in outcomes) for name in names}
    audit = {name: merge_audits([o.audit[name] for o in outcomes]) for name in names}
    flags = list(flags)
    for name in names:
        flags += proposal_flags(name, audit[name], threat)
    flags += decision_flags(names, uses_gradients, per_attack, clean)
    for flag in flags:
        logger.warning("%s", flag)
    images = [o.adv_images for o in outcomes]
    adv_images = torch.cat(images) if images and all(i is not None for i in images) else None
    return SuiteResult(
        attack_names=list(names),
        clean_correct=clean,
        robust=robust,
        per_attack_robust=per_attack,
        adv_labels=cat([o.adv_labels for o in outcomes], torch.int64),
        counts=counts,
        flags=flags,
        runtime_s=runtime,
        audit=audit,
        adv_images=adv_images,
    )
