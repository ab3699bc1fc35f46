"""`robustvote eval` end to end: reference accuracies, the CSV, and one-line errors."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from cli_checks import assert_one_line_error

from robustvote.cli import main

# Clean accuracy (%) of the shared members on the JPEG-derived CIFAR-10 test copy, measured
# independently of robustvote (onnxruntime and hand-built models); see docs/shared-pool.md.
REFERENCE_FIRST_1000 = {
    "resnet_4b": 76.1, "sri_resnet_b": 80.3, "oval21_wide_kw": 63.4, "kw_small_8px": 30.7,
    "sdp_a_mix": 74.8, "sdp_a_adv4": 56.9, "vit_ibp_3_3_8": 61.3, "vit_pgd_2_3_16": 60.8,
}
REFERENCE_ALL_10000 = {
    "resnet_4b": 76.5, "sri_resnet_b": 79.4, "oval21_wide_kw": 61.1, "kw_small_8px": 27.6,
    "sdp_a_mix": 73.2, "sdp_a_adv4": 56.0, "vit_ibp_3_3_8": 61.6, "vit_pgd_2_3_16": 59.6,
}
TOLERANCE_POINTS = 0.3


def run_eval(*arguments: str):
    return CliRunner().invoke(main, ["eval", *arguments])


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as handle:
        return {row["model"]: row for row in csv.DictReader(handle)}


def test_eval_reproduces_reference_accuracy(shared_pool: Path, cifar_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.csv"
    result = run_eval("--pool", str(shared_pool), "--data-dir", str(cifar_dir), "--n", "1000", "--csv", str(out))
    assert result.exit_code == 0, result.output
    rows = read_csv(out)
    for name, reference in REFERENCE_FIRST_1000.items():
        measured = 100 * float(rows[name]["clean_accuracy"])
        assert abs(measured - reference) <= TOLERANCE_POINTS, f"{name}: {measured:.2f} vs {reference}"
        assert rows[name]["n"] == "1000"


@pytest.mark.slow
def test_eval_full_test_set_reference(shared_pool: Path, cifar_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.csv"
    result = run_eval("--pool", str(shared_pool), "--data-dir", str(cifar_dir), "--n", "10000", "--csv", str(out))
    assert result.exit_code == 0, result.output
    rows = read_csv(out)
    for name, reference in REFERENCE_ALL_10000.items():
        measured = 100 * float(rows[name]["clean_accuracy"])
        assert abs(measured - reference) <= TOLERANCE_POINTS, f"{name}: {measured:.2f} vs {reference}"


def test_eval_vote_rows_and_tie_rules(shared_pool: Path, cifar_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.csv"
    result = run_eval("--pool", str(shared_pool), "--data-dir", str(cifar_dir), "--n", "200",
                      "--members", "resnet_4b,sdp_a_mix", "--csv", str(out))
    assert result.exit_code == 0, result.output
    rows = read_csv(out)
    assert set(rows) == {"resnet_4b", "sdp_a_mix", "vote[conservative]", "vote[lowest-index]"}
    conservative = float(rows["vote[conservative]"]["clean_accuracy"])
    plain = float(rows["vote[lowest-index]"]["clean_accuracy"])
    # With two members every disagreement is a tie: the conservative vote is correct only where
    # both members are, and the plain rule never scores lower.
    assert conservative <= plain
    assert conservative <= min(float(rows["resnet_4b"]["clean_accuracy"]), float(rows["sdp_a_mix"]["clean_accuracy"]))
    assert "vote[conservative]" in result.stdout


def write_pool(folder: Path, members: list[dict]) -> Path:
    path = folder / "pool.yaml"
    path.write_text(yaml.safe_dump({"dataset": "cifar10", "threat_model": "Linf", "eps": "2/255", "members": members}))
    return path


def test_error_missing_pool_file(tmp_path: Path, cifar_dir: Path) -> None:
    result = run_eval("--pool", str(tmp_path / "absent.yaml"), "--data-dir", str(cifar_dir))
    assert_one_line_error(result, "absent.yaml", "not found")


def test_error_missing_weight_file(tmp_path: Path, cifar_dir: Path) -> None:
    pool = write_pool(tmp_path, [{"name": "ghost", "source": "onnx", "path": "ghost.onnx"}])
    result = run_eval("--pool", str(pool), "--data-dir", str(cifar_dir), "--n", "10")
    assert_one_line_error(result, "ghost.onnx", "not found", "'ghost'")


def test_error_wrong_sha256(tmp_path: Path, cifar_dir: Path, zoo_dir: Path) -> None:
    pool = write_pool(tmp_path, [{"name": "resnet_4b", "source": "onnx", "sha256": "a" * 64,
                                  "path": str(zoo_dir / "weights" / "resnet_4b.onnx")}])
    result = run_eval("--pool", str(pool), "--data-dir", str(cifar_dir), "--n", "10")
    assert_one_line_error(result, "sha256 mismatch", "resnet_4b.onnx")


def test_error_unknown_source(tmp_path: Path, cifar_dir: Path) -> None:
    pool = write_pool(tmp_path, [{"name": "m", "source": "keras", "path": "m.h5"}])
    result = run_eval("--pool", str(pool), "--data-dir", str(cifar_dir))
    assert_one_line_error(result, "unknown source kind 'keras'", "onnx")


def test_error_incomplete_member(tmp_path: Path, cifar_dir: Path) -> None:
    pool = write_pool(tmp_path, [{"name": "half", "source": "state_dict", "path": "x.pt"}])
    result = run_eval("--pool", str(pool), "--data-dir", str(cifar_dir))
    assert_one_line_error(result, "member 'half'", "architecture")


def test_error_malformed_yaml(tmp_path: Path, cifar_dir: Path) -> None:
    pool = tmp_path / "pool.yaml"
    pool.write_text("members: [unclosed\n")
    result = run_eval("--pool", str(pool), "--data-dir", str(cifar_dir))
    assert_one_line_error(result, "not valid YAML")


def test_error_architecture_mismatch(tmp_path: Path, cifar_dir: Path, zoo_dir: Path) -> None:
    pool = write_pool(tmp_path, [{"name": "vit_as_cnn", "source": "state_dict",
                                  "architecture": "robustvote.zoo.architectures:cnn_a",
                                  "path": str(zoo_dir / "weights" / "cifar_small_8px.pth"), "key": "err"}])
    result = run_eval("--pool", str(pool), "--data-dir", str(cifar_dir), "--n", "10")
    assert_one_line_error(result, "not a state dict", "key")


def test_error_empty_pool(tmp_path: Path, cifar_dir: Path) -> None:
    pool = write_pool(tmp_path, [])
    result = run_eval("--pool", str(pool), "--data-dir", str(cifar_dir))
    assert_one_line_error(result, "'members' is empty")


def test_error_slice_out_of_range(shared_pool: Path, cifar_dir: Path) -> None:
    result = run_eval("--pool", str(shared_pool), "--data-dir", str(cifar_dir), "--start", "9990", "--n", "100")
    assert_one_line_error(result, "n=100", "at most 10")


def test_error_unknown_member(shared_pool: Path, cifar_dir: Path) -> None:
    result = run_eval("--pool", str(shared_pool), "--data-dir", str(cifar_dir), "--members", "resnet_4b,resnet_5b")
    assert_one_line_error(result, "resnet_5b")


def test_error_unreachable_robustbench(tmp_path: Path, cifar_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from robustvote.compat import import_robustbench

    utils = import_robustbench()

    def fail_download(gdrive_id: str, path: str) -> None:
        # Stands in for a network that cannot be reached, which the test cannot cause itself.
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(utils, "download_gdrive_new", fail_download)
    pool = write_pool(tmp_path, [{"name": "Ding2020MMA", "source": "robustbench", "model_dir": "cache"}])
    result = run_eval("--pool", str(pool), "--data-dir", str(cifar_dir), "--n", "10")
    assert_one_line_error(result, str(tmp_path / "cache" / "cifar10" / "Linf" / "Ding2020MMA.pt"), "download failed")
