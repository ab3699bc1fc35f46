"""Import shims for third-party packages."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType


def alias_autoattack() -> None:
    """Make ``import autoattack`` resolve to the PyPI package ``pyautoattack``.

    RobustBench 1.1.1 imports ``autoattack`` (the name of the GitHub package), while the PyPI
    release installs as ``pyautoattack``. The alias covers the package and its submodules.
    """
    if "autoattack" in sys.modules:
        return
    try:
        importlib.import_module("autoattack")
        return
    except ImportError:
        pass
    package = importlib.import_module("pyautoattack")
    sys.modules["autoattack"] = package
    for name in ("autoattack", "autopgd_base", "checks", "fab_pt", "square", "state", "other_utils"):
        try:
            sys.modules[f"autoattack.{name}"] = importlib.import_module(f"pyautoattack.{name}")
        except ImportError:
            continue


def import_robustbench() -> ModuleType:
    """Import ``robustbench.utils`` after aliasing ``autoattack``."""
    alias_autoattack()
    return importlib.import_module("robustbench.utils")
