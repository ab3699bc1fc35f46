"""Group-lasso pruning: the matrix-sensing property, physical shrinking, and ``robustvote prune``."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from torch import nn

from cli_checks import assert_one_line_error

from robustvote.cli import main
from robustvote.errors import ConfigError
from robustvote.pruning import GroupLasso, PruneRule, UnitGroup, count_parameters, prune_model, select_units, unit_norms
from robustvote.pruning.matrix_sensing import DescentConfig, make_problem, train_prune_finetune
from robustvote.zoo import load_member, load_members, load_pool_file
from robustvote.zoo.architectures import cnn_a

RANK = 2
RELATIVE_THRESHOLD = 0.1


def _sensing_run(lam: float):
    problem = make_problem(20, RANK, 200, noise=0.0, seed=0)
    return train_prune_finetune(
        problem, 20, DescentConfig(steps=3000, lam=lam), PruneRule(RELATIVE_THRESHOLD, relative=True),
        DescentConfig(steps=1000),
    )


@pytest.fixture(scope="module")
def lasso_run():
    return _sensing_run(lam=0.02)


@pytest.fixture(scope="module")
def plain_run():
    return _sensing_run(lam=0.0)


def test_sensing_lasso_keeps_rank_columns(lasso_run):
    assert lasso_run.survivors == RANK


def test_sensing_lasso_finetune_recovers_truth(lasso_run):
    assert lasso_run.after.test < 1e-3
    assert lasso_run.after.test < lasso_run.before.test


def test_sensing_without_lasso_spreads_columns(plain_run):
    norms = plain_run.norms
    comparable = int((norms >= 0.2 * norms.max()).sum())
    assert comparable > RANK
    assert plain_run.survivors > RANK


def test_select_units_relative_and_target():
    norms = torch.tensor([0.5, 0.0, 2.0, 0.1, 1.0])
    assert select_units(norms, PruneRule(0.2, relative=True)).tolist() == [2, 4, 0]
    assert select_units(norms, PruneRule(0.5)).tolist() == [2, 4, 0]
    assert select_units(norms, PruneRule(target_width=2)).tolist() == [2, 4]
    assert select_units(norms, PruneRule(0.05, target_width=10)).tolist() == [2, 4, 0, 3]


def test_select_units_rejects_removing_all():
    with pytest.raises(ConfigError, match="removes all 3 units"):
        select_units(torch.tensor([0.1, 0.2, 0.3]), PruneRule(1.0))


def test_prune_rule_rejects_bad_values():
    with pytest.raises(ConfigError, match="no pruning rule"):
        PruneRule()
    with pytest.raises(ConfigError, match="relative threshold 2"):
        PruneRule(2.0, relative=True)
    with pytest.raises(ConfigError, match="target width 0"):
        PruneRule(target_width=0)


def test_unit_group_parse():
    assert UnitGroup.parse("5,7=width") == UnitGroup("5", "7", "width")
    assert UnitGroup.parse("blocks.0.fc1, blocks.0.fc2") == UnitGroup("blocks.0.fc1", "blocks.0.fc2", None)
    with pytest.raises(ConfigError, match="FIRST,SECOND"):
        UnitGroup.parse("5")


def test_group_rejects_unknown_and_misfit_layers():
    model = cnn_a()
    with pytest.raises(ConfigError, match="no module '9'"):
        unit_norms(model, UnitGroup("5", "9"))
    with pytest.raises(ConfigError, match="is a ReLU"):
        unit_norms(model, UnitGroup("5", "6"))
    with pytest.raises(ConfigError, match="takes 100 inputs"):
        unit_norms(model, UnitGroup("0", "7"))
    with pytest.raises(ConfigError, match="takes 3 input channels"):
        unit_norms(model, UnitGroup("0", "0"))


def test_group_lasso_matches_formula():
    torch.manual_seed(0)
    model = cnn_a(width=6)
    lasso = GroupLasso((UnitGroup("5", "7"),), lam=0.3, eps=0.01)
    first, second = model[5], model[7]
    squared = first.weight.pow(2).sum(1) + first.bias.pow(2) + second.weight.pow(2).sum(0)
    expected = 0.3 * (squared + 0.01**2).sqrt().sum()
    torch.testing.assert_close(lasso(model), expected)


def test_group_lasso_conv_block_norms():
    torch.manual_seed(0)
    model = cnn_a(width=6)
    norms = unit_norms(model, UnitGroup("2", "5"))
    conv, linear = model[2], model[5]
    channel = 3
    squared = conv.weight[channel].pow(2).sum() + conv.bias[channel] ** 2
    squared = squared + linear.weight[:, channel * 64 : (channel + 1) * 64].pow(2).sum()
    assert norms.shape == (32,)
    torch.testing.assert_close(norms[channel], squared.sqrt())


def _zero_units(model: nn.Sequential, group: UnitGroup, units: list[int], block: int) -> None:
    first, second = model.get_submodule(group.first), model.get_submodule(group.second)
    with torch.no_grad():
        first.weight[units] = 0
        first.bias[units] = 0
        if isinstance(second, nn.Linear):
            columns = [u * block + j for u in units for j in range(block)]
            second.weight[:, columns] = 0
        else:
            second.weight[:, units] = 0


@pytest.mark.parametrize(("pair", "block"), [(("0", "2"), 1), (("2", "5"), 64), (("5", "7"), 1)])
def test_pruning_zero_units_keeps_logits(shared_members, test_slice, pair, block):
    member = next(m for m in shared_members if m.name == "sdp_a_mix")
    wrapped = copy.deepcopy(member.model)
    group = UnitGroup(*pair)
    width = wrapped.model.get_submodule(group.first).weight.shape[0]
    zeroed = list(range(0, width, 3))
    _zero_units(wrapped.model, group, zeroed, block)

    result = prune_model(wrapped.model, [group], PruneRule(threshold=1e-12))
    pruned = copy.deepcopy(wrapped)
    pruned.model = result.model
    with torch.no_grad():
        expected = wrapped(test_slice.images[:64])
        actual = pruned(test_slice.images[:64])

    assert result.groups[0].width_after == width - len(zeroed)
    assert result.model.get_submodule(group.first).weight.shape[0] == width - len(zeroed)
    assert result.parameters_after < result.parameters_before
    assert count_parameters(result.model) == result.parameters_after
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_pruning_leaves_input_model_unchanged():
    model = cnn_a()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prune_model(model, [UnitGroup("5", "7")], PruneRule(target_width=10))
    assert model[5].out_features == 100
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_pruning_orders_units_by_norm():
    torch.manual_seed(0)
    model = cnn_a(width=8)
    group = UnitGroup("5", "7")
    norms = unit_norms(model, group)
    result = prune_model(model, [group], PruneRule(target_width=5))
    pruned_norms = unit_norms(result.model, group)
    assert torch.all(pruned_norms[:-1] >= pruned_norms[1:])
    torch.testing.assert_close(pruned_norms, norms.sort(descending=True).values[:5])


def test_prune_cli_writes_loadable_member(shared_pool, cifar_dir, tmp_path):
    out = tmp_path / "pruned.safetensors"
    result = CliRunner().invoke(main, [
        "prune", "--pool", str(shared_pool), "--member", "sdp_a_mix", "--layers", "5,7=width",
        "--lam", "1e-3", "--target-width", "40", "--threshold", "0", "--train-epochs", "1", "--finetune-epochs", "1",
        "--n-train", "256", "--n", "100", "--data-dir", str(cifar_dir), "--out", str(out), "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    assert "5,7=width: 100 -> 40 units" in result.stdout
    assert f"parameters: {count_parameters(cnn_a())} -> {count_parameters(cnn_a(width=40))}" in result.stdout

    pool_file = tmp_path / "pruned.yaml"
    entry = yaml.safe_load(pool_file.read_text())["members"][0]
    assert entry["arch_kwargs"] == {"width": 40}
    member = load_members(load_pool_file(pool_file))[0]
    assert member.model.model[5].out_features == 40
    assert (tmp_path / "pruned.json").is_file()


def test_prune_cli_rejects_onnx_member(shared_pool, tmp_path):
    result = CliRunner().invoke(main, [
        "prune", "--pool", str(shared_pool), "--member", "resnet_4b", "--layers", "a,b=width", "--lam", "0.1",
        "--threshold", "0.1", "--out", str(tmp_path / "x.safetensors"),
    ])
    assert result.exit_code == 2
    assert "has source 'onnx'; pruning needs source state_dict" in result.output


def test_prune_cli_requires_width_argument(shared_pool, tmp_path):
    result = CliRunner().invoke(main, [
        "prune", "--pool", str(shared_pool), "--member", "sdp_a_mix", "--layers", "5,7", "--lam", "0.1",
        "--threshold", "0.1", "--out", str(tmp_path / "x.safetensors"),
    ])
    assert result.exit_code == 2
    assert "name no width argument" in result.output


def test_prune_cli_unwritable_out_fails_early(shared_pool, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = CliRunner().invoke(main, [
        "prune", "--pool", str(shared_pool), "--member", "sdp_a_mix", "--layers", "5,7=width", "--lam", "0.1",
        "--threshold", "0.1", "--out", str(blocker / "x.safetensors"),
    ])
    assert_one_line_error(result, "--out", "is a file, not a folder")


def test_write_pruned_member_roundtrip(shared_pool, tmp_path):
    from robustvote.pruning.member import write_pruned_member
    from robustvote.threat import Norm, ThreatModel

    spec = load_pool_file(shared_pool).subset(["sdp_a_mix"]).members[0]
    member = load_member(spec)
    result = prune_model(member.model.model, [UnitGroup("5", "7", "width")], PruneRule(target_width=30))
    pruned = copy.deepcopy(member.model)
    pruned.model = result.model
    entry = write_pruned_member(
        pruned, spec, result, "small", tmp_path / "small.safetensors", tmp_path / "small.yaml",
        ThreatModel(Norm.LINF, 2 / 255),
    )
    assert entry["arch_kwargs"] == {"width": 30}
    assert entry["path"] == "small.safetensors"
    assert Path(tmp_path / "small.safetensors").stat().st_size < spec.path.stat().st_size
