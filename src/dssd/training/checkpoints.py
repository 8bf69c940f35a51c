"""Reading checkpoint files, with one clear error (``<file> is not a checkpoint written by
src/train.py (<why>)``) instead of whatever ``torch.load`` raises deep inside PyTorch on a
truncated download, a text file or a foreign pickle."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from dssd.errors import UserError


class CheckpointError(UserError):
    """A file that was given as a checkpoint but cannot be used as one."""


def not_a_checkpoint(path: str | Path, reason: str) -> CheckpointError:
    """The error for a file that is not a checkpoint, saying why."""
    return CheckpointError(f"{path} is not a checkpoint written by src/train.py ({reason})")


def read_checkpoint(path: str | Path, option: str, require: tuple[str, ...] = ()) -> dict[str, Any]:
    """The dict saved at ``path`` (CPU tensors, ``weights_only=True``), holding the keys
    ``require``; ``option`` names the setting the path came from, for a missing file's error."""
    if os.path.isdir(path):
        # a run directory holds its checkpoints under checkpoints/; last.ckpt, the final
        # weights, is what the next stage and a test start from
        candidates = [*Path(path).glob("*.ckpt"), *Path(path).glob("checkpoints/*.ckpt")]
        found = sorted(map(str, candidates), key=lambda p: (Path(p).name != "last.ckpt", p))
        hint = f"e.g. {found[0]}" if found else "none lies in it or its checkpoints/"
        raise CheckpointError(f"{option}={path} is a directory: give a checkpoint file ({hint})")
    if not os.path.isfile(path):
        raise CheckpointError(f"{option}={path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():  # torch warns of a TorchScript archive before failing
            warnings.simplefilter("ignore", UserWarning)
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:  # the file could not be read (permission, disk), whatever it holds
        raise CheckpointError(f"{option}={path}: cannot read it ({err.strerror or err})") from None
    except Exception as err:  # whatever torch.load fails on, the file is not a checkpoint
        if Path(path).suffix == ".onnx" or "TorchScript" in str(err):
            raise not_a_checkpoint(
                path, "it is an exported model: src/eval.py scores it as model_file=..."
            ) from None
        # the first sentence: torch's advice that follows (weights_only=False) does not apply
        reason = str(err).strip().split("\n")[0].split(". ")[0]
        if not any(char.isalpha() for char in reason):  # e.g. KeyError(101) of a text file
            reason = f"not a file torch.save wrote ({type(err).__name__} {reason})".strip()
        raise not_a_checkpoint(path, f"torch.load failed: {reason[:200]}") from None
    if not isinstance(checkpoint, dict):
        raise not_a_checkpoint(path, f"it holds a {type(checkpoint).__name__}, not a dict")
    missing = [key for key in require if key not in checkpoint]
    if missing:
        raise not_a_checkpoint(path, f"it holds no {missing}")
    return checkpoint
