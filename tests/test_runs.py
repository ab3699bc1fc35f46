"""`robustvote attack` and its run folders: contents, refusal to overwrite, and resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli_checks import assert_one_line_error

from robustvote.attacks import load_suite, run_suite
from robustvote.cli import main
from robustvote.ensemble import VotingEnsemble
from robustvote.threat import Norm, ThreatModel

MEMBERS = "sdp_a_mix,sdp_a_adv4,oval21_wide_kw"
TINY_SUITE = """\
name: tiny
attacks:
  - attack: vote-pgd
    steps: 6
    n_targets: 2
  - attack: vote-transfer
    steps: 3
    n_subsets: 1
  - attack: rays
    queries: 20
"""
# Slow enough per batch (about a second) that a kill lands between batches.
SLOW_SUITE = """\
name: slow
attacks:
  - attack: vote-pgd
    steps: 40
    n_targets: 3
    restarts: 2
"""
SUMMARY_KEYS = {
    "format_version", "model", "members", "n_members", "dataset", "threat_model", "eps", "n", "seed",
    "data_indices", "commit", "runtime_s", "clean_accuracy", "robust_accuracy", "attacks", "flags", "complete",
}
CONFIG_KEYS = {
    "format_version", "pool", "members", "suite", "norm", "eps", "seed", "split", "start", "n",
    "data_indices", "versions", "commit",
}


@pytest.fixture()
def suite_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SUITE)
    return path


def _arguments(shared_pool: Path, cifar_dir: Path, *extra: str) -> list[str]:
    return [
        "attack", "--pool", str(shared_pool), "--members", MEMBERS, "--data-dir", str(cifar_dir),
        "--device", "cpu", "--eps", "8/255", *extra,
    ]


def test_attack_writes_run_folder(shared_pool, cifar_dir, suite_file, tmp_path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main, _arguments(shared_pool, cifar_dir, "--suite", str(suite_file), "--n", "8", "--batch-size", "4", "--out", str(out)),
    )
    assert result.exit_code == 0, result.output
    assert "worst case" in result.stdout
    assert "vote-pgd" in result.stdout

    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["model"] == "vote(sdp_a_mix+sdp_a_adv4+oval21_wide_kw)"
    assert summary["n_members"] == 3
    assert summary["data_indices"] == "test[0:8]"
    assert summary["complete"] is True
    assert [a["name"] for a in summary["attacks"]] == ["vote-pgd", "vote-transfer", "rays"]
    assert summary["robust_accuracy"] <= summary["clean_accuracy"]
    assert summary["robust_accuracy"] == summary["attacks"][-1]["robust_accuracy"]
    assert summary["attacks"][2]["backward"] == 0

    config = json.loads((out / "config.json").read_text())
    assert CONFIG_KEYS <= set(config)
    assert config["eps"] == pytest.approx(8 / 255)
    assert [m["name"] for m in config["pool"]["members"]] == MEMBERS.split(",")
    assert all(m["sha256"] for m in config["pool"]["members"])
    assert config["suite"]["attacks"][0]["options"]["steps"] == 6
    assert sorted(p.name for p in (out / "outcomes").iterdir()) == ["batch-0000000.json", "batch-0000004.json"]


def test_nonempty_out_needs_resume(shared_pool, cifar_dir, suite_file, tmp_path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("something else")
    result = CliRunner().invoke(main, _arguments(shared_pool, cifar_dir, "--suite", str(suite_file), "--n", "4", "--out", str(out)))
    assert result.exit_code == 2
    assert str(out) in result.stderr
    assert "--resume" in result.stderr
    assert "Traceback" not in result.output


def test_resume_starts_missing_run(shared_pool, cifar_dir, suite_file, tmp_path) -> None:
    # One command line both starts a run and continues it, also with --each-member sub-folders.
    out = tmp_path / "fresh"
    arguments = _arguments(shared_pool, cifar_dir, "--suite", str(suite_file), "--n", "4", "--each-member",
                           "--out", str(out), "--resume")
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(MEMBERS.split(","))
    assert all((out / name / "summary.json").is_file() for name in MEMBERS.split(","))


def test_resume_into_foreign_folder_rejected(shared_pool, cifar_dir, suite_file, tmp_path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("something else")
    arguments = _arguments(shared_pool, cifar_dir, "--suite", str(suite_file), "--n", "4", "--out", str(out), "--resume")
    result = CliRunner().invoke(main, arguments)
    assert_one_line_error(result, "config.json not found in the non-empty folder", str(out))


def test_resume_with_other_eps_rejected(shared_pool, cifar_dir, suite_file, tmp_path) -> None:
    out = tmp_path / "run"
    runner = CliRunner()
    first = runner.invoke(main, _arguments(shared_pool, cifar_dir, "--suite", str(suite_file), "--n", "4", "--out", str(out)))
    assert first.exit_code == 0, first.output
    arguments = _arguments(shared_pool, cifar_dir, "--suite", str(suite_file), "--n", "4", "--out", str(out), "--resume")
    arguments[arguments.index("8/255")] = "4/255"
    second = runner.invoke(main, arguments)
    assert second.exit_code == 2
    assert "differs in eps" in second.stderr


def test_each_member_writes_subfolders(shared_pool, cifar_dir, tmp_path) -> None:
    out = tmp_path / "members"
    result = CliRunner().invoke(
        main, _arguments(shared_pool, cifar_dir, "--method", "apgd-ce", "--n", "4", "--each-member", "--out", str(out)),
    )
    assert result.exit_code == 0, result.output
    for name in MEMBERS.split(","):
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["model"] == name
        assert summary["members"] == [name]


def test_eps_sweep_folder_per_eps(shared_pool, cifar_dir, suite_file, tmp_path) -> None:
    out = tmp_path / "sweep"
    arguments = _arguments(shared_pool, cifar_dir, "--suite", str(suite_file), "--n", "4", "--out", str(out))
    arguments[arguments.index("8/255")] = "64/255,2/255"
    result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    low = json.loads((out / "eps-2-255" / "summary.json").read_text())
    high = json.loads((out / "eps-64-255" / "summary.json").read_text())
    assert low["eps"] == pytest.approx(2 / 255)
    assert high["eps"] == pytest.approx(64 / 255)
    assert high["robust_accuracy"] <= low["robust_accuracy"]
    assert high["robust_accuracy"] == 0.0


def test_method_and_suite_exclusive(shared_pool, cifar_dir, suite_file) -> None:
    result = CliRunner().invoke(main, _arguments(shared_pool, cifar_dir, "--method", "pgd", "--suite", str(suite_file), "--n", "2"))
    assert result.exit_code == 2
    assert "mutually exclusive" in result.stderr


def test_killed_run_resumes_without_redoing(shared_pool, cifar_dir, tmp_path, shared_members, test_slice) -> None:
    suite_path = tmp_path / "slow.yaml"
    suite_path.write_text(SLOW_SUITE)
    out = tmp_path / "killed"
    arguments = _arguments(shared_pool, cifar_dir, "--suite", str(suite_path), "--n", "24", "--batch-size", "4", "--out", str(out))
    # The shared_pool fixture has set ROBUSTVOTE_ZOO, which the child process inherits.
    environment = dict(os.environ)
    process = subprocess.Popen(
        [sys.executable, "-c", "from robustvote.cli import main; main()", *arguments],
        env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    outcomes = out / "outcomes"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        if outcomes.is_dir() and len(list(outcomes.glob("batch-*.json"))) >= 2:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed: " + process.stderr.read().decode()[-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)

    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in outcomes.glob("batch-*.json")}
    assert 2 <= len(finished) < 6
    assert not (out / "summary.json").exists()

    resumed = CliRunner().invoke(main, [*arguments, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    for name, identity in finished.items():
        path = outcomes / name
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == identity, f"{name} was recomputed"
    assert len(list(outcomes.glob("batch-*.json"))) == 6
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True
    assert summary["n"] == 24

    by_name = {m.name: m.model for m in shared_members}
    names = MEMBERS.split(",")
    uninterrupted = run_suite(
        VotingEnsemble([by_name[n] for n in names], names), test_slice.images[:24], test_slice.labels[:24],
        load_suite(suite_path), ThreatModel(Norm.LINF, 8 / 255), seed=0, batch_size=4, progress=False,
    )
    assert summary["robust_accuracy"] == pytest.approx(uninterrupted.robust_accuracy)
    assert summary["clean_accuracy"] == pytest.approx(uninterrupted.clean_accuracy)
