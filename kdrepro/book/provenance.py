"""What a report's numbers depend on: git commit, package versions, code and dataset hashes, device, memory."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import subprocess
import threading
from pathlib import Path
from typing import Any

import psutil
import torch

from kdrepro import _io, data
from kdrepro.store import code_digest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "kdrepro",
    "torch",
    "numpy",
    "pandas",
    "papermill",
    "nbconvert",
    "nbclient",
    "ipykernel",
    "matplotlib",
    "seaborn",
    "tqdm",
)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def git_info(root: Path = ROOT) -> dict:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    # The rendered reports are the runner's output, not an input: their changes do not make a run dirty.
    # The results ledger is an input, but the manifest records the digest of every entry a page read
    # (``ledger_entries``): its uncommitted entries (a campaign's commits lag its fits) are counted apart,
    # so that "uncommitted changes" keeps meaning the code or the notebooks.
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)reports", ":(exclude)results")
    ledger = git("status", "--porcelain", "--untracked-files=all", "--", "results")
    return {"sha": sha or "unknown", "dirty": bool(status) if status is not None else None,
            "uncommitted_ledger_entries": len(ledger.splitlines()) if ledger is not None else None}


def package_versions() -> dict[str, str]:
    return _io.package_versions(PACKAGES)


def code_hash() -> str:
    """The package's code digest (kdrepro.store.code_digest), the runner's own folder left out."""
    return code_digest(exclude=("book",))


_DATASETS: dict[tuple, dict] = {}


def dataset_info(parameters: dict) -> dict:
    """Name and content sha256 of the notebook's ``DATASET`` (loaded as the notebook will load it)."""
    name = parameters.get("DATASET")
    if not isinstance(name, str):
        return {"name": None}
    key = (name, parameters.get("MIN_USER_INTERACTIONS", 0))
    if key not in _DATASETS:
        try:
            loaded = data.load(name, min_user_interactions=key[1])
            info = {
                "name": name,
                "sha256": loaded.sha256,
                **{k: v for k, v in loaded.stats().items() if k != "dataset"},
            }
            raw = data.REMOTE_FILES.get(name, {}).get("users.dat")
            if raw is not None:
                info["raw_sha256"] = {"users.dat": raw.sha256}
        except Exception as exc:  # noqa: BLE001 - the notebook fails on it and says why; the manifest records it
            info = {"name": name, "sha256": None, "error": f"{type(exc).__name__}: {exc}"}
        _DATASETS[key] = info
    return _DATASETS[key]


_DEVICE: dict = {}


def device_info() -> dict:
    if not _DEVICE:
        _DEVICE.update(
            {
                "cpu_count": os.cpu_count(),
                "machine": platform.machine(),
                "system": platform.system(),
                "cuda_available": torch.cuda.is_available(),
                "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            }
        )
    return dict(_DEVICE)


class PeakMemory:
    """Peak resident memory (MiB) of this process's children (the kernel) while the block runs."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval, self.peak, self._stop = interval, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak = max(self.peak, total / 2**20)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
