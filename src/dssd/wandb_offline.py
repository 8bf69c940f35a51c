"""Reading W&B offline runs (``wandb/offline-run-*/run-<id>.wandb``) without W&B's service.

``logger=wandb`` logs offline by default; this reads such a run back (name, group, tags, config,
summary and the history of scalars) for tests and notebooks, without uploading it first.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wandb.proto.wandb_internal_pb2 import Record


def wandb_records(path: str | Path) -> Iterator[Record]:
    """The records of an offline W&B run file (``run-<id>.wandb``).

    The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks, each with a
    7-byte header (CRC, length, type: 1 full, 2 first, 3 middle, 4 last); a block's tail shorter
    than a chunk header is padding. wandb >= 0.2x no longer ships a Python reader for it.
    """
    from wandb.proto import wandb_internal_pb2  # imports wandb: slow, needed only here

    data = Path(path).read_bytes()
    magic, _version, _ = struct.unpack("<4sHB", data[:7])
    if magic != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, block, payload = 7, 32768, b""
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        payload += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            payload = b""
            yield record


@dataclass
class OfflineRun:
    """What one offline run file holds. ``summary``: the last value of each scalar metric;
    ``history``: one dict of scalars per ``wandb.log`` call, in order (``_step`` included)."""

    path: Path
    run_id: str = ""
    name: str = ""
    group: str = ""
    project: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)


def _scalars(items: Iterable[Any]) -> dict[str, float]:
    """The top-level numbers of history / summary items; media (nested keys) are left out."""
    out = {}
    for item in items:
        keys = list(item.nested_key) or [item.key]
        if len(keys) != 1:
            continue
        value = json.loads(item.value_json)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[keys[0]] = float(value) if math.isfinite(value) else math.nan
    return out


def read_offline_run(path: str | Path) -> OfflineRun:
    """Parse the run file ``path`` (``run-<id>.wandb``)."""
    run = OfflineRun(Path(path))
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            info = record.run
            run.run_id, run.name, run.group = info.run_id, info.display_name, info.run_group
            run.project, run.tags = info.project, list(info.tags)
        elif kind == "config":
            for item in record.config.update:
                if item.key != "_wandb":
                    run.config[item.key] = json.loads(item.value_json)
        elif kind == "summary":
            run.summary.update(_scalars(record.summary.update))
        elif kind == "history":
            run.history.append(_scalars(record.history.item))
    return run


def find_run_files(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Run files: each path is a ``.wandb`` file, or a folder searched for them (a run dir, its
    ``wandb/`` or one ``offline-run-*`` folder). ``wandb/latest-run`` links are not followed
    twice."""
    if isinstance(paths, str | Path):
        paths = [paths]
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        if path.is_file():
            files = [path]
        else:
            files = sorted(path.glob("run-*.wandb"))
            files += sorted(path.glob("offline-run-*/run-*.wandb"))
            files += sorted(path.glob("wandb/offline-run-*/run-*.wandb"))
        found.update(dict.fromkeys(f.resolve() for f in files))
    return list(found)
