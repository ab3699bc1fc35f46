"""Agreement with a reference member: the counting rules, a real attack on the committed MatViT, the command."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli_checks import assert_one_line_error
from robustvote.agreement import agreement_rows, measure_agreement
from robustvote.attacks import suite_from_names
from robustvote.cli import main
from robustvote.errors import ConfigError
from robustvote.io import check_writable
from robustvote.threat import Norm, ThreatModel
from robustvote.zoo import load_members, load_pool_file

REPO_ROOT = Path(__file__).resolve().parent.parent
MATVIT_POOL = REPO_ROOT / "zoo" / "matvit-cifar10.yaml"
THREAT = ThreatModel(Norm.LINF, 2 / 255)


def test_rows_count_by_hand():
    labels = torch.tensor([0, 1, 2, 3])
    # Member 0 is the reference; the attack fooled it on examples 1 and 2 (into classes 5 and 6).
    clean = torch.tensor([[0, 1, 2, 9], [0, 1, 7, 9], [4, 4, 4, 4]])
    attacked = torch.tensor([[0, 5, 6, 9], [0, 5, 2, 8], [4, 5, 6, 4]])
    fooled = torch.tensor([False, True, True, False])
    ref, other, third = agreement_rows(["a", "b", "c"], "a", clean, attacked, labels, fooled)

    assert (ref.clean_agreement, ref.attacked_agreement, ref.fooled_agreement, ref.transfer_rate) == (1, 1, 1, 1)
    assert ref.transfer_accuracy == 0.25
    assert ref.clean_accuracy == 0.75
    assert other.clean_agreement == 0.75  # differs on example 2
    assert other.attacked_agreement == 0.5  # same on examples 0 and 1
    assert other.fooled_agreement == 0.5  # follows the reference to class 5, not to class 6
    # Only example 1 counts for the transfer rate: b is wrong on example 2 even when clean.
    assert other.transfer_rate == 1.0
    assert other.transfer_accuracy == 0.5
    assert third.clean_agreement == 0.0
    assert third.fooled_agreement == 1.0
    assert math.isnan(third.transfer_rate)  # c is wrong on both fooled examples when clean
    assert ref.n == 4
    assert ref.n_fooled == 2


def test_rows_without_fooled_examples_are_nan():
    labels = torch.tensor([0, 1])
    predictions = torch.tensor([[0, 1], [1, 1]])
    rows = agreement_rows(["a", "b"], "a", predictions, predictions, labels, torch.zeros(2, dtype=torch.bool))
    assert math.isnan(rows[1].fooled_agreement)
    assert math.isnan(rows[1].transfer_rate)
    assert rows[1].clean_agreement == 0.5


@pytest.fixture(scope="module")
def matvit_members():
    if not MATVIT_POOL.is_file():
        pytest.skip(f"committed MatViT pool {MATVIT_POOL} not found")
    pool = load_pool_file(MATVIT_POOL)
    return load_members(pool.subset(["matvit_S", "matvit_L", "matvit_XL"]))


def test_reference_attack_consistent(matvit_members, test_slice):
    images, labels = test_slice.images[:48], test_slice.labels[:48]
    models, names = [m.model for m in matvit_members], [m.name for m in matvit_members]
    # Three batches, so the adversarial images of later batches must line up with their labels.
    rows, result = measure_agreement(
        models, names, "matvit_XL", images, labels, suite_from_names(["apgd-ce"]), THREAT, batch_size=16
    )
    by_name = {row.member: row for row in rows}
    reference = by_name["matvit_XL"]
    # The reference's accuracy on its own worst-case examples is the attack's robust accuracy.
    assert reference.transfer_accuracy == pytest.approx(result.robust_accuracy)
    assert reference.clean_accuracy == pytest.approx(result.clean_accuracy)
    assert reference.n_fooled == int((result.clean_correct & ~result.robust).sum())
    assert reference.n_fooled > 0
    assert (result.adv_images - images).abs().max() <= THREAT.eps + 1e-6
    with torch.no_grad():
        again = models[names.index("matvit_XL")](result.adv_images).argmax(1)
    assert float((again == result.adv_labels).float().mean()) > 0.95
    for row in rows:
        assert row.transfer_accuracy <= row.clean_accuracy + reference.n_fooled / row.n
    # Nested submodels share most of the reference's clean decisions.
    assert by_name["matvit_S"].clean_agreement > 0.6


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args))


def test_command_writes_csv(cifar_dir, matvit_members, tmp_path):
    out = tmp_path / "agreement.csv"
    result = run_cli(
        "agreement", "--pool", str(MATVIT_POOL), "--members", "matvit_S,matvit_M", "--reference", "matvit_XL",
        "--method", "apgd-ce", "--eps", "2/255", "--n", "32", "--data-dir", str(cifar_dir), "--csv", str(out),
    )
    assert result.exit_code == 0, result.output
    assert "agreement with matvit_XL" in result.stdout
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["member"] for r in rows] == ["matvit_XL", "matvit_S", "matvit_M"]
    assert all(r["reference"] == "matvit_XL" and r["n"] == "32" and r["suite"] == "custom" for r in rows)
    assert float(rows[0]["clean_agreement"]) == 1.0
    assert rows[0]["data_indices"] == "test[0:32]"
    assert all(r["transfer_rate"] != "" for r in rows)  # NaN is written as "nan", not left empty


def test_unknown_reference_one_line(cifar_dir):
    result = run_cli("agreement", "--pool", str(MATVIT_POOL), "--reference", "matvit_XXL", "--data-dir", str(cifar_dir))
    assert_one_line_error(result, "--reference 'matvit_XXL'", "matvit_XL")


def test_unwritable_csv_fails_early(cifar_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for command in ("agreement", "eval"):
        extra = ["--reference", "matvit_XL"] if command == "agreement" else []
        result = run_cli(command, "--pool", str(MATVIT_POOL), *extra, "--data-dir", str(cifar_dir), "--n", "10000",
                         "--csv", str(blocker / "out.csv"))
        assert_one_line_error(result, "--csv", "is a file, not a folder")
    result = run_cli("eval", "--pool", str(MATVIT_POOL), "--data-dir", str(cifar_dir), "--csv", str(tmp_path))
    assert_one_line_error(result, "is a directory")


class _FlippingMember(torch.nn.Module):
    """Predicts class 0 until it has been called ``flip_after`` times, then class 1."""

    def __init__(self, flip_after: int | None = None) -> None:
        super().__init__()
        self.flip_after = flip_after
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        flipped = self.flip_after is not None and self.calls > self.flip_after
        logits = torch.zeros(x.shape[0], 10)
        logits[:, 1 if flipped else 0] = 1.0
        return logits + 0 * x.flatten(1).sum(1, keepdim=True)


def test_reference_keeps_runner_judgement():
    images, labels = torch.rand(4, 3, 4, 4), torch.zeros(4, dtype=torch.long)
    suite = suite_from_names(["pgd"], {"pgd": {"steps": 1}})
    counter = _FlippingMember()
    measure_agreement([counter], ["ref"], "ref", images, labels, suite, THREAT)
    # Flip only on the last call, the second classification of the attacked images.
    member = _FlippingMember(flip_after=counter.calls - 1)
    rows, result = measure_agreement([member], ["ref"], "ref", images, labels, suite, THREAT)
    assert result.robust_accuracy == 1.0
    assert rows[0].transfer_accuracy == 1.0
    assert any(flag.startswith("recheck-mismatch: 4 of 4") for flag in result.flags)


def test_unwritable_folder_fails_early(tmp_path, monkeypatch):
    # Root ignores permission bits, so a folder that rejects new files is simulated here.
    def reject(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("robustvote.io.tempfile.TemporaryFile", reject)
    with pytest.raises(ConfigError, match="cannot write in .*Permission denied.*choose a writable location"):
        check_writable(tmp_path / "out.csv", "--csv")
