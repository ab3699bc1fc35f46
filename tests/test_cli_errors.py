"""One-line errors for option checks, unwritable outputs and threat models no attack supports."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from cli_checks import assert_one_line_error

from robustvote.cli import main


def test_option_check_is_one_line(shared_pool: Path) -> None:
    result = CliRunner().invoke(main, ["eval", "--pool", str(shared_pool), "--batch-size", "0"])
    assert_one_line_error(result, "--batch-size", "positive batch size", "--help")


def test_unknown_command_is_one_line() -> None:
    result = CliRunner().invoke(main, ["evaluate"])
    assert_one_line_error(result, "No such command 'evaluate'")


def test_unwritable_csv_is_one_line(shared_pool: Path, cifar_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(main, ["eval", "--pool", str(shared_pool), "--data-dir", str(cifar_dir),
                                       "--members", "sdp_a_mix", "--n", "10", "--csv", str(blocker / "eval.csv")])
    assert_one_line_error(result, str(blocker), "is a file, not a folder")
    # The path is checked before the evaluation, so no table was computed and then lost.
    assert "sdp_a_mix" not in result.stdout


def test_other_norm_needs_eps(shared_pool: Path, cifar_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["attack", "--pool", str(shared_pool), "--members", "sdp_a_mix",
                                       "--method", "apgd-ce", "--norm", "l2", "--n", "4",
                                       "--data-dir", str(cifar_dir), "--out", str(tmp_path / "run")])
    assert_one_line_error(result, "--norm L2", "give --eps")
    assert not (tmp_path / "run").exists()


def test_suite_without_norm_support(shared_pool: Path, cifar_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["attack", "--pool", str(shared_pool), "--members", "sdp_a_mix",
                                       "--method", "rays", "--norm", "l2", "--eps", "0.5", "--n", "4",
                                       "--data-dir", str(cifar_dir), "--out", str(tmp_path / "run")])
    assert_one_line_error(result, "supports the L2 norm")
    assert not (tmp_path / "run").exists()


def test_empty_list_item_rejected(shared_pool: Path) -> None:
    for option, value in (("--eps", "2/255,,4/255"), ("--method", "apgd-ce,")):
        result = CliRunner().invoke(main, ["attack", "--pool", str(shared_pool), option, value, "--n", "4"])
        assert_one_line_error(result, option, "empty item")


def test_unknown_attack_target_leaves_no_folder(shared_pool: Path, cifar_dir: Path, tmp_path: Path) -> None:
    suite = tmp_path / "ghost.yaml"
    suite.write_text("name: ghost\nattacks:\n  - attack: apgd-ce\n    model: ghost\n")
    result = CliRunner().invoke(main, ["attack", "--pool", str(shared_pool), "--members", "sdp_a_mix,resnet_4b",
                                       "--suite", str(suite), "--n", "4", "--data-dir", str(cifar_dir),
                                       "--out", str(tmp_path / "run")])
    assert_one_line_error(result, "model 'ghost'", "sdp_a_mix, resnet_4b")
    assert not (tmp_path / "run").exists()
