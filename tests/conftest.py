"""Shared fixtures: the real CIFAR-10 copy and the real robust models next to the project.

The material lives outside the repository, in ``$ROBUSTVOTE_SHARED`` (default: ``../shared``
beside the project root). Tests that need it are skipped, with the reason, when it is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = Path(os.environ.get("ROBUSTVOTE_SHARED", REPO_ROOT.parent / "shared"))
CIFAR_DIR = SHARED_DIR / "data" / "cifar10"
ZOO_DIR = SHARED_DIR / "zoo"
SHARED_POOL = REPO_ROOT / "zoo" / "shared.yaml"


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path}; set ROBUSTVOTE_SHARED to the shared folder")
    return path


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """Folder with the real CIFAR-10 ``test.npz`` and ``train.npz``."""
    return _require(CIFAR_DIR / "test.npz", "CIFAR-10 test.npz").parent


@pytest.fixture(scope="session")
def zoo_dir() -> Path:
    """Folder whose ``weights/`` contains the eight real robust models."""
    return _require(ZOO_DIR / "weights", "robust model zoo").parent


@pytest.fixture(scope="session")
def shared_pool(zoo_dir: Path, monkeypatch_session: pytest.MonkeyPatch) -> Path:
    """Path of the committed pool file of the eight shared models, with ROBUSTVOTE_ZOO set."""
    monkeypatch_session.setenv("ROBUSTVOTE_ZOO", str(zoo_dir))
    return SHARED_POOL


@pytest.fixture(scope="session")
def monkeypatch_session():
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


@pytest.fixture(scope="session")
def shared_members(shared_pool: Path):
    """All eight shared members, loaded once per session."""
    from robustvote.zoo import load_members, load_pool_file

    return load_members(load_pool_file(shared_pool))


@pytest.fixture(scope="session")
def test_slice(cifar_dir: Path):
    """CIFAR-10 test images 0-199."""
    from robustvote.data import load_cifar10

    return load_cifar10("test", 0, 200, cifar_dir, download=False)
