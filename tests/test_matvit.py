"""MatViT: nested forward, extraction, granularity specs, the matvit source, training and the committed model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli_checks import assert_one_line_error

from robustvote.cli import main
from robustvote.errors import ConfigError, ModelLoadError
from robustvote.matformer import ALL_GRANULARITIES, Granularity, MatViT, MatViTConfig, parse_granularity
from robustvote.matformer.checkpoint import load_matvit, save_matvit
from robustvote.matformer.extract import count_parameters, extract_submodel
from robustvote.matformer.train import evaluate_granularities, split_training_set, train_matvit
from robustvote.training import STATE_FILE, TrainConfig
from robustvote.zoo import load_members, load_pool_file

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMITTED = REPO_ROOT / "zoo" / "matvit_cifar10.safetensors"
SMALL = MatViTConfig(dim=48, depth=4, heads=4, d_ff=96, patch=8)
MIXED = "S,XL,M,L"
# Clean accuracy (%) of the committed checkpoint on CIFAR-10 test images 0-999, as in zoo/MATVIT_CARD.md.
CARD_ACCURACY = {
    "S": 68.1, "M": 69.0, "L": 69.0, "XL": 69.4,
    "S,S,M,L,XL,XL": 67.3, "XL,XL,L,M,S,S": 69.2, "M,M,M,XL,XL,XL": 66.2,
}


@pytest.fixture(scope="module", params=["patch", "conv"])
def small_model(request) -> MatViT:
    torch.manual_seed(0)
    model = MatViT(replace(SMALL, stem=request.param)).eval()
    for module in model.patch_embed.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            # Running statistics away from 0 and 1 show whether extraction carries the buffers.
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2)
    # Random biases make a slicing error visible in the logits (fresh biases are zero).
    with torch.no_grad():
        for block in model.blocks:
            block.ffn.fc1.bias.normal_(0, 0.5)
            block.ffn.fc2.bias.normal_(0, 0.5)
            block.ffn.fc2.weight.mul_(20)
    return model


@pytest.mark.parametrize("granularity", ["S", "M", "L", "XL", MIXED])
def test_extracted_logits_equal_nested(small_model, test_slice, granularity):
    images = test_slice.images[:64]
    submodel = extract_submodel(small_model, granularity)
    with torch.no_grad():
        nested = small_model(images, granularity=granularity)
        standalone = submodel(images)
    assert torch.allclose(standalone, nested, atol=1e-5)
    expected = tuple(g.width(SMALL.d_ff) for g in parse_granularity(granularity, SMALL.depth))
    assert tuple(block.ffn.width for block in submodel.blocks) == expected


def test_granularities_give_different_logits(small_model, test_slice):
    images = test_slice.images[:16]
    with torch.no_grad():
        outputs = {g: small_model(images, granularity=g) for g in ALL_GRANULARITIES}
    assert not torch.allclose(outputs[Granularity.S], outputs[Granularity.XL], atol=1e-3)
    assert not torch.allclose(outputs[Granularity.M], outputs[Granularity.L], atol=1e-3)


def test_xl_is_default_forward(small_model, test_slice):
    images = test_slice.images[:16]
    with torch.no_grad():
        assert torch.equal(small_model(images), small_model(images, granularity="XL"))


def test_s_slice_is_prefix_of_larger(small_model):
    small = extract_submodel(small_model, "S")
    for larger_letter in ("M", "L", "XL"):
        larger = extract_submodel(small_model, larger_letter)
        for s_block, l_block in zip(small.blocks, larger.blocks):
            width = s_block.ffn.width
            assert torch.equal(s_block.ffn.fc1.weight, l_block.ffn.fc1.weight[:width])
            assert torch.equal(s_block.ffn.fc1.bias, l_block.ffn.fc1.bias[:width])
            assert torch.equal(s_block.ffn.fc2.weight, l_block.ffn.fc2.weight[:, :width])
            assert torch.equal(s_block.attn.qkv.weight, l_block.attn.qkv.weight)


def test_parameter_counts_grow_with_width(small_model):
    counts = [count_parameters(extract_submodel(small_model, g)) for g in ALL_GRANULARITIES]
    assert counts == sorted(counts)
    assert len(set(counts)) == 4
    assert counts[-1] == count_parameters(small_model)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("S,M", "lists 2 layers but the model has 4"),
        ("S,M,L,XL,XL", "lists 5 layers but the model has 4"),
        ("Q", "unknown granularity 'Q'"),
        ("S,M,XXL,L", "unknown granularity 'XXL'"),
        ("S,,M,L", "empty entry"),
    ],
)
def test_bad_granularity_spec_rejected(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_granularity(spec, 4)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"stem": "resnet"}, "unknown MatViT stem 'resnet'"),
        ({"stem": "conv", "patch": 6, "image_size": 36}, "power of two"),
        ({"stem": "conv", "patch": 1}, "power of two"),
    ],
)
def test_bad_stem_rejected(changes, message):
    with pytest.raises(ConfigError, match=message):
        replace(SMALL, **changes)


def test_conv_stem_token_grid(test_slice):
    for patch in (2, 4, 8):
        model = MatViT(replace(SMALL, stem="conv", patch=patch)).eval()
        with torch.no_grad():
            tokens = model.patch_embed((test_slice.images[:2] - model.mean) / model.std)
        assert tokens.shape == (2, SMALL.dim, 32 // patch, 32 // patch)


def test_parse_granularity_forms():
    assert parse_granularity("m", 3) == (Granularity.M,) * 3
    assert parse_granularity(["S", "xl"], 2) == (Granularity.S, Granularity.XL)
    assert parse_granularity(" S , L ", 2) == (Granularity.S, Granularity.L)


def test_extracted_model_rejects_granularity(small_model, test_slice):
    submodel = extract_submodel(small_model, "M")
    with pytest.raises(ConfigError, match="extracted at granularity M"):
        submodel(test_slice.images[:2], granularity="S")
    with pytest.raises(ConfigError, match="already extracted"):
        extract_submodel(submodel, "S")


def test_checkpoint_roundtrip(small_model, test_slice, tmp_path):
    path = tmp_path / "nested.safetensors"
    save_matvit(small_model, path)
    loaded = load_matvit(path)
    assert loaded.config == small_model.config
    with torch.no_grad():
        assert torch.equal(loaded(test_slice.images[:8], granularity=MIXED), small_model(test_slice.images[:8], granularity=MIXED))
    path.with_suffix(".json").unlink()
    with pytest.raises(ModelLoadError, match="config .* not found"):
        load_matvit(path)


def write_pool(folder: Path, members: list[dict]) -> Path:
    import yaml

    pool = {"dataset": "cifar10", "threat_model": "Linf", "eps": "2/255", "members": members}
    path = folder / "pool.yaml"
    path.write_text(yaml.safe_dump(pool))
    return path


def test_matvit_source_matches_nested_forward(small_model, test_slice, tmp_path):
    save_matvit(small_model, tmp_path / "nested.safetensors")
    pool = write_pool(tmp_path, [
        {"name": "xl", "source": "matvit", "path": "nested.safetensors"},
        {"name": "s", "source": "matvit", "path": "nested.safetensors", "granularity": "S"},
        {"name": "mix", "source": "matvit", "path": "nested.safetensors", "granularity": MIXED.split(",")},
    ])
    members = {m.name: m.model for m in load_members(load_pool_file(pool))}
    images = test_slice.images[:16]
    with torch.no_grad():
        assert torch.allclose(members["xl"](images), small_model(images, granularity="XL"), atol=1e-5)
        assert torch.allclose(members["s"](images), small_model(images, granularity="S"), atol=1e-5)
        assert torch.allclose(members["mix"](images), small_model(images, granularity=MIXED), atol=1e-5)


def test_matvit_source_rejects_bad_specs(small_model, tmp_path):
    save_matvit(small_model, tmp_path / "nested.safetensors")
    save_matvit(extract_submodel(small_model, "M"), tmp_path / "m.safetensors")
    cases = [
        ({"granularity": "S,M"}, "nested.safetensors", "member 'bad': granularity spec 'S,M' lists 2 layers"),
        ({"granularity": "XXL"}, "nested.safetensors", "unknown granularity 'XXL'"),
        ({"granularity": "S"}, "m.safetensors", "was extracted at granularity M, not 'S'"),
    ]
    for extra, path, message in cases:
        pool = write_pool(tmp_path, [{"name": "bad", "source": "matvit", "path": path, **extra}])
        with pytest.raises(ConfigError, match=message):
            load_members(load_pool_file(pool))


def test_extract_cli_writes_equal_model(small_model, test_slice, tmp_path):
    nested_path = tmp_path / "nested.safetensors"
    save_matvit(small_model, nested_path)
    out = tmp_path / "mix.safetensors"
    result = CliRunner().invoke(main, ["extract", "--checkpoint", str(nested_path), "--granularity", MIXED, "--out", str(out)])
    assert result.exit_code == 0, result.output
    expected = count_parameters(extract_submodel(small_model, MIXED))
    assert f"{expected} parameters" in result.stdout
    with torch.no_grad():
        assert torch.allclose(load_matvit(out)(test_slice.images[:8]), small_model(test_slice.images[:8], granularity=MIXED), atol=1e-5)


def test_extract_cli_keeps_existing_output(small_model, tmp_path):
    nested_path = tmp_path / "nested.safetensors"
    save_matvit(small_model, nested_path)
    out = tmp_path / "s.safetensors"
    args = ["extract", "--checkpoint", str(nested_path), "--granularity", "S", "--out", str(out)]
    assert CliRunner().invoke(main, args).exit_code == 0
    before = out.read_bytes()
    rejected = CliRunner().invoke(main, [*args[:4], "M", *args[5:]])
    assert_one_line_error(rejected, "already exists", "--force")
    assert out.read_bytes() == before
    assert CliRunner().invoke(main, [*args[:4], "M", *args[5:], "--force"]).exit_code == 0
    assert load_matvit(out).config.granularity == ("M",) * SMALL.depth
    itself = CliRunner().invoke(main, [*args[:5], "--out", str(nested_path), "--force"])
    assert_one_line_error(itself, "is the nested checkpoint itself")


@pytest.mark.parametrize(
    ("spec", "message"),
    [("S,M", "lists 2 layers but the model has 4"), ("S,M,Z,L", "unknown granularity 'Z'")],
)
def test_extract_cli_bad_spec_one_line(small_model, tmp_path, spec, message):
    nested_path = tmp_path / "nested.safetensors"
    save_matvit(small_model, nested_path)
    result = CliRunner().invoke(main, ["extract", "--checkpoint", str(nested_path), "--granularity", spec, "--out", str(tmp_path / "x.safetensors")])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert message in result.stderr
    assert "Traceback" not in result.output


class Interrupt(Exception):
    pass


def test_training_lowers_loss_and_resumes(cifar_dir, tmp_path):
    tiny = MatViTConfig(dim=32, depth=2, heads=2, d_ff=64, patch=8)
    split = split_training_set(cifar_dir, seed=0, n_train=320, holdout=200)
    assert len(set(split.train_labels.tolist())) == 10
    config = TrainConfig(epochs=2, batch_size=32, lr=3e-3, warmup_epochs=0.2, adv="fgsm-rs", seed=0)
    torch.manual_seed(config.seed)
    before = evaluate_granularities(MatViT(tiny), split.train_images, split.train_labels)

    def stop_after_first(record, model):
        if record.epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_matvit(tiny, config, split, tmp_path, progress=False, on_epoch_end=stop_after_first)
    assert json.loads((tmp_path / STATE_FILE).read_text())["finished_epochs"] == 1

    model, history = train_matvit(tiny, config, split, tmp_path, resume=True, progress=False)
    assert [record.epoch for record in history] == [1, 2]
    after = evaluate_granularities(model, split.train_images, split.train_labels)
    for letter in ("S", "M", "L", "XL"):
        assert after[f"loss_{letter}"] < before[f"loss_{letter}"] - 0.02, letter
    assert set(history[-1].metrics) == {f"{kind}_{g}" for kind in ("loss", "acc") for g in ("S", "M", "L", "XL")}
    assert json.loads((tmp_path / "model.json").read_text())["finished_epochs"] == 2


def test_train_cli_resume_with_other_model_rejected(cifar_dir, tmp_path):
    common = ["train", "matvit", "--data-dir", str(cifar_dir), "--epochs", "1", "--out", str(tmp_path),
              "--n-train", "64", "--holdout", "64", "--patch", "8", "--heads", "2", "--d-ff", "64", "--depth", "1"]
    first = CliRunner().invoke(main, [*common, "--dim", "32"])
    assert first.exit_code == 0, first.output
    assert "epoch 1" in first.stderr
    assert "XL: loss=" in first.stderr
    second = CliRunner().invoke(main, [*common, "--dim", "64", "--resume"])
    assert second.exit_code == 2
    assert "cannot resume" in second.stderr


@pytest.fixture(scope="module")
def committed_model() -> MatViT:
    if not COMMITTED.is_file():
        pytest.skip(f"committed MatViT checkpoint {COMMITTED} not found")
    return load_matvit(COMMITTED)


@pytest.fixture(scope="module")
def first_test_images(cifar_dir):
    from robustvote.data import load_cifar10

    return load_cifar10("test", 0, 1000, cifar_dir, download=False)


@pytest.mark.parametrize("granularity", sorted(CARD_ACCURACY))
def test_committed_model_matches_card(committed_model, first_test_images, granularity):
    images, labels = first_test_images.images, first_test_images.labels
    with torch.no_grad():
        batches = [committed_model(images[i : i + 500], granularity=granularity) for i in range(0, len(labels), 500)]
    accuracy = 100 * float((torch.cat(batches).argmax(1) == labels).float().mean())
    assert abs(accuracy - CARD_ACCURACY[granularity]) <= 0.5


def test_committed_pool_loads_every_member(committed_model):
    pool = load_pool_file(REPO_ROOT / "zoo" / "matvit-cifar10.yaml")
    members = load_members(pool)
    assert [m.name for m in members] == pool.member_names()
    widths = {m.name: tuple(block.ffn.width for block in m.model.model.blocks) for m in members}
    d_ff = committed_model.config.d_ff
    assert widths["matvit_S"] == (d_ff // 8,) * committed_model.config.depth
    assert widths["matvit_XL"] == (d_ff,) * committed_model.config.depth
