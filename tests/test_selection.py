"""Member selection: the estimate, exhaustive and beam search, diversity, the matrix cache and
``robustvote select`` on real members."""

from __future__ import annotations

import itertools
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import robustvote.attacks
from robustvote.cli import main
from robustvote.cli.select_command import warn_on_overlap
from robustvote.errors import ConfigError, DataError
from robustvote.selection import (
    MatrixSetup,
    MemberRow,
    SearchMethod,
    beam_search,
    check_size,
    exhaustive_search,
    load_cache,
    majority_robust_estimate,
    measure_diversity,
    pack_rows,
    save_cache,
    score_subsets,
    search_size,
    write_heatmap,
    write_pool_file,
)
from robustvote.selection.search import clean_vote_accuracy
from robustvote.zoo import load_pool_file

CHEAP_SUITE = {
    "name": "cheap",
    "attacks": [
        {"attack": "apgd-ce", "n_iter": 5},
        {"attack": "apgd-t", "n_iter": 5, "n_target_classes": 2},
    ],
}
# The four CNN-A members and the smallest ResNet: real, and quick to attack.
FAST_MEMBERS = ["resnet_4b", "oval21_wide_kw", "kw_small_8px", "sdp_a_mix", "sdp_a_adv4"]


def random_problem(members: int, examples: int, seed: int):
    """A robustness matrix with members of different strength, clean predictions and labels."""
    rng = np.random.default_rng(seed)
    strength = rng.uniform(0.2, 0.8, size=(members, 1))
    robust = rng.random((members, examples)) < strength
    labels = rng.integers(0, 10, size=examples)
    predictions = np.where(rng.random((members, examples)) < 0.7, labels[None, :], rng.integers(0, 10, (members, examples)))
    return robust, predictions, labels


def brute_force_estimate(robust: np.ndarray, subset: tuple[int, ...]) -> float:
    rows = robust.tolist()
    hits = 0
    for column in range(robust.shape[1]):
        votes = sum(1 for member in subset if rows[member][column])
        if votes > len(subset) / 2:
            hits += 1
    return hits / robust.shape[1]


# ---------------------------------------------------------------------------------------------
# Estimate and search


@pytest.mark.parametrize("examples", [1, 63, 64, 65, 200])
@pytest.mark.parametrize("size", [1, 3, 5])
def test_estimate_matches_brute_force(examples: int, size: int) -> None:
    robust, _, _ = random_problem(7, examples, seed=examples + size)
    subsets = np.asarray(list(itertools.combinations(range(7), size)))
    packed = score_subsets(pack_rows(robust), subsets, examples)
    for subset, value in zip(subsets, packed):
        expected = brute_force_estimate(robust, tuple(subset))
        assert value == pytest.approx(expected, abs=1e-12)
        assert majority_robust_estimate(robust, subset) == pytest.approx(expected, abs=1e-12)


def test_pack_rows_pads_with_not_robust() -> None:
    robust = np.ones((2, 70), dtype=bool)
    packed = pack_rows(robust)
    assert packed.shape == (2, 2)
    assert int(np.bitwise_count(packed).sum()) == 140


@pytest.mark.parametrize("seed", range(5))
def test_exhaustive_equals_wide_beam(seed: int) -> None:
    robust, predictions, labels = random_problem(8, 150, seed)
    for size in (3, 5):
        exhaustive = exhaustive_search(robust, predictions, labels, size, num_classes=10, top=4)
        beam = beam_search(robust, predictions, labels, size, num_classes=10, top=4, beam_width=10_000)
        assert exhaustive.method is SearchMethod.EXHAUSTIVE
        assert beam.method is SearchMethod.BEAM
        assert beam.top == exhaustive.top


@pytest.mark.parametrize("seed", range(10))
def test_beam_never_beats_exhaustive(seed: int) -> None:
    robust, predictions, labels = random_problem(11, 120, seed)
    exhaustive = exhaustive_search(robust, predictions, labels, 5, num_classes=10)
    beam = beam_search(robust, predictions, labels, 5, num_classes=10, beam_width=4)
    assert beam.top[0].estimate <= exhaustive.top[0].estimate
    assert exhaustive.subsets_scored == 462
    assert beam.subsets_scored < 462


def test_greedy_finds_planted_subset() -> None:
    # Members 2, 6 and 9 fail on disjoint thirds of the data, so any two of them outvote the
    # third everywhere. Every other member is robust on only about 35% of the examples.
    rng = np.random.default_rng(3)
    examples = 300
    robust = rng.random((12, examples)) < 0.35
    for index, member in enumerate((2, 6, 9)):
        robust[member] = True
        robust[member, index * 100 : (index + 1) * 100] = False
    labels = rng.integers(0, 10, examples)
    predictions = np.tile(labels, (12, 1))
    exhaustive = exhaustive_search(robust, predictions, labels, 3, num_classes=10)
    greedy = beam_search(robust, predictions, labels, 3, num_classes=10, beam_width=1)
    assert exhaustive.top[0].members == (2, 6, 9)
    assert exhaustive.top[0].estimate == 1.0
    assert greedy.top[0] == exhaustive.top[0]


def test_ties_broken_by_clean_vote_accuracy() -> None:
    robust = np.ones((5, 40), dtype=bool)
    labels = np.zeros(40, dtype=np.int64)
    predictions = np.zeros((5, 40), dtype=np.int64)
    predictions[0, :20] = 1  # member 0 is wrong on half the clean images ...
    predictions[1, :20] = 2  # ... and member 1 on the same half, with another class
    result = exhaustive_search(robust, predictions, labels, 3, num_classes=10, top=10)
    assert all(subset.estimate == 1.0 for subset in result.top)
    assert 0 not in result.top[0].members or 1 not in result.top[0].members
    assert result.top[0].clean_accuracy == 1.0
    assert result.top[-1].clean_accuracy == 0.5
    assert result.top[-1].members[:2] == (0, 1)


def test_clean_vote_tie_goes_to_attacker() -> None:
    labels = np.array([0])
    predictions = np.array([[0], [1], [2]])
    accuracy = clean_vote_accuracy(predictions, labels, np.array([[0, 1, 2]]), num_classes=10)
    assert accuracy[0] == 0.0


def test_search_size_switches_to_beam() -> None:
    robust, predictions, labels = random_problem(9, 100, seed=1)
    small = search_size(robust, predictions, labels, 3, num_classes=10, max_exhaustive=84)
    large = search_size(robust, predictions, labels, 3, num_classes=10, max_exhaustive=83)
    assert small.method is SearchMethod.EXHAUSTIVE
    assert large.method is SearchMethod.BEAM
    assert large.subsets_total == 84


@pytest.mark.parametrize("size, pool_size", [(4, 8), (0, 8), (9, 8)])
def test_invalid_size_rejected(size: int, pool_size: int) -> None:
    with pytest.raises(ConfigError, match=f"size {size}"):
        check_size(size, pool_size)


# ---------------------------------------------------------------------------------------------
# Diversity


def test_diversity_measures_match_definitions(tmp_path: Path) -> None:
    robust, predictions, labels = random_problem(6, 90, seed=4)
    rng = np.random.default_rng(0)
    adv_labels = np.where(robust, labels[None, :], rng.integers(0, 10, robust.shape))
    clean_correct = predictions == labels[None, :]
    diversity = measure_diversity([f"m{i}" for i in range(6)], robust, clean_correct, adv_labels, labels)

    for i, j in itertools.product(range(6), repeat=2):
        both_fooled = np.mean(~robust[i] & ~robust[j])
        one_robust = np.mean(robust[i] != robust[j])
        same = np.mean(~robust[i] & ~robust[j] & (adv_labels[i] == adv_labels[j]) & (adv_labels[i] != labels))
        assert diversity.joint_vulnerability[i, j] == pytest.approx(both_fooled)
        assert diversity.disagreement[i, j] == pytest.approx(one_robust)
        assert diversity.same_adversarial_class[i, j] == pytest.approx(same)
    assert np.allclose(np.diag(diversity.joint_vulnerability), 1 - robust.mean(axis=1))
    assert diversity.mean_joint_vulnerability([0, 1, 2]) == pytest.approx(
        np.mean([diversity.joint_vulnerability[0, 1], diversity.joint_vulnerability[0, 2],
                 diversity.joint_vulnerability[1, 2]])
    )

    heatmap = tmp_path / "plots" / "heatmap.png"
    write_heatmap(diversity, heatmap, title="random")
    assert heatmap.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in heatmap.parent.iterdir()] == ["heatmap.png"]


# ---------------------------------------------------------------------------------------------
# Cache file


def make_setup(**changes) -> MatrixSetup:
    fields = dict(dataset="cifar10", norm="Linf", eps=2 / 255, split="test", start=5000, n=4,
                  data_sha256="ab" * 32, suite=[{"name": "apgd-ce", "options": {"n_iter": 5}}], seed=0)
    fields.update(changes)
    return MatrixSetup(**fields)


def test_cache_round_trip(tmp_path: Path) -> None:
    row = MemberRow("a", "k" * 64, np.array([True, False, True, True]), np.array([1, 2, 3, 4]),
                    np.array([1, 5, 3, 4]), 1.5, ("flag",))
    path = tmp_path / "matrix.json"
    save_cache(path, make_setup(), np.array([1, 2, 3, 4]), [row])
    setup, labels, rows = load_cache(path)
    assert setup == make_setup()
    assert labels.tolist() == [1, 2, 3, 4]
    assert rows[0].robust.tolist() == [True, False, True, True]
    assert rows[0].adv_labels.tolist() == [1, 5, 3, 4]
    assert rows[0].flags == ("flag",)


def test_setup_differences_named() -> None:
    cached = make_setup()
    requested = make_setup(start=0, suite=[{"name": "apgd-ce", "options": {"n_iter": 100}}])
    assert cached.differences(requested) == ["start", "suite"]
    assert "n_iter cached 5, requested 100" in cached.describe_difference(requested, "suite")


@pytest.mark.parametrize("content", ["{not json", '{"kind": "something else"}',
                                     '{"kind": "robustvote robustness matrix", "format_version": 99}'])
def test_damaged_cache_rejected(tmp_path: Path, content: str) -> None:
    path = tmp_path / "matrix.json"
    path.write_text(content)
    with pytest.raises(DataError, match="--recompute"):
        load_cache(path)


# ---------------------------------------------------------------------------------------------
# Pool files


def test_pool_file_rebases_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RV_UNSET_ZOO", raising=False)
    source_dir = tmp_path / "pools"
    source_dir.mkdir()
    members = [
        {"name": "plain", "source": "onnx", "path": "weights/a.onnx"},
        {"name": "defaulted", "source": "onnx", "path": "${RV_UNSET_ZOO:-../zoo}/b.onnx"},
        {"name": "absolute", "source": "onnx", "path": str(tmp_path / "c.onnx")},
    ]
    source = source_dir / "pool.yaml"
    source.write_text(yaml.safe_dump({"dataset": "cifar10", "threat_model": "Linf", "eps": "2/255", "members": members}))
    pool = load_pool_file(source)

    target = tmp_path / "out" / "deeper" / "best.yaml"
    write_pool_file(pool, ["defaulted", "plain", "absolute"], target, notes="chosen")
    written = load_pool_file(target)
    expected = {m.name: m.path.resolve() for m in pool.members}
    assert [m.name for m in written.members] == ["defaulted", "plain", "absolute"]
    assert {m.name: m.path.resolve() for m in written.members} == expected
    raw = yaml.safe_load(target.read_text())
    assert raw["members"][0]["path"].startswith("${RV_UNSET_ZOO:-")
    assert raw["notes"] == "chosen"

    # With the variable set, the default is still rebased for readers who leave it unset.
    monkeypatch.setenv("RV_UNSET_ZOO", str(tmp_path / "elsewhere"))
    write_pool_file(load_pool_file(source), ["defaulted"], target, notes="chosen")
    monkeypatch.delenv("RV_UNSET_ZOO")
    assert load_pool_file(target).members[0].path.resolve() == expected["defaulted"]


# ---------------------------------------------------------------------------------------------
# robustvote select on real members


@pytest.fixture(scope="module")
def fast_pool(shared_pool: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pool file of five real shared members, with ROBUSTVOTE_ZOO set."""
    raw = yaml.safe_load(shared_pool.read_text())
    raw["members"] = [m for m in raw["members"] if m["name"] in FAST_MEMBERS]
    folder = tmp_path_factory.mktemp("pool")
    path = folder / "fast.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    (folder / "cheap.yaml").write_text(yaml.safe_dump(CHEAP_SUITE))
    return path


class CountingRunSuite:
    """The real ``run_suite``, counting its calls per member."""

    def __init__(self) -> None:
        self.real = robustvote.attacks.run_suite
        self.members: list[str] = []

    def __call__(self, target, *args, **kwargs):
        self.members.append(target.names[0])
        return self.real(target, *args, **kwargs)


def run_select(pool: Path, out: Path, cifar_dir: Path, *extra: str):
    arguments = ["select", "--pool", str(pool), "--suite", str(pool.parent / "cheap.yaml"), "--n", "8",
                 "--data-dir", str(cifar_dir), "--device", "cpu", "--out", str(out), "--sizes", "3,5", *extra]
    return CliRunner().invoke(main, arguments)


@pytest.fixture(scope="module")
def first_selection(fast_pool: Path, cifar_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("selection")
    patch = pytest.MonkeyPatch()
    counter = CountingRunSuite()
    patch.setattr(robustvote.attacks, "run_suite", counter)
    try:
        result = run_select(fast_pool, out, cifar_dir)
    finally:
        patch.undo()
    return out, result, counter.members


def test_select_writes_report(first_selection) -> None:
    out, result, attacked = first_selection
    assert result.exit_code == 0, result.output
    assert attacked == FAST_MEMBERS
    for name in ("matrix.json", "members.csv", "pairs.csv", "heatmap.png", "subsets.csv", "selection.json",
                 "best_k3.yaml", "best_k5.yaml"):
        assert (out / name).is_file(), name
    record = json.loads((out / "selection.json").read_text())
    assert record["data_indices"] == "test[5000:5008]"
    assert [size["method"] for size in record["sizes"]] == ["exhaustive", "exhaustive"]
    best = load_pool_file(out / "best_k3.yaml")
    assert len(best.members) == 3
    assert record["sizes"][0]["top"][0]["members"] == "+".join(best.member_names())
    assert "test[5000:5008]" in result.stdout


def test_select_reuses_cache(first_selection, fast_pool: Path, cifar_dir: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    out, _, _ = first_selection
    counter = CountingRunSuite()
    monkeypatch.setattr(robustvote.attacks, "run_suite", counter)
    before = (out / "matrix.json").read_text()
    result = run_select(fast_pool, out, cifar_dir)
    assert result.exit_code == 0, result.output
    assert counter.members == []
    assert "0 member(s) attacked, 5 reused" in result.stdout
    assert (out / "matrix.json").read_text() == before


def test_changed_member_invalidates_its_row(first_selection, fast_pool: Path, cifar_dir: Path,
                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, _, _ = first_selection
    work = tmp_path / "out"
    shutil.copytree(out, work)
    raw = yaml.safe_load(fast_pool.read_text())
    changed = raw["members"][1]
    moved = tmp_path / Path(changed["path"]).name
    shutil.copy(load_pool_file(fast_pool).subset([changed["name"]]).members[0].path, moved)
    changed["path"] = str(moved)
    pool = tmp_path / "moved.yaml"
    pool.write_text(yaml.safe_dump(raw, sort_keys=False))
    (tmp_path / "cheap.yaml").write_text(yaml.safe_dump(CHEAP_SUITE))

    counter = CountingRunSuite()
    monkeypatch.setattr(robustvote.attacks, "run_suite", counter)
    result = run_select(pool, work, cifar_dir)
    assert result.exit_code == 0, result.output
    assert counter.members == [changed["name"]]
    # Same weights at a new path: the recomputed row must equal the old one.
    _, _, old_rows = load_cache(out / "matrix.json")
    _, _, new_rows = load_cache(work / "matrix.json")
    old = {row.name: row for row in old_rows}[changed["name"]]
    new = {row.name: row for row in new_rows}[changed["name"]]
    assert new.key != old.key
    assert np.array_equal(new.robust, old.robust)
    assert np.array_equal(new.adv_labels, old.adv_labels)


def test_select_keeps_finished_rows_when_interrupted(fast_pool: Path, cifar_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    real = robustvote.attacks.run_suite
    calls: list[str] = []

    def interrupted(target, *args, **kwargs):
        # An interruption cannot be caused on demand, so the second member's attack raises one.
        calls.append(target.names[0])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(target, *args, **kwargs)

    monkeypatch.setattr(robustvote.attacks, "run_suite", interrupted)
    result = run_select(fast_pool, tmp_path, cifar_dir)
    assert result.exit_code == 130
    _, _, rows = load_cache(tmp_path / "matrix.json")
    assert [row.name for row in rows] == FAST_MEMBERS[:1]


def test_select_rejects_cache_of_other_data(first_selection, fast_pool: Path, cifar_dir: Path) -> None:
    out, _, _ = first_selection
    before = (out / "matrix.json").read_bytes()
    result = run_select(fast_pool, out, cifar_dir, "--start", "6000")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "start: cached 5000, requested 6000" in lines[0]
    assert "--recompute" in lines[0]
    assert (out / "matrix.json").read_bytes() == before


@pytest.mark.parametrize("sizes, message", [("9", "size 9 is larger than the pool of 5"),
                                            ("3,4", "invalid subset size 4"),
                                            ("three", "invalid --sizes 'three'")])
def test_select_rejects_bad_sizes(fast_pool: Path, cifar_dir: Path, tmp_path: Path, sizes: str, message: str) -> None:
    result = run_select(fast_pool, tmp_path, cifar_dir, "--sizes", sizes)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert message in lines[0]
    assert not (tmp_path / "matrix.json").exists()


def test_overlapping_slices_warn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="robustvote"):
        warn_on_overlap("test", 996, 8, 0, 1000)
        warn_on_overlap("test", 5000, 500, 0, 1000)
        warn_on_overlap("train", 0, 500, 0, 1000)
    assert len(caplog.records) == 1
    assert "shares 4 images" in caplog.records[0].getMessage()


def test_select_recompute_replaces_cache(first_selection, fast_pool: Path, cifar_dir: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out, _, _ = first_selection
    work = tmp_path / "out"
    shutil.copytree(out, work)
    counter = CountingRunSuite()
    monkeypatch.setattr(robustvote.attacks, "run_suite", counter)
    result = run_select(fast_pool, work, cifar_dir, "--start", "6000", "--recompute")
    assert result.exit_code == 0, result.output
    assert counter.members == FAST_MEMBERS
    assert "will be replaced" in result.stderr
    setup, _, rows = load_cache(work / "matrix.json")
    assert setup.start == 6000
    assert [row.name for row in rows] == FAST_MEMBERS
