"""Leaderboards from attack run folders: columns, merging reruns, atomic writes, bad folders."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from robustvote.attacks.runner import SuiteResult
from robustvote.cli import main
from robustvote.errors import DataError
from robustvote.leaderboard import find_summaries, update_leaderboard, wilson_interval
from robustvote.runs import SUMMARY_FILE, build_summary, write_summary
from robustvote.threat import Norm, ThreatModel

REQUIRED_COLUMNS = [
    "model", "members", "n_members", "dataset", "threat_model", "eps", "n", "clean_accuracy",
    "robust_accuracy", "seed", "data_indices", "commit", "runtime_s", "flags",
]
THREAT = ThreatModel(Norm.LINF, 2 / 255)


def suite_result(clean: list[bool], after: dict[str, list[bool]], flags: list[str] | None = None) -> SuiteResult:
    """A suite result over len(clean) examples; ``after`` maps each attack to its cumulative mask."""
    names = list(after)
    per_attack = {name: torch.tensor(mask) for name, mask in after.items()}
    return SuiteResult(
        attack_names=names,
        clean_correct=torch.tensor(clean),
        robust=per_attack[names[-1]],
        per_attack_robust=per_attack,
        adv_labels=torch.zeros(len(clean), dtype=torch.int64),
        counts={name: {"forward": 10, "backward": 5} for name in names},
        flags=flags or [],
        runtime_s={name: 1.0 for name in names},
        audit={name: {} for name in names},
    )


def write_run(folder: Path, model: str, members: list[str], result: SuiteResult, *,
              complete: bool = True, eps: float = 2 / 255) -> Path:
    summary = build_summary(result, model=model, members=members, dataset="cifar10",
                            threat=ThreatModel(Norm.LINF, eps), seed=0,
                            data_indices=f"test[0:{result.n}]", complete=complete)
    folder.mkdir(parents=True, exist_ok=True)
    write_summary(folder, summary)
    return folder


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    clean = [True] * 8 + [False] * 2
    return {
        "a": write_run(tmp_path / "run-a", "a", ["a"], suite_result(
            clean, {"apgd-ce": [True] * 6 + [False] * 4, "apgd-t": [True] * 5 + [False] * 5})),
        "vote": write_run(tmp_path / "run-vote", "vote(a+b+c)", ["a", "b", "c"], suite_result(
            clean, {"apgd-ce": [True] * 7 + [False] * 3, "vote-pgd": [True] * 6 + [False] * 4},
            flags=["vanishing-gradients: the vote has zero gradient; trust rays"])),
    }


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False)


def test_wilson_interval_known_value() -> None:
    low, high = wilson_interval(0.5, 100)
    assert low == pytest.approx(0.4038, abs=1e-4)
    assert high == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0.0, 50)[0] == 0.0


def test_leaderboard_has_required_columns(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "board" / "leaderboard.csv"
    update_leaderboard([runs["a"], runs["vote"]], out)
    frame = read_csv(out)
    for column in REQUIRED_COLUMNS + ["robust_apgd-ce", "robust_apgd-t", "robust_vote-pgd"]:
        assert column in frame.columns, column
    assert len(frame) == 2
    vote = frame[frame["model"] == "vote(a+b+c)"].iloc[0]
    assert vote["members"] == "a+b+c"
    assert vote["n_members"] == 3
    assert vote["clean_accuracy"] == pytest.approx(0.8)
    assert float(vote["robust_apgd-ce"]) == 0.7
    assert float(vote["robust_vote-pgd"]) == 0.6
    assert vote["robust_apgd-t"] == ""  # the vote's suite had no apgd-t
    assert vote["robust_accuracy"] == pytest.approx(0.6)
    assert vote["data_indices"] == "test[0:10]"
    assert json.loads(vote["flags"]) == ["vanishing-gradients: the vote has zero gradient; trust rays"]
    # Sorted by robust accuracy, best first.
    assert frame["model"].tolist() == ["vote(a+b+c)", "a"]


def test_markdown_sorted_by_robust_accuracy(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "leaderboard.csv"
    update_leaderboard([runs["a"], runs["vote"]], out)
    text = (tmp_path / "leaderboard.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ") and "`" in line]
    assert [line.split("|")[2].strip() for line in table] == ["`vote(a+b+c)`", "`a`"]
    assert "**60.0**" in table[0]
    assert "## cifar10, Linf eps=2/255" in text
    assert "- `vote(a+b+c)`: vanishing-gradients: the vote has zero gradient; trust rays" in text


def test_rerun_updates_row_without_duplicates(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "leaderboard.csv"
    update_leaderboard([runs["a"], runs["vote"]], out)
    rerun = write_run(tmp_path / "run-a-again", "a", ["a"], suite_result(
        [True] * 10, {"apgd-ce": [True] * 9 + [False], "apgd-t": [True] * 9 + [False]}))
    other_eps = write_run(tmp_path / "run-a-8", "a", ["a"], suite_result(
        [True] * 10, {"apgd-ce": [False] * 10, "apgd-t": [False] * 10}), eps=8 / 255)
    update_leaderboard([rerun, other_eps], out)
    frame = read_csv(out)
    assert len(frame) == 3
    rows_a = frame[(frame["model"] == "a") & (frame["eps"].round(6) == round(2 / 255, 6))]
    assert len(rows_a) == 1
    assert rows_a.iloc[0]["robust_accuracy"] == pytest.approx(0.9)
    assert rows_a.iloc[0]["run_dir"] == str(rerun)
    assert (frame["model"] == "vote(a+b+c)").sum() == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_other_slice_keeps_its_own_row(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "leaderboard.csv"
    update_leaderboard([runs["a"]], out)
    smaller = write_run(tmp_path / "run-a-small", "a", ["a"], suite_result(
        [True] * 4, {"apgd-ce": [True] * 4, "apgd-t": [True] * 4}))
    update_leaderboard([smaller], out)
    frame = read_csv(out)
    assert len(frame) == 2
    assert sorted(frame["data_indices"]) == ["test[0:10]", "test[0:4]"]


def test_each_member_folder_gives_one_row_per_member(tmp_path: Path) -> None:
    folder = tmp_path / "each"
    for name in ("x", "y"):
        write_run(folder / name, name, [name], suite_result([True, True], {"apgd-ce": [True, False]}))
    out = tmp_path / "leaderboard.csv"
    rows, problems = update_leaderboard([folder], out)
    assert problems == []
    assert sorted(row["model"] for row in rows) == ["x", "y"]


def test_nested_sweep_folders_found_in_numeric_order(tmp_path: Path) -> None:
    # attack --each-member with an eps sweep writes MEMBER/eps-N-255/summary.json.
    folder = tmp_path / "sweep"
    for name in ("x", "y"):
        for eps in (16, 4, 8):
            write_run(folder / name / f"eps-{eps}-255", name, [name],
                      suite_result([True, True], {"apgd-ce": [True, False]}), eps=eps / 255)
    found = find_summaries(folder)
    assert [p.relative_to(folder).as_posix() for p in found] == [
        f"{name}/eps-{eps}-255" for name in ("x", "y") for eps in (4, 8, 16)
    ]
    rows, problems = update_leaderboard([folder], tmp_path / "leaderboard.csv")
    assert problems == []
    assert len(rows) == 6


def test_symlinked_run_folders_followed(tmp_path: Path) -> None:
    run = write_run(tmp_path / "runs" / "x", "x", ["x"], suite_result([True, True], {"apgd-ce": [True, False]}))
    board = tmp_path / "board"
    board.mkdir()
    (board / "x").symlink_to(run, target_is_directory=True)
    (board / "loop").symlink_to(board, target_is_directory=True)
    assert find_summaries(board) == [board / "x"]


@pytest.mark.parametrize("damage, reason", [
    ("incomplete", "incomplete"),
    ("version", "incompatible format_version 99"),
    ("json", "cannot parse"),
    ("missing", "summary.json not found"),
])
def test_bad_run_folder_named_and_nothing_written(runs: dict[str, Path], tmp_path: Path, damage: str, reason: str) -> None:
    out = tmp_path / "leaderboard.csv"
    update_leaderboard([runs["a"]], out)
    before = out.read_bytes()
    bad = tmp_path / "run-bad"
    if damage == "incomplete":
        write_run(bad, "b", ["b"], suite_result([True], {"apgd-ce": [True]}), complete=False)
    elif damage == "version":
        write_run(bad, "b", ["b"], suite_result([True], {"apgd-ce": [True]}))
        summary = json.loads((bad / SUMMARY_FILE).read_text())
        summary["format_version"] = 99
        (bad / SUMMARY_FILE).write_text(json.dumps(summary))
    elif damage == "json":
        bad.mkdir()
        (bad / SUMMARY_FILE).write_text("{truncated")
    else:
        bad.mkdir()

    with pytest.raises(DataError) as error:
        update_leaderboard([runs["vote"], bad], out)
    assert str(bad) in str(error.value)
    assert reason in str(error.value)
    assert out.read_bytes() == before

    rows, problems = update_leaderboard([runs["vote"], bad], out, skip_invalid=True)
    assert [problem.run_dir for problem in problems] == [str(bad)]
    assert len(rows) == 2


def test_cli_unreadable_run_folder_exits_2(runs: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-run"
    result = CliRunner().invoke(main, ["leaderboard", str(runs["a"]), str(missing), "-o", str(tmp_path / "lb.csv")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(missing) in lines[0]
    assert not (tmp_path / "lb.csv").exists()


def test_cli_writes_csv_and_markdown(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "lb.csv"
    result = CliRunner().invoke(main, ["leaderboard", str(runs["a"]), str(runs["vote"]), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 row(s)" in result.stdout
    assert out.is_file()
    assert (tmp_path / "lb.md").is_file()


def test_real_attack_runs_enter_leaderboard(shared_pool: Path, cifar_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    common = ["--pool", str(shared_pool), "--method", "apgd-ce", "--n", "8", "--data-dir", str(cifar_dir),
              "--device", "cpu"]
    vote = runner.invoke(main, ["attack", *common, "--members", "sdp_a_mix,sdp_a_adv4,oval21_wide_kw",
                                "--out", str(tmp_path / "vote")])
    assert vote.exit_code == 0, vote.output
    each = runner.invoke(main, ["attack", *common, "--members", "sdp_a_mix,sdp_a_adv4", "--each-member",
                                "--out", str(tmp_path / "each")])
    assert each.exit_code == 0, each.output

    out = tmp_path / "leaderboard.csv"
    result = runner.invoke(main, ["leaderboard", str(tmp_path / "vote"), str(tmp_path / "each"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    frame = read_csv(out)
    assert sorted(frame["model"]) == ["sdp_a_adv4", "sdp_a_mix", "vote(sdp_a_mix+sdp_a_adv4+oval21_wide_kw)"]
    assert set(frame["data_indices"]) == {"test[0:8]"}
    assert set(frame["suite"]) == {"custom"}
    assert (frame["robust_accuracy"] <= frame["clean_accuracy"]).all()
    assert (frame["robust_accuracy"] == frame["robust_apgd-ce"]).all()
