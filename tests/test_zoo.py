"""The pool loader: every source kind on real files, and the checks it applies."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
import yaml

from robustvote.errors import ConfigError, ModelLoadError
from robustvote.zoo import load_member, load_members, load_pool_file, source_names
from robustvote.zoo.architectures import cnn_a
from robustvote.zoo.sources.onnx_source import read_onnx

SDP_MEAN = [125.3 / 255, 123.0 / 255, 113.9 / 255]
SDP_STD = [63.0 / 255, 62.1 / 255, 66.7 / 255]
ONNX_MEMBERS = ["resnet_4b", "sri_resnet_b", "oval21_wide_kw", "vit_ibp_3_3_8", "vit_pgd_2_3_16"]


def write_pool(folder: Path, members: list[dict], **top) -> Path:
    pool = {"dataset": "cifar10", "threat_model": "Linf", "eps": "2/255", "members": members, **top}
    path = folder / "pool.yaml"
    path.write_text(yaml.safe_dump(pool))
    return path


def test_builtin_source_kinds_registered() -> None:
    assert {"onnx", "state_dict", "robustbench", "torchscript"} <= set(source_names())


@pytest.mark.parametrize("name", ONNX_MEMBERS)
def test_onnx_member_matches_onnxruntime(shared_pool: Path, test_slice, name: str) -> None:
    pool = load_pool_file(shared_pool)
    spec = pool.subset([name]).members[0]
    member = load_member(spec)
    images = test_slice.images[:5]
    with torch.no_grad():
        logits = member.model(images).numpy()

    # onnxruntime runs the original graph one image at a time, as published.
    session = onnxruntime.InferenceSession(read_onnx(spec.path).SerializeToString(), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    mean = np.array(spec.normalize.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.array(spec.normalize.std, dtype=np.float32).reshape(1, 3, 1, 1)
    normalized = (images.numpy() - mean) / std
    reference = np.concatenate([session.run(None, {input_name: normalized[i : i + 1]})[0] for i in range(5)])
    assert np.abs(logits - reference).max() < 1e-4


@pytest.mark.parametrize("name", ONNX_MEMBERS)
def test_onnx_member_accepts_any_batch_size(shared_pool: Path, test_slice, name: str) -> None:
    member = load_member(load_pool_file(shared_pool).subset([name]).members[0])
    images = test_slice.images[:7]
    with torch.no_grad():
        together = member.model(images)
        alone = torch.cat([member.model(images[i : i + 1]) for i in range(7)])
    assert together.shape == (7, 10)
    assert torch.allclose(together, alone, atol=1e-5)


def test_gzip_and_plain_onnx_load_alike(zoo_dir: Path, tmp_path: Path, test_slice) -> None:
    plain = tmp_path / "resnet_4b.onnx"
    plain.write_bytes((zoo_dir / "weights" / "resnet_4b.onnx").read_bytes())
    packed = tmp_path / "resnet_4b.onnx.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    pool = write_pool(tmp_path, [
        {"name": "plain", "source": "onnx", "path": "resnet_4b.onnx"},
        {"name": "packed", "source": "onnx", "path": "resnet_4b.onnx.gz"},
    ])
    first, second = load_members(load_pool_file(pool))
    with torch.no_grad():
        assert torch.equal(first.model(test_slice.images[:3]), second.model(test_slice.images[:3]))


def test_state_dict_with_key_path(shared_pool: Path, zoo_dir: Path, test_slice) -> None:
    member = load_member(load_pool_file(shared_pool).subset(["kw_small_8px"]).members[0])
    checkpoint = torch.load(zoo_dir / "weights" / "cifar_small_8px.pth", map_location="cpu", weights_only=True)
    reference = cnn_a()
    reference.load_state_dict(checkpoint["state_dict"][0])
    images = test_slice.images[:4]
    normalized = (images - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / 0.225
    with torch.no_grad():
        assert torch.allclose(member.model(images), reference(normalized), atol=1e-6)


def test_state_dict_key_path_missing(zoo_dir: Path, tmp_path: Path) -> None:
    pool = write_pool(tmp_path, [{
        "name": "kw", "source": "state_dict", "architecture": "robustvote.zoo.architectures:cnn_a",
        "path": str(zoo_dir / "weights" / "cifar_small_8px.pth"), "key": "state_dict.5",
    }])
    with pytest.raises(ModelLoadError, match="key 'state_dict.5' not found"):
        load_members(load_pool_file(pool))


def test_state_dict_mismatch_lists_keys(zoo_dir: Path, tmp_path: Path) -> None:
    pool = write_pool(tmp_path, [{
        "name": "wrong_width", "source": "state_dict", "architecture": "robustvote.zoo.architectures:cnn_a",
        "arch_kwargs": {"width": 50}, "path": str(zoo_dir / "weights" / "cifar_cnn_a_mix.model"),
    }])
    with pytest.raises(ModelLoadError, match=r"shape mismatches.*5\.weight"):
        load_members(load_pool_file(pool))


def test_state_dict_unexpected_keys_listed(zoo_dir: Path, tmp_path: Path) -> None:
    state = torch.load(zoo_dir / "weights" / "cifar_cnn_a_mix.model", map_location="cpu", weights_only=True)
    state["extra.weight"] = torch.zeros(1)
    del state["7.bias"]
    torch.save(state, tmp_path / "edited.pt")
    pool = write_pool(tmp_path, [{
        "name": "edited", "source": "state_dict", "architecture": "robustvote.zoo.architectures:cnn_a", "path": "edited.pt",
    }])
    with pytest.raises(ModelLoadError) as info:
        load_members(load_pool_file(pool))
    assert "missing keys: 7.bias" in str(info.value)
    assert "unexpected keys: extra.weight" in str(info.value)


def test_pickled_module_rejected(tmp_path: Path) -> None:
    torch.save(cnn_a(), tmp_path / "whole_model.pt")
    pool = write_pool(tmp_path, [{
        "name": "pickled", "source": "state_dict", "architecture": "robustvote.zoo.architectures:cnn_a", "path": "whole_model.pt",
    }])
    with pytest.raises(ModelLoadError, match="needs pickled code"):
        load_members(load_pool_file(pool))


def test_torchscript_member_matches_state_dict_member(shared_pool: Path, zoo_dir: Path, tmp_path: Path, test_slice) -> None:
    model = cnn_a()
    model.load_state_dict(torch.load(zoo_dir / "weights" / "cifar_cnn_a_mix.model", map_location="cpu", weights_only=True))
    torch.jit.save(torch.jit.script(model.eval()), str(tmp_path / "sdp_a_mix.pt"))
    pool = write_pool(tmp_path, [{
        "name": "scripted", "source": "torchscript", "path": "sdp_a_mix.pt",
        "normalize": {"mean": SDP_MEAN, "std": SDP_STD},
    }])
    scripted = load_members(load_pool_file(pool))[0]
    original = load_member(load_pool_file(shared_pool).subset(["sdp_a_mix"]).members[0])
    with torch.no_grad():
        assert torch.allclose(scripted.model(test_slice.images[:6]), original.model(test_slice.images[:6]), atol=1e-6)


def test_robustbench_member_from_cache(tmp_path: Path, test_slice) -> None:
    from robustvote.compat import import_robustbench

    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    # The published checkpoint is replaced by a WideResNet-28-4 from RobustBench's zoo with
    # seeded random weights, written where RobustBench caches downloads.
    torch.manual_seed(0)
    architecture = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]["Ding2020MMA"]["model"]().eval()
    cache = tmp_path / "models" / "cifar10" / "Linf"
    cache.mkdir(parents=True)
    torch.save({"state_dict": architecture.state_dict()}, cache / "Ding2020MMA.pt")
    pool = write_pool(tmp_path, [{"name": "Ding2020MMA", "source": "robustbench", "model_dir": "models"}])
    member = load_members(load_pool_file(pool))[0]
    with torch.no_grad():
        assert torch.allclose(member.model(test_slice.images[:2]), architecture(test_slice.images[:2]), atol=1e-5)


def test_robustbench_unknown_id(tmp_path: Path) -> None:
    pool = write_pool(tmp_path, [{"name": "Ding2020", "source": "robustbench", "model_dir": "models"}])
    with pytest.raises(ConfigError, match="not a RobustBench cifar10 Linf model id"):
        load_members(load_pool_file(pool))


def test_sha256_mismatch(zoo_dir: Path, tmp_path: Path) -> None:
    pool = write_pool(tmp_path, [{
        "name": "resnet_4b", "source": "onnx", "path": str(zoo_dir / "weights" / "resnet_4b.onnx"), "sha256": "0" * 64,
    }])
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        load_members(load_pool_file(pool))


def test_variables_and_relative_paths(zoo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_ZOO", str(zoo_dir))
    pool = write_pool(tmp_path, [
        {"name": "a", "source": "onnx", "path": "${MY_ZOO}/weights/resnet_4b.onnx"},
        {"name": "b", "source": "onnx", "path": "${UNSET_ZOO_VARIABLE:-weights}/resnet_4b.onnx"},
    ])
    spec = load_pool_file(pool)
    assert spec.members[0].path == zoo_dir / "weights" / "resnet_4b.onnx"
    assert spec.members[1].path == tmp_path / "weights" / "resnet_4b.onnx"


def test_parent_steps_normalized_like_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool_folder = tmp_path / "pools"
    pool_folder.mkdir()
    monkeypatch.setenv("MY_ZOO", str(tmp_path / "models"))
    pool = write_pool(pool_folder, [
        {"name": "a", "source": "onnx", "path": "../models/a.onnx"},
        {"name": "b", "source": "onnx", "path": "${MY_ZOO}/a.onnx"},
    ])
    first, second = load_pool_file(pool).members
    assert first.path == tmp_path / "models" / "a.onnx"
    assert first.path == second.path


def test_unset_variable_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNSET_ZOO_VARIABLE", raising=False)
    pool = write_pool(tmp_path, [{"name": "a", "source": "onnx", "path": "${UNSET_ZOO_VARIABLE}/x.onnx"}])
    with pytest.raises(ConfigError, match="UNSET_ZOO_VARIABLE is not set"):
        load_pool_file(pool)


@pytest.mark.parametrize(
    ("members", "top", "message"),
    [
        ([{"name": "a", "source": "pickle_jar", "path": "x"}], {}, "unknown source kind 'pickle_jar'"),
        ([{"name": "a", "source": "state_dict", "path": "x"}], {}, "member 'a' .* missing the field\\(s\\) architecture"),
        ([{"source": "onnx", "path": "x"}], {}, "member #1 is missing the field 'name'"),
        ([{"name": "a", "source": "onnx"}], {}, "member 'a' .* missing the field\\(s\\) path"),
        ([{"name": "a", "source": "onnx", "path": "x", "colour": 1}], {}, "unknown field\\(s\\) colour"),
        ([], {}, "'members' is empty"),
        ([{"name": "a", "source": "onnx", "path": "x"}], {"eps": "8/0"}, "invalid eps"),
        ([{"name": "a", "source": "onnx", "path": "x"}], {"threat_model": "L3"}, "invalid threat model"),
        ([{"name": "a", "source": "onnx", "path": "x"}] * 2, {}, "appear more than once"),
        ([{"name": "a", "source": "onnx", "path": "x", "normalize": {"mean": [0, 0, 0]}}], {}, "'mean' and 'std'"),
    ],
)
def test_malformed_pool_rejected(tmp_path: Path, members: list, top: dict, message: str) -> None:
    pool = write_pool(tmp_path, members, **top)
    with pytest.raises(ConfigError, match=message):
        load_pool_file(pool)


def test_relative_variable_resolves_against_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pool_folder = tmp_path / "pools"
    pool_folder.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MY_ZOO", "models")
    pool = write_pool(pool_folder, [{"name": "a", "source": "onnx", "path": "${MY_ZOO}/a.onnx"}])
    assert load_pool_file(pool).members[0].path == tmp_path / "models" / "a.onnx"
