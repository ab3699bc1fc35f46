"""Attacks, suites, the runner and the audit, on real shared members and on hand-built ensembles."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from robustvote.attacks import (
    attack_batch,
    attack_names,
    build_attack,
    get_attack_class,
    load_suite,
    run_suite,
    suite_from_names,
)
from robustvote.attacks.audit import check_determinism, decision_flags, eps_sweep_flags
from robustvote.attacks.base import flat_norm, project
from robustvote.attacks.vote_pgd import UNTARGETED, apgd_checkpoints, saturating_margin
from robustvote.attacks.vote_subset import cheapest_majorities
from robustvote.ensemble import VotingEnsemble, vote_correct
from robustvote.errors import ConfigError
from robustvote.threat import Norm, ThreatModel

REPO_ROOT = Path(__file__).resolve().parent.parent
LINF_8 = ThreatModel(Norm.LINF, 8 / 255)
LINF_32 = ThreatModel(Norm.LINF, 32 / 255)
L2_HALF = ThreatModel(Norm.L2, 0.5)
# Fast members of the shared pool, trained in three different ways.
SMALL_MEMBERS = ["sdp_a_mix", "sdp_a_adv4", "oval21_wide_kw"]

# The smallest budget of each registered attack that still exercises every code path.
TINY_BUDGETS: dict[str, dict] = {
    "pgd": {"steps": 5},
    "apgd-ce": {"n_iter": 5},
    "apgd-dlr": {"n_iter": 5},
    "apgd-t": {"n_iter": 5, "n_target_classes": 2},
    "fab-t": {"n_iter": 5, "n_target_classes": 2},
    "square": {"n_queries": 20},
    "standard": {"n_iter": 5, "n_target_classes": 2, "n_queries": 20},
    "vote-pgd": {"steps": 8, "n_targets": 2},
    "vote-subset": {"steps": 8, "n_subsets": 2},
    "vote-transfer": {"steps": 4, "n_subsets": 1},
    "rays": {"queries": 30},
}


@pytest.fixture(scope="module")
def small_ensemble(shared_members) -> VotingEnsemble:
    by_name = {m.name: m.model for m in shared_members}
    return VotingEnsemble([by_name[n] for n in SMALL_MEMBERS], SMALL_MEMBERS)


@pytest.fixture(scope="module")
def single_member(shared_members) -> VotingEnsemble:
    by_name = {m.name: m.model for m in shared_members}
    return VotingEnsemble([by_name["sdp_a_mix"]], ["sdp_a_mix"])


@pytest.fixture(scope="module")
def batch(test_slice) -> tuple[torch.Tensor, torch.Tensor]:
    return test_slice.images[:16], test_slice.labels[:16]


def _run_one(target, images, labels, name, threat, seed=0):
    attack = build_attack(name, TINY_BUDGETS[name])
    return attack_batch(target, images, labels, [name], [attack], threat, seed=seed)


def test_every_attack_has_tiny_budget() -> None:
    assert sorted(TINY_BUDGETS) == attack_names()


@pytest.mark.parametrize("name", sorted(TINY_BUDGETS))
def test_attack_success_is_verified(small_ensemble, batch, name) -> None:
    images, labels = batch
    outcome = _run_one(small_ensemble, images, labels, name, LINF_8)
    robust = torch.from_numpy(outcome.per_attack_robust[name])
    clean = torch.from_numpy(outcome.clean_correct)
    adversarial = outcome.adv_images

    assert not bool((robust & ~clean).any()), "an example became robust under attack"
    assert float(flat_norm(adversarial - images, Norm.LINF).max()) <= LINF_8.eps + 1e-6
    assert float(adversarial.min()) >= 0.0
    assert float(adversarial.max()) <= 1.0
    broken = clean & ~robust
    if bool(broken.any()):
        still_correct = vote_correct(small_ensemble.votes(adversarial[broken]), labels[broken])
        assert not bool(still_correct.any()), "a reported success is classified correctly by the vote"
    assert outcome.counts[name]["forward"] > 0
    if not get_attack_class(name).uses_gradients:
        assert outcome.counts[name]["backward"] == 0


@pytest.mark.parametrize("name", sorted(TINY_BUDGETS))
def test_attack_same_seed_same_result(small_ensemble, batch, name) -> None:
    images, labels = batch
    first = _run_one(small_ensemble, images[:8], labels[:8], name, LINF_8, seed=3)
    second = _run_one(small_ensemble, images[:8], labels[:8], name, LINF_8, seed=3)
    assert first.per_attack_robust[name].tolist() == second.per_attack_robust[name].tolist()
    assert torch.equal(first.adv_images, second.adv_images)


@pytest.mark.parametrize("name", ["pgd", "apgd-ce", "vote-pgd", "vote-transfer"])
def test_l2_candidates_stay_in_ball(small_ensemble, batch, name) -> None:
    images, labels = batch
    outcome = _run_one(small_ensemble, images[:8], labels[:8], name, L2_HALF)
    norms = flat_norm(outcome.adv_images - images[:8], Norm.L2)
    assert float(norms.max()) <= L2_HALF.eps + 1e-5


def test_rays_skipped_under_l2(small_ensemble, batch) -> None:
    images, labels = batch
    outcome = _run_one(small_ensemble, images[:4], labels[:4], "rays", L2_HALF)
    assert outcome.audit["rays"]["skipped"] is True
    assert outcome.per_attack_robust["rays"].tolist() == outcome.clean_correct.tolist()


def test_robust_accuracy_falls_at_large_eps(small_ensemble, batch) -> None:
    images, labels = batch
    suite = suite_from_names(["vote-pgd"], {"vote-pgd": {"steps": 20, "n_targets": 2}})
    result = run_suite(small_ensemble, images, labels, suite, LINF_32, batch_size=16, progress=False)
    assert result.clean_accuracy > 0.5
    assert result.robust_accuracy <= 0.0625


@pytest.mark.slow
def test_vote_suite_no_weaker_than_parts(small_ensemble, test_slice) -> None:
    images, labels = test_slice.images[:48], test_slice.labels[:48]
    suite = load_suite(REPO_ROOT / "attacks" / "vote-quick.yaml")
    whole = run_suite(small_ensemble, images, labels, suite, LINF_8, batch_size=48, progress=False)
    for entry in suite.entries:
        single = suite_from_names([entry.attack], {entry.attack: dict(entry.options)})
        alone = run_suite(small_ensemble, images, labels, single, LINF_8, batch_size=48, progress=False)
        assert whole.robust_accuracy <= alone.robust_accuracy, entry.name


def test_single_member_apgd_suite(single_member, batch) -> None:
    images, labels = batch
    suite = suite_from_names(["apgd-ce", "apgd-t"], {"apgd-ce": {"n_iter": 10}, "apgd-t": {"n_iter": 10, "n_target_classes": 3}})
    small = run_suite(single_member, images, labels, suite, LINF_8, batch_size=8, progress=False)
    large = run_suite(single_member, images, labels, suite, LINF_32, batch_size=8, progress=False)

    assert small.attack_names == ["apgd-ce", "apgd-t"]
    assert small.robust_accuracy <= small.attack_accuracy("apgd-ce") <= small.clean_accuracy
    assert small.robust_accuracy < small.clean_accuracy
    assert large.robust_accuracy == 0.0
    assert small.counts["apgd-ce"]["backward"] >= 10 * int(small.clean_correct.sum())
    assert small.adv_labels.dtype == torch.int64
    broken = small.clean_correct & ~small.robust
    assert bool((small.adv_labels[broken] != labels[broken]).all())


# ---------------------------------------------------------------------------------------------
# A hand-built ensemble where only a targeted attack on the vote succeeds.


def _linear_member(rows: dict[int, tuple[dict[int, float], float]], classes: int, pixels: int, floor: float) -> nn.Module:
    """Build a linear member: ``rows[c] = ({pixel: weight}, bias)``, other classes at ``floor``."""
    layer = nn.Linear(pixels, classes)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.fill_(floor)
        for cls, (weights, bias) in rows.items():
            for pixel, weight in weights.items():
                layer.weight[cls, pixel] = weight
            layer.bias[cls] = bias
    return nn.Sequential(nn.Flatten(), layer).eval().requires_grad_(False)


def hand_built_ensemble() -> VotingEnsemble:
    """Three linear members on 3×4×4 images, all voting class 0 at the gray image (0.5 everywhere).

    ``a`` flips to class 1 when pixel 0 rises by more than 0.05, ``b`` when pixel 1 does. ``c``
    cannot be flipped within Linf 0.1, and its class-2 logit, a hundred times larger, falls as
    pixels 0 and 1 rise. The mean-logits surrogate is dominated by ``c``, so untargeted attacks
    on it push pixels 0 and 1 down, away from the only way to flip the vote.
    """
    pixels, classes = 48, 10
    a = _linear_member({0: ({}, 0.0), 1: ({0: 1.0}, -0.55)}, classes, pixels, -10.0)
    b = _linear_member({0: ({}, 0.0), 1: ({1: 1.0}, -0.55)}, classes, pixels, -10.0)
    c = _linear_member({0: ({}, 0.0), 1: ({}, -100.0), 2: ({0: -100.0, 1: -100.0}, 75.0)}, classes, pixels, -100.0)
    return VotingEnsemble([a, b, c], ["a", "b", "c"])


def test_vote_pgd_targets_where_untargeted_fail() -> None:
    ensemble = hand_built_ensemble()
    images = torch.full((4, 3, 4, 4), 0.5)
    labels = torch.zeros(4, dtype=torch.long)
    threat = ThreatModel(Norm.LINF, 0.1)
    assert bool(vote_correct(ensemble.votes(images), labels).all())

    untargeted = {
        "pgd": ("pgd", {"steps": 20}),
        "pgd-margin": ("pgd", {"steps": 20, "loss": "margin"}),
        "apgd-ce": ("apgd-ce", {"n_iter": 20}),
        "vote-pgd-untargeted": ("vote-pgd", {"steps": 20, "n_targets": 0}),
    }
    for label, (name, options) in untargeted.items():
        outcome = attack_batch(ensemble, images, labels, [label], [build_attack(name, options)], threat, seed=0)
        assert outcome.per_attack_robust[label].all(), f"{label} broke the hand-built vote"

    outcome = attack_batch(
        ensemble, images, labels, ["vote-pgd"], [build_attack("vote-pgd", {"steps": 20})], threat, seed=0
    )
    assert not outcome.per_attack_robust["vote-pgd"].any()
    fooled_votes = ensemble.votes(outcome.adv_images)
    assert fooled_votes[:, 1].tolist() == [2, 2, 2, 2]


def test_saturating_margin_caps_at_kappa() -> None:
    logits = torch.tensor([[[0.0, 5.0, 1.0]], [[3.0, 0.0, 1.0]]])  # M=2, N=1, C=3
    margins = saturating_margin(logits, torch.tensor([1]), kappa=0.5)
    assert margins[:, 0].tolist() == [0.5, -3.0]


def test_untargeted_margin_leaves_true_class() -> None:
    logits = torch.tensor([[[0.0, 5.0, 1.0]], [[3.0, 0.0, 1.0]]])  # M=2, N=1, C=3
    margins = saturating_margin(logits, torch.tensor([UNTARGETED]), kappa=0.5, labels=torch.tensor([0]))
    assert margins[:, 0].tolist() == [0.5, -2.0]


def test_vote_pgd_without_rounds_rejected() -> None:
    with pytest.raises(ConfigError, match="would not attack"):
        build_attack("vote-pgd", {"n_targets": 0, "untargeted": False})


def test_apgd_checkpoints_follow_schedule() -> None:
    assert sorted(apgd_checkpoints(100)) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_cheapest_majorities_pick_low_cost() -> None:
    costs = torch.tensor([[5.0, 0.0, 1.0, 9.0, 0.5]])
    masks = cheapest_majorities(costs, 2)
    assert masks[0, 0].tolist() == [False, True, True, False, True]
    assert int(masks[0, 1].sum()) == 3


def test_project_linf_and_l2() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 4, 4, generator=generator)
    candidates = images + torch.randn(6, 3, 4, 4, generator=generator)
    candidates[0, 0, 0, 0] = float("nan")
    for threat in (ThreatModel(Norm.LINF, 0.05), ThreatModel(Norm.L2, 0.3)):
        projected = project(candidates, images, threat)
        assert not bool(torch.isnan(projected).any())
        assert float(flat_norm(projected - images, threat.norm).max()) <= threat.eps + 1e-6
        assert float(projected.min()) >= 0.0
        assert float(projected.max()) <= 1.0


# ---------------------------------------------------------------------------------------------
# Suites


@pytest.mark.parametrize("name", ["standard", "vote", "vote-quick"])
def test_shipped_suites_load(name) -> None:
    suite = load_suite(REPO_ROOT / "attacks" / f"{name}.yaml")
    assert suite.entries
    assert len(set(suite.names)) == len(suite.names)


def test_vote_suite_contains_benchmarked_attacks() -> None:
    attacks = {entry.attack for entry in load_suite(REPO_ROOT / "attacks" / "vote.yaml").entries}
    assert {"standard", "vote-transfer", "vote-pgd", "vote-subset", "rays"} <= attacks


def test_unknown_attack_lists_known() -> None:
    with pytest.raises(ConfigError, match="unknown attack 'apgd-x'.*vote-pgd"):
        suite_from_names(["apgd-x"])


def test_unknown_option_lists_accepted(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("attacks:\n  - attack: vote-pgd\n    stepz: 3\n")
    with pytest.raises(ConfigError, match="stepz.*accepted: n_targets"):
        load_suite(path)


def test_invalid_option_value_rejected() -> None:
    with pytest.raises(ConfigError, match="steps must be an integer"):
        suite_from_names(["pgd"], {"pgd": {"steps": 0}})


def test_duplicate_names_rejected(tmp_path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text("attacks:\n  - attack: pgd\n  - attack: pgd\n")
    with pytest.raises(ConfigError, match="appear twice"):
        load_suite(path)


def test_unknown_member_target_rejected(small_ensemble, batch) -> None:
    images, labels = batch
    attack = build_attack("pgd", {"model": "no_such_member", "steps": 1})
    with pytest.raises(ConfigError, match="not a member"):
        attack_batch(small_ensemble, images[:2], labels[:2], ["pgd"], [attack], LINF_8, seed=0)


# ---------------------------------------------------------------------------------------------
# Audit


class _DropoutMember(nn.Module):
    """A member left in training mode with dropout, so two passes disagree."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(48, 10))

    def train(self, mode: bool = True) -> _DropoutMember:
        return super().train(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def test_nondeterministic_member_flagged() -> None:
    torch.manual_seed(0)
    ensemble = VotingEnsemble([_DropoutMember(), hand_built_ensemble().members[0]], ["dropout", "linear"])
    flags = check_determinism(ensemble, torch.rand(8, 3, 4, 4))
    assert len(flags) == 1
    assert "non-deterministic-member: dropout" in flags[0]


def test_decision_attack_beating_gradients_flagged() -> None:
    clean = torch.ones(100, dtype=torch.bool)
    after_gradient = clean.clone()
    after_gradient[:10] = False
    after_decision = after_gradient.clone()
    after_decision[10:30] = False
    per_attack = {"apgd-ce": after_gradient, "rays": after_decision}
    flags = decision_flags(["apgd-ce", "rays"], [True, False], per_attack, clean)
    assert len(flags) == 1
    assert "rays broke 20 of 100" in flags[0]
    assert decision_flags(["rays", "apgd-ce"], [False, True], per_attack, clean) == []


def test_eps_sweep_flags() -> None:
    assert eps_sweep_flags([2 / 255, 8 / 255, 64 / 255], [0.5, 0.2, 0.0]) == []
    rising = eps_sweep_flags([2 / 255, 8 / 255], [0.3, 0.4])
    assert len(rising) == 1
    assert "accuracy-rises-with-eps" in rising[0]
    stuck = eps_sweep_flags([2 / 255, 64 / 255], [0.5, 0.3])
    assert len(stuck) == 1
    assert "no-fall-at-large-eps" in stuck[0]


class _FlatMember(nn.Module):
    """Logits that depend on the input only through a zero factor: every input gradient is zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(x.shape[0], 10, device=x.device)
        logits[:, 0] = 1.0
        return logits + 0 * x.flatten(1).sum(1, keepdim=True)


def test_zero_gradients_logged_not_warned(caplog) -> None:
    import warnings

    target = VotingEnsemble([_FlatMember()], ["flat"])
    images, labels = torch.rand(6, 3, 4, 4), torch.zeros(6, dtype=torch.long)
    suite = suite_from_names(["apgd-dlr", "apgd-t"], {"apgd-dlr": {"n_iter": 3}, "apgd-t": {"n_iter": 3, "n_target_classes": 2}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_suite(target, images, labels, suite, LINF_8, progress=False)
    assert not [w for w in caught if "zero gradient" in str(w.message)]
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "zero gradient" in r.getMessage()]
    assert logged
    assert logged[0].startswith("pyautoattack apgd-dlr:")
    assert any(flag.startswith("vanishing-gradients") for flag in result.flags)
