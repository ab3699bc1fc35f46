"""The generic training loop: schedule, augmentation, adversarial examples, seeding, checkpoints."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.nn import functional as F

from robustvote.errors import ConfigError
from robustvote.matformer.model import MatViT, MatViTConfig
from robustvote.training import (
    CROP_PADDING,
    STATE_FILE,
    AdvMode,
    TrainConfig,
    augment_batch,
    learning_rate,
    make_adversarial,
    train,
)

TINY = MatViTConfig(dim=32, depth=2, heads=2, d_ff=64, patch=8)


def cross_entropy(model, x, y):
    return F.cross_entropy(model(x), y)


def tiny_model(seed: int = 0) -> MatViT:
    torch.manual_seed(seed)
    return MatViT(TINY)


class Interrupt(Exception):
    pass


def test_learning_rate_warmup_then_cosine():
    config = TrainConfig(epochs=4, lr=1e-3, warmup_epochs=1)
    steps = 10
    rates = [learning_rate(config, step, steps) for step in range(4 * steps)]
    assert rates[0] == pytest.approx(1e-4)
    assert rates[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(rates[:10], rates[1:10]))
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    assert rates[-1] < 1e-5


def test_augment_batch_is_shifted_window(test_slice):
    images = test_slice.images[:6]
    generator = torch.Generator().manual_seed(0)
    augmented = augment_batch(images, generator)
    assert augmented.shape == images.shape
    padded = F.pad(images, (CROP_PADDING,) * 4)
    for original, result in zip(padded, augmented):
        windows = [
            original[:, top : top + 32, left : left + 32]
            for top in range(2 * CROP_PADDING + 1)
            for left in range(2 * CROP_PADDING + 1)
        ]
        matches = [torch.equal(result, w) or torch.equal(result, w.flip(-1)) for w in windows]
        assert any(matches)


def test_augment_batch_changes_images(test_slice):
    images = test_slice.images[:32]
    augmented = augment_batch(images, torch.Generator().manual_seed(1))
    unchanged = [torch.equal(a, b) for a, b in zip(images, augmented)]
    assert sum(unchanged) < len(unchanged) // 2


@pytest.mark.parametrize("mode", [AdvMode.FGSM_RS, AdvMode.PGD])
def test_adversarial_examples_raise_loss(shared_members, test_slice, mode):
    member = next(m for m in shared_members if m.name == "sdp_a_adv4").model
    x, y = test_slice.images[:64], test_slice.labels[:64]
    config = TrainConfig(epochs=1, adv=mode, eps=8 / 255, steps=5)
    adversarial = make_adversarial(member, cross_entropy, x, y, config, torch.Generator().manual_seed(0))
    assert (adversarial - x).abs().max() <= 8 / 255 + 1e-6
    assert adversarial.min() >= 0
    assert adversarial.max() <= 1
    with torch.no_grad():
        assert cross_entropy(member, adversarial, y) > cross_entropy(member, x, y) + 0.05
    assert all(p.grad is None for p in member.parameters())


def test_train_same_seed_same_weights(test_slice):
    x, y = test_slice.images[:64], test_slice.labels[:64]
    config = TrainConfig(epochs=1, batch_size=32, adv="fgsm-rs", seed=3)
    first, second = tiny_model(), tiny_model()
    train(first, cross_entropy, x, y, config, progress=False)
    train(second, cross_entropy, x, y, config, progress=False)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)


def test_resume_matches_uninterrupted_run(test_slice, tmp_path):
    x, y = test_slice.images[:64], test_slice.labels[:64]
    config = TrainConfig(epochs=2, batch_size=32, adv="fgsm-rs", seed=1)
    straight = tiny_model()
    straight_history = train(straight, cross_entropy, x, y, config, progress=False)

    def stop_after_first(record, model):
        if record.epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(tiny_model(), cross_entropy, x, y, config, out_dir=tmp_path, on_epoch_end=stop_after_first, progress=False)
    assert json.loads((tmp_path / STATE_FILE).read_text())["finished_epochs"] == 1

    resumed = tiny_model(seed=99)  # weights come from the checkpoint, not this initialization
    history = train(resumed, cross_entropy, x, y, config, out_dir=tmp_path, resume=True, progress=False)
    assert [r.epoch for r in history] == [1, 2]
    assert history[1].loss == pytest.approx(straight_history[1].loss, rel=1e-5)
    for key, value in straight.state_dict().items():
        assert torch.allclose(resumed.state_dict()[key], value, atol=1e-6), key


def test_existing_checkpoint_needs_resume(test_slice, tmp_path):
    x, y = test_slice.images[:32], test_slice.labels[:32]
    config = TrainConfig(epochs=1, batch_size=32)
    train(tiny_model(), cross_entropy, x, y, config, out_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="already contains a training checkpoint"):
        train(tiny_model(), cross_entropy, x, y, config, out_dir=tmp_path, progress=False)
    changed = TrainConfig(epochs=1, batch_size=32, lr=5e-4)
    with pytest.raises(ConfigError, match="lr"):
        train(tiny_model(), cross_entropy, x, y, changed, out_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(ConfigError, match="trained on 32 images, not 16"):
        train(tiny_model(), cross_entropy, x[:16], y[:16], config, out_dir=tmp_path, resume=True, progress=False)


def test_frozen_model_rejected(test_slice):
    model = tiny_model()
    model.requires_grad_(False)
    with pytest.raises(ConfigError, match="no parameter with requires_grad=True"):
        train(model, cross_entropy, test_slice.images[:8], test_slice.labels[:8], TrainConfig(epochs=1), progress=False)


def test_penalty_shrinks_weights(test_slice):
    x, y = test_slice.images[:64], test_slice.labels[:64]
    config = TrainConfig(epochs=1, batch_size=32, lr=1e-2, weight_decay=0.0, warmup_epochs=0, augment=False)

    def weight_norm(model):
        return sum(block.ffn.fc1.weight.norm() for block in model.blocks)

    plain, penalized = tiny_model(), tiny_model()
    train(plain, cross_entropy, x, y, config, progress=False)
    history = train(penalized, cross_entropy, x, y, config, penalty=lambda m: 10.0 * weight_norm(m), progress=False)
    assert history[0].penalty > 0
    assert weight_norm(penalized) < 0.9 * weight_norm(plain)


def test_uint8_images_train_like_float(test_slice):
    x, y = test_slice.images[:32], test_slice.labels[:32]
    as_uint8 = x.mul(255).round().to(torch.uint8)
    config = TrainConfig(epochs=1, batch_size=16)
    a, b = tiny_model(), tiny_model()
    train(a, cross_entropy, x, y, config, progress=False)
    train(b, cross_entropy, as_uint8, y, config, progress=False)
    for key, value in a.state_dict().items():
        assert torch.allclose(b.state_dict()[key], value, atol=1e-5), key


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"adv": "fgm"}, "invalid adversarial training mode 'fgm'"),
        ({"epochs": 0}, "invalid number of epochs 0"),
        ({"eps": 2.0}, "invalid eps"),
        ({"adv": "pgd", "eps": 0.0}, "needs eps > 0"),
        ({"warmup_epochs": 3}, "invalid warm-up"),
    ],
)
def test_train_config_rejects_bad_values(kwargs, message):
    values = {"epochs": 2, **kwargs}
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**values)


def test_step_size_defaults():
    assert TrainConfig(epochs=1, adv="fgsm-rs", eps=0.02).attack_step_size() == pytest.approx(0.025)
    assert TrainConfig(epochs=1, adv="pgd", eps=0.02, steps=5).attack_step_size() == pytest.approx(0.01)
    assert math.isclose(TrainConfig(epochs=1, adv="pgd", step_size=0.003).attack_step_size(), 0.003)
