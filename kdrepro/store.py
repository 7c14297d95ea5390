"""The one train-once store: splits, teachers, teacher outputs, distilled students, KD modules, artefacts.

An entry is a folder ``<root>/<kind>/<name>-<key>/`` of files plus ``manifest.json``, written last, that
records the sha256 of every file. The key hashes what decides the entry (configs, seeds, the split) and
a digest of the code that computes it (:func:`code_digest`, per method file where possible: editing
``distill/ftd.py`` does not invalidate DE's students). Every file is written atomically; an entry without
a manifest is an interrupted write. Loading verifies every file against the manifest: a truncated,
emptied or bit-flipped file is reported with a warning naming its path, the entry is removed, and the
caller rebuilds it. Weights are read with ``torch.load(weights_only=True)``, arrays with
``np.load(allow_pickle=False)``: nothing is unpickled.

The file's extension decides its format: ``.json`` (JSON), ``.npz`` (a mapping of numpy arrays), ``.pt``
(a ``state_dict`` of tensors). A job's small named artefacts (arrays) go through the same verification::

    store = Store()                                         # $KDREPRO_CACHE_DIR or ~/.cache/kdrepro
    store.put_artefact("students/bpr-d20-de-1a2b3c4d5e6f7a8b", "trajectory", {"epochs": e, "topn": t})
    arrays = store.get_artefact("students/bpr-d20-de-1a2b3c4d5e6f7a8b", "trajectory")  # None when absent
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdrepro._io import atomic_write, cache_root, sha256_file, stable_hash, write_json
from kdrepro.data import Interactions
from kdrepro.splits import Split, load_split, make_split, save_split

PACKAGE = Path(__file__).resolve().parent
MANIFEST = "manifest.json"
# The code every fit runs through (the training loop and what it calls), on top of the model's own file.
TRAINING_CODE = ("train.py", "objectives.py", "evaluate.py", "metrics.py", "sampling.py", "types.py",
                 "models/base.py")


class StoreWarning(UserWarning):
    """A store entry failed verification (its path is in the message); it was removed and is rebuilt."""


def _source_files(source: Any) -> list[Path]:
    """The package files behind a source: a path relative to the package (file or folder), a module, or
    a class/function (its module's file)."""
    if isinstance(source, str | os.PathLike):
        path = PACKAGE / source
        if path.is_dir():
            return sorted(p for p in path.rglob("*") if p.suffix in (".py", ".csv") and "__pycache__" not in p.parts)
        if not path.is_file():
            raise FileNotFoundError(f"code_digest: {path} is not a file of the package")
        return [path]
    module = source if hasattr(source, "__file__") else sys.modules[source.__module__]
    return [Path(module.__file__).resolve()]


def code_digest(*sources: Any, exclude: tuple[str, ...] = ()) -> str:
    """sha256 (16 hex digits) of the package files behind ``sources`` (see :func:`_source_files`); with
    no argument, of every ``.py`` and ``.csv`` file of the package; files under the package folders named
    in ``exclude`` left out. The one code digest of the project: store keys, ledger entries and the
    runner's "did the code change" check all use it."""
    files = sorted({f for s in (sources or ("",)) for f in _source_files(s)
                    if f.relative_to(PACKAGE).parts[0] not in exclude})
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(PACKAGE).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def _write_file(path: Path, value: Any) -> None:
    if path.suffix == ".json":
        write_json(path, value)
    elif path.suffix == ".npz":
        arrays = {k: np.asarray(v) for k, v in value.items()}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)

        atomic_write(path, write)
    elif path.suffix == ".pt":
        state = {k: v.detach().cpu() for k, v in value.items()}
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    else:
        raise ValueError(f"store file {path.name!r}: the extension must be .json, .npz or .pt")


@dataclass(frozen=True)
class Entry:
    """A verified entry: read its files by name."""

    path: Path
    manifest: dict

    @property
    def meta(self) -> dict:
        return self.manifest.get("meta", {})

    @property
    def files(self) -> list[str]:
        return sorted(self.manifest["files"])

    def json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())

    def arrays(self, name: str) -> dict[str, np.ndarray]:
        with np.load(self.path / name, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}

    def state(self, name: str) -> dict[str, torch.Tensor]:
        return torch.load(self.path / name, map_location="cpu", weights_only=True)


class Store:
    """Entries under ``root`` (default ``$KDREPRO_CACHE_DIR`` or ``~/.cache/kdrepro``)."""

    # split content key → its entry (name, key), for the splits this process loaded or built
    split_entries: dict[str, tuple[str, str]] = {}

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else cache_root()

    def folder(self, kind: str, name: str, key: str) -> Path:
        return self.root / kind / f"{name}-{key}"

    def _discard(self, path: Path, why: str) -> None:
        warnings.warn(f"store entry {path}: {why}; removed, it will be rebuilt", StoreWarning, stacklevel=3)
        shutil.rmtree(path, ignore_errors=True)

    def open(self, kind: str, name: str, key: str, *, verify: bool = True) -> Entry | None:
        """The entry, its files verified against the manifest; ``None`` when absent or broken (removed)."""
        return self.open_path(self.folder(kind, name, key), verify=verify)

    def open_path(self, path: Path, *, verify: bool = True) -> Entry | None:
        if not path.is_dir():
            return None
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            self._discard(path, f"no {MANIFEST} (an interrupted write)")
            return None
        try:
            manifest = json.loads(manifest_path.read_text())
            files = dict(manifest["files"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
            self._discard(path, f"{manifest_path} is unreadable ({error})")
            return None
        if verify:
            for name, expected in files.items():
                file = path / name
                if not file.is_file():
                    self._discard(path, f"{file} is missing")
                    return None
                actual = sha256_file(file)
                if actual != expected:
                    size = file.stat().st_size
                    self._discard(path, f"{file} does not match its recorded sha256 "
                                        f"({'empty' if size == 0 else f'{size} bytes'}, truncated or corrupted)")
                    return None
        return Entry(path, manifest)

    def write(self, kind: str, name: str, key: str, files: Mapping[str, Any], meta: Mapping | None = None) -> Entry:
        """Write ``files`` (name → value, format by extension) atomically, then the manifest (last)."""
        path = self.folder(kind, name, key)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        for file_name, value in files.items():
            _write_file(path / file_name, value)
        manifest = {"kind": kind, "name": name, "key": key, "meta": dict(meta or {}),
                    "files": {f: sha256_file(path / f) for f in files}}
        write_json(path / MANIFEST, manifest)
        return Entry(path, manifest)

    def get_or_build(self, kind: str, name: str, key: str, build: Callable[[], tuple[Mapping[str, Any], Mapping]]
                     ) -> tuple[Entry, bool]:
        """The verified entry, or ``build()`` → (files, meta) written now; and whether it was loaded."""
        entry = self.open(kind, name, key)
        if entry is not None:
            return entry, True
        files, meta = build()
        return self.write(kind, name, key, files, meta), False

    # -- a job's named artefacts (arrays), e.g. a teacher's trajectory of top-N rankings --------------

    def put_artefact(self, owner: str, name: str, arrays: Mapping[str, np.ndarray], meta: Mapping | None = None
                     ) -> Entry:
        """Save ``arrays`` as artefact ``name`` of the job ``owner`` (any string naming it, e.g. its
        ``kind/folder``); verified like every entry."""
        files = {f"{name}.npz": arrays}
        return self.write("artefacts", name, stable_hash(owner), files, {"owner": owner, **(meta or {})})

    def get_artefact(self, owner: str, name: str) -> dict[str, np.ndarray] | None:
        entry = self.open("artefacts", name, stable_hash(owner))
        return entry.arrays(f"{name}.npz") if entry is not None else None

    # -- splits ---------------------------------------------------------------------------------------

    def split(self, data: Interactions, protocol: str, split_seed: int = 0, *, num_negatives: int = 499) -> Split:
        """The split of ``data`` under ``protocol``: loaded (verified) or built and saved."""
        negatives = num_negatives if protocol == "loo_sampled" else 0
        described = {"dataset": data.sha256, "protocol": protocol, "seed": split_seed, "negatives": negatives,
                     "code": code_digest("splits.py")}
        name = f"{data.name}-{protocol}-seed{split_seed}" + (f"-neg{negatives}" if negatives else "")
        key = stable_hash(described)
        entry = self.open("splits", name, key)
        if entry is not None:
            split = load_split(entry.path / "split.npz", expected_sha256=data.sha256)
        else:
            split = make_split(data, protocol, split_seed, num_negatives=num_negatives)
            self.write_split(name, key, split, described)
        Store.split_entries[split.key] = (name, key)
        return split

    def write_split(self, name: str, key: str, split: Split, meta: Mapping | None = None) -> Entry:
        path = self.folder("splits", name, key)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        save_split(split, path / "split.npz")
        manifest = {"kind": "splits", "name": name, "key": key, "meta": dict(meta or {}),
                    "files": {"split.npz": sha256_file(path / "split.npz")}}
        write_json(path / MANIFEST, manifest)
        return Entry(path, manifest)


def get_split(data: Interactions, protocol: str, split_seed: int = 0, *, num_negatives: int = 499,
              root: str | os.PathLike | None = None) -> Split:
    """:meth:`Store.split` of the default store (or of ``root``)."""
    return Store(root).split(data, protocol, split_seed, num_negatives=num_negatives)
