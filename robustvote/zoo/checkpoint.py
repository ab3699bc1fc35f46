"""Safe reading of weight files: sha256 checks, ``weights_only`` torch loads, key paths."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import torch

from robustvote.errors import ModelLoadError


def require_file(path: Path | None, member: str) -> Path:
    """Return ``path`` if it is an existing file, else raise a :class:`ModelLoadError`."""
    if path is None:
        raise ModelLoadError(f"member {member!r} has no 'path'; add the weight file's path to the pool file")
    if not path.is_file():
        raise ModelLoadError(
            f"weight file {path} of member {member!r} not found; fix 'path' in the pool file "
            "or set the environment variable it uses"
        )
    return path


def sha256_of(path: Path) -> str:
    """Return the hexadecimal SHA-256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str | None, member: str) -> None:
    """Raise a :class:`ModelLoadError` when ``path`` does not hash to ``expected``."""
    if expected is None:
        return
    actual = sha256_of(path)
    if actual != expected.lower():
        raise ModelLoadError(
            f"sha256 mismatch for {path} (member {member!r}): expected {expected}, got {actual}; "
            "the file is corrupt or a different version, so replace it or correct 'sha256'"
        )


def load_torch_checkpoint(path: Path, member: str) -> Any:
    """Load a torch checkpoint with ``weights_only=True``, or a ``.safetensors`` file.

    A checkpoint that needs pickled code (a whole pickled ``nn.Module``, custom classes) is
    rejected: unpickling runs arbitrary code, so it must be re-saved as a plain state dict.
    """
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"cannot read safetensors file {path} (member {member!r}): {exc}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()
        detail = next((line for line in reason if "GLOBAL" in line or "Unsupported" in line), reason[0] if reason else "")
        raise ModelLoadError(
            f"checkpoint {path} (member {member!r}) needs pickled code, which robustvote does not "
            f"execute ({detail.strip()}); re-save it with torch.save(model.state_dict(), path) "
            "and load it with source: state_dict"
        ) from None
    except (RuntimeError, OSError, EOFError) as exc:
        raise ModelLoadError(f"cannot read checkpoint {path} (member {member!r}): {exc}") from None


def select_key(checkpoint: Any, key: str | None, path: Path, member: str) -> Any:
    """Walk a dotted key path such as ``state_dict.0`` into nested dicts and lists."""
    if not key:
        return checkpoint
    node = checkpoint
    walked: list[str] = []
    for part in str(key).split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            here = ".".join(walked) or "the top level"
            if isinstance(node, dict):
                choices = ", ".join(map(str, list(node)[:12]))
                hint = f"keys there: {choices}"
            elif isinstance(node, (list, tuple)):
                hint = f"a list of {len(node)} entries"
            else:
                hint = f"a {type(node).__name__}"
            raise ModelLoadError(
                f"key {key!r} not found in checkpoint {path} (member {member!r}): no {part!r} "
                f"at {here}, which holds {hint}; fix 'key' in the pool file"
            )
        walked.append(part)
    return node
