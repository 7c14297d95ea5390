"""Fits as jobs: one key per fit, executors (serial, local worker processes, Ray), the results ledger,
and the campaign commands (plan, fill).

- A :class:`FitJob` describes one fit completely (split entry, model/training/method configs, seed,
  teacher) and is keyed by the hash of what decides it, code digest included (:mod:`kdrepro.store`).
  It is plain data: it goes to a worker process or a Ray task as it is, or to a plan file as JSON.
  A fit that is not "a base model, optionally distilled from one teacher" (ConCF's multi-branch model,
  HetComp's teacher trajectories and its students on six trajectories) is a job of a registered
  :class:`Task` (``task`` names it, ``params`` describes it as plain data, ``inputs`` are the jobs whose
  stored outputs it reads, computed first like teachers).
- :func:`execute` runs one job wherever it is sent (it sets the worker's torch threads first) and
  returns a :class:`FitOutcome` (weights, metrics, history) to the driver; workers never write.
- :func:`run_jobs` (the driver) looks every job up in the ledger and the store, sends the missing ones
  to the executor, and writes each result to the store and the ledger as it arrives (teachers first:
  a distilled job waits for its teacher's outputs). A killed run loses only the fits in flight.
- The ledger (``results/<dataset>/<kind>/<name>-<key>.json``, committed) holds one small JSON per
  completed fit: key, configs, code digest, metrics, best epoch, epochs run, seconds, threads, device,
  versions, git SHA and the history at validation epochs. An entry whose code digest no longer matches
  the code has another key: it is never used, and :func:`plan` lists it as stale. With
  ``KDREPRO_COMMIT_LEDGER=1`` (``run_all.py --commit-ledger``) every entry is committed to git as it is
  written (:class:`LedgerCommits`), so finished compute is in history when the fit ends.

Executor settings come from arguments or, read once, ``KDREPRO_EXECUTOR`` (serial|local|ray),
``KDREPRO_WORKERS``, ``KDREPRO_THREADS``, ``KDREPRO_RAY_ADDRESS``, ``KDREPRO_GPUS_PER_FIT``.
"""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import functools
import importlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import papermill
import torch

try:  # the Ray executor's machinery (the `cluster` and `dev` extras install it)
    import ray
except ImportError:  # pragma: no cover - the serial and local executors work without it
    ray = None

from kdrepro import teachers
from kdrepro._io import environment_variable, package_versions, stable_hash, write_json
from kdrepro.distill import build as build_method
from kdrepro.distill import make_config
from kdrepro.distill.hetcomp import TeacherTrajectories
from kdrepro.efficiency import count_parameters
from kdrepro.evaluate import evaluate
from kdrepro.models import ModelConfig
from kdrepro.models import build as build_model
from kdrepro.notebook_kernel import PrivateSocketKernelManager
from kdrepro.splits import Split, load_split
from kdrepro.store import Store, code_digest
from kdrepro.train import PLAN_FILE_ENV, FitResult, TrainConfig, fit, resolve_device
from kdrepro.types import TeacherOutputs

EXECUTORS = ("serial", "local", "ray")
REPO_ROOT = Path(__file__).resolve().parents[1]
# Fallback costs, used by `plan` until the ledger has timings of its own (a rough guide, not a promise).
# The base model: one training epoch and one validation on one thread, CiteULike, on the protocol its chapters
# use (BPR and NeuMF leave-one-out with 499 sampled negatives, LightGCN full ranking), at a student and a teacher
# size ({model: {dim: (epoch_s, validation_s)}}, other sizes interpolated linearly in the dimension;
# `python -m kdrepro.benchmark --threads 1` base-model figures, measured 2026-12-05 beside a one-thread
# campaign). NeuMF-250's validation scores 5,219 × 500 pairs through its MLP: 15 s, which the paper
# protocol pays every epoch.
BASE_SECONDS = {"bpr": {20: (0.16, 0.14), 200: (0.95, 0.46)},
                "neumf": {25: (0.42, 0.53), 250: (5.5, 14.6)},
                "lightgcn": {20: (6.0, 0.84), 200: (19.9, 1.49)}}
# Each method's extra per epoch (CiteULike, 2 threads, `python -m kdrepro.benchmark`, README); DE and HTD
# between their dense (τ ≈ 1) and annealed regimes. "models": a base-model epoch where nothing better is known
# (BPR-200; a trajectory job of an unlisted kind). "ir": IR on the authors' item set (~18k items a batch: the
# IR-RRD epoch's 3.82 s less RRD's 0.50 s, 2026-12-06). DE, HTD and IR grow with their settings (cost_scale).
SCALED_METHODS = ("de", "htd", "ir")  # their extra grows with their settings (cost_scale)
EPOCH_SECONDS = {"models": 0.6, "de": 4.0, "htd": 5.0, "rrd": 1.0, "rd": 0.6, "cd": 0.9, "ir": 3.3,
                 "phr": 1.0, "fitnet": 0.6, "ftd": 0.6,
                 # Tasks (CiteULike, CPU s, one thread). ConCF, six heads (fewer heads: pro rata): a warm-up
                 # epoch, a consensus-learning epoch, one consensus generation (every p epochs); SingleCF.
                 # (Scaled by the 2026-12-02 kernel rework's measured ratios: warm-up ×0.86, CL ×0.78.)
                 "concf_warmup": 3.7, "concf_cl": 10.9, "concf_generation": 4.0, "singlecf": 1.3,
                 # HetComp's 64-d teachers by kind (trajectory jobs); NeuMF's full ranking (a validation,
                 # and the recorder's ranking at a new best) costs this much more per validation.
                 "trajectory_bpr": 0.33, "trajectory_cml": 0.38, "trajectory_lightgcn": 6.7,
                 "trajectory_vae": 1.35, "trajectory_item_ae": 2.7, "trajectory_neumf": 2.0,
                 "neumf_ranking": 58.0,
                 # HetComp's MF students (dim 6): whole epochs, and one knowledge construction (every p epochs).
                 "hetcomp": 0.96, "dcd": 3.1, "ensemble_rrd": 0.55, "knowledge_construction": 1.4}
# PHR's extra grows with the personalization network's hidden width H (one d_t × d_s bridge per hidden unit):
# EPOCH_SECONDS["phr"] is its cost at H = PHR_MEASURED_HIDDEN, plus this per further unit (one thread, BPR
# student on CiteULike, 2026-12-06: H = 8 ≈ 1.1 s, H = 64 ≈ 5.3 s an epoch over the student's own).
PHR_MEASURED_HIDDEN = 8
PHR_SECONDS_PER_HIDDEN = 0.075
# Epochs an early-stopped fit is assumed to run before the ledger knows (the papers' BPR runs stop after
# 100-300 epochs at lr 1e-3).
EARLY_STOPPED_EPOCHS = 200
VERSIONED_PACKAGES = ("torch", "numpy", "pandas", "kdrepro")
# PLAN_FILE_ENV (kdrepro.train) is set while a chapter is executed to enumerate its fits (see collect_jobs):
# run_jobs appends every job it is given to that file (JSON lines), and fit refuses to train.
# While planning, a cell may run this long (seconds): enumerating fits takes seconds; longer cells are
# sections that compute without fitting (timings) and are interrupted.
PLAN_CELL_TIMEOUT = 120
PLACEHOLDER = {"test": {}, "valid": {}, "history": [], "best_epoch": None, "epochs_run": None, "seconds": None,
               "epoch_s": None, "parameters": None, "kd_parameters": None}


# --------------------------------------------------------------------------------------------------
# Executors
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExecutorSettings:
    """Where fits run: ``kind`` (serial | local | ray), ``workers`` (local; 0 = cores // threads),
    ``threads`` per fit, ``ray_address`` (None: a local Ray), ``gpus_per_fit`` (Ray)."""

    kind: str = "serial"
    workers: int = 0
    threads: int = 1
    ray_address: str | None = None
    gpus_per_fit: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ValueError(f"executor {self.kind!r}; choose one of {EXECUTORS}")
        if self.threads < 1 or self.workers < 0:
            raise ValueError(f"threads must be >= 1 and workers >= 0, got threads={self.threads}, "
                             f"workers={self.workers}")
        cores = os.cpu_count() or 1
        if self.kind == "local" and self.workers * self.threads > cores:
            raise ValueError(f"{self.workers} workers x {self.threads} threads exceed the {cores} cores; "
                             f"lower KDREPRO_WORKERS or KDREPRO_THREADS")

    @property
    def pool_size(self) -> int:
        return self.workers or max(1, (os.cpu_count() or 1) // self.threads)

    @classmethod
    def from_env(cls, **overrides: Any) -> ExecutorSettings:
        env = os.environ
        values = {"kind": env.get("KDREPRO_EXECUTOR", "serial"), "workers": int(env.get("KDREPRO_WORKERS", 0)),
                  "threads": int(env.get("KDREPRO_THREADS", 1)), "ray_address": env.get("KDREPRO_RAY_ADDRESS") or None,
                  "gpus_per_fit": float(env.get("KDREPRO_GPUS_PER_FIT", 0))}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


_settings: list[ExecutorSettings] = []


def configure(**settings: Any) -> ExecutorSettings:
    """Set the executor of this process (arguments override ``KDREPRO_*`` environment variables)."""
    _settings[:] = [ExecutorSettings.from_env(**settings)]
    return _settings[0]


def current_settings() -> ExecutorSettings:
    """The configured executor; unconfigured (no ``runs.setup``): from the environment, a serial fit keeping
    this process's torch threads."""
    if not _settings:
        serial = os.environ.get("KDREPRO_EXECUTOR", "serial") == "serial"
        configure(threads=torch.get_num_threads() if serial and "KDREPRO_THREADS" not in os.environ else None)
    return _settings[0]


def _in_worker(fn: Callable, threads: int, *item: Any) -> Any:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # every worker sets its own threads: never more than it was given
    try:
        return fn(item)
    finally:
        torch.set_num_threads(previous)  # the driver (serial executor) gets its own count back


class Executor:
    """Runs ``fn`` over items (tuples of arguments) and yields results as they complete (any order)."""

    def __init__(self, settings: ExecutorSettings) -> None:
        self.settings = settings

    def map(self, fn: Callable, items: Sequence) -> Iterator:
        threads = self.settings.threads
        if self.settings.kind == "serial" or len(items) <= 1 and self.settings.kind == "local":
            for item in items:
                yield _in_worker(fn, threads, *item)
        elif self.settings.kind == "local":
            with joblib.parallel_config(backend="loky", inner_max_num_threads=threads):
                parallel = joblib.Parallel(n_jobs=min(self.settings.pool_size, len(items)),
                                           return_as="generator_unordered")
                yield from parallel(joblib.delayed(_in_worker)(fn, threads, *item) for item in items)
        else:
            yield from self._ray_map(fn, items)

    def _ray_map(self, fn: Callable, items: Sequence) -> Iterator:
        if ray is None:
            raise RuntimeError("the ray executor needs Ray: pip install 'kdrepro[cluster]'")
        if not ray.is_initialized():
            ray.init(address=self.settings.ray_address, include_dashboard=False, log_to_driver=False,
                     ignore_reinit_error=True)
        task = ray.remote(num_cpus=self.settings.threads, num_gpus=self.settings.gpus_per_fit)(_in_worker)
        shared: dict[int, Any] = {}  # large inputs (a split, teacher outputs, trajectories) go to the object store once

        def put(value: Any) -> Any:
            if isinstance(value, Split | TeacherOutputs | TeacherTrajectories):
                if id(value) not in shared:
                    shared[id(value)] = ray.put(value)
                return shared[id(value)]
            return value

        # Top-level arguments: Ray resolves object references only there.
        pending = [task.remote(fn, self.settings.threads, *(put(v) for v in item)) for item in items]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])


# --------------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------------

MODEL_KIND, STUDENT_KIND, MODULE_KIND = teachers.MODEL_KIND, "students", "kd_modules"
# Registered tasks: name -> "module:attribute" of their Task, resolved when first used (in the driver and in
# every worker), so that this layer names the chapters' fits without importing them.
TASKS = {"concf": "kdrepro.concf_task:CONCF_TASK", "trajectory": "kdrepro.trajectories:TRAJECTORY_TASK",
         "hetcomp": "kdrepro.hetcomp_task:STUDENT_TASK"}


@dataclass(frozen=True)
class Task:
    """A kind of fit the standard :func:`execute` does not cover, as functions of its :class:`FitJob`.

    - ``code(job)``: digest of the code behind the fit (part of the key).
    - ``run(job, split, inputs)``: the fit, in a worker; returns a :class:`FitOutcome` and writes nothing.
    - ``load_inputs(store, job, split)``: in the driver, what the job reads from its ``inputs``' store entries
      (``None``: the job has no inputs).
    - ``build(job, split)``: an untrained model to load the stored weights into (``None``: none stored).
    - ``seconds(job)``: the fallback estimate of the fit's seconds (from :data:`EPOCH_SECONDS`).
    """

    code: Callable[[FitJob], str]
    run: Callable[[FitJob, Split, Any], FitOutcome]
    seconds: Callable[[FitJob], float]
    load_inputs: Callable[[Store, FitJob, Split], Any] | None = None
    build: Callable[[FitJob, Split], torch.nn.Module] | None = None


@functools.cache
def task(name: str) -> Task:
    """The registered :class:`Task` called ``name`` (:data:`TASKS`)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; registered: {sorted(TASKS)}")
    module, attribute = TASKS[name].split(":")
    return getattr(importlib.import_module(module), attribute)


@functools.cache
def method_code_digest(spec: str | None, model_name: str) -> str:
    """The code behind a fit: the training loop, the model's file, and for a distilled student
    ``distill/base.py``, the teacher outputs code and each method's file with the method files it imports.

    Computed once per process: the code this process runs is the code it imported (a source edited
    meanwhile is not running here), and every job of a run gets one consistent key."""
    if spec is None:
        return teachers.model_code_digest(model_name)
    files: set[str] = {"distill/base.py", "teachers.py"}
    for name in spec.split("+"):
        module = sys.modules[type(make_config(name)).__module__]
        files.add(Path(module.__file__).resolve().relative_to(Path(__file__).resolve().parent).as_posix())
        for value in vars(module).values():
            owner = getattr(value, "__module__", "") or ""
            if owner.startswith("kdrepro.distill.") and owner != module.__name__:
                files.add(f"distill/{owner.rsplit('.', 1)[1]}.py")
    return stable_hash([teachers.model_code_digest(model_name), code_digest(*sorted(files))])


@dataclass(frozen=True)
class FitJob:
    """One fit, as plain data. ``kind``: ``models`` (no distillation: teachers, students alone),
    ``students`` (distilled) or ``kd_modules`` (distilled, keeping the trained method module)."""

    kind: str
    split: tuple[str, str]  # the split's store entry (name, key)
    dataset: str
    model: dict
    train: dict
    seed: int
    spec: str | None = None
    configs: Mapping[str, dict] = field(default_factory=dict)
    student_repr: int = 0
    teacher: FitJob | None = None  # the teacher whose outputs a distilled job learns from
    top_n: tuple[int, int] = (500, 500)
    record_selection: bool = False
    labels: Mapping[str, Any] = field(default_factory=dict)  # chapter, base, method, run keys (for people)
    code: str = ""  # digest of the code behind the fit, fixed when the job is made (method_code_digest)
    task: str = ""  # "" the standard fit (execute); else a registered Task (TASKS)
    params: Mapping[str, Any] = field(default_factory=dict)  # the task's description (plain data)
    inputs: tuple[FitJob, ...] = ()  # jobs whose stored outputs the task reads (computed first)
    # A chapter section loads this fit's trained weights (not only its ledger entry): set while planning
    # (run_jobs with need_weights), so --plan counts a refit where they are gone and --fill restores them.
    # Not part of the key: the same fit, read another way.
    reads_weights: bool = False

    def __post_init__(self) -> None:
        if not self.code:
            code = task(self.task).code(self) if self.task else method_code_digest(self.spec, self.model["name"])
            object.__setattr__(self, "code", code)

    @property
    def requires(self) -> tuple[FitJob, ...]:
        """The jobs whose outputs this one reads: its teacher, or its task's inputs."""
        return (self.teacher,) if self.teacher is not None else tuple(self.inputs)

    @property
    def described(self) -> dict:
        """What decides the fit (hashed into its key, recorded in its ledger entry)."""
        train = teachers.relevant_train(TrainConfig(**self.train))
        out = {"split": self.split[1], "model": self.model, "train": train, "seed": self.seed, "code": self.code}
        if self.kind == MODULE_KIND:  # the same training as the students fit, but another artefact: its own key
            out["keep_module"] = True
        if self.task:
            return {**out, "task": self.task, "params": dict(self.params), "inputs": [j.key for j in self.inputs]}
        if self.spec is not None:
            out.update(spec=self.spec, configs=dict(self.configs), teacher=self.teacher.key,
                       top_n=list(self.top_n), selection=self.record_selection)
        return out

    @property
    def key(self) -> str:
        return stable_hash(self.described)

    @property
    def config_key(self) -> str:
        """The key without the code digest: an entry with this but another key is stale."""
        return stable_hash({k: v for k, v in self.described.items() if k != "code"})

    @property
    def name(self) -> str:
        model = f"{self.dataset}-{self.model['name']}-d{self.model['dim']}"
        if self.task:
            return f"{model}-{self.task}-{stable_hash(dict(self.params), 6)}"
        return model if self.spec is None else f"{model}-{self.spec.replace('+', '_')}"

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig(**self.model)

    @property
    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.train)

    @property
    def label(self) -> str:
        return " ".join(f"{v}" if k in ("base", "method") else f"{k}={v}" for k, v in self.labels.items()
                        if k not in ("dataset", "protocol", "chapter"))

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["teacher"] = self.teacher.to_dict() if self.teacher is not None else None
        out["inputs"] = [j.to_dict() for j in self.inputs]
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> FitJob:
        values = dict(data)
        values["teacher"] = cls.from_dict(values["teacher"]) if values.get("teacher") else None
        values["inputs"] = tuple(cls.from_dict(j) for j in values.get("inputs", ()))
        values["split"], values["top_n"] = tuple(values["split"]), tuple(values["top_n"])
        return cls(**values)


def model_job(split_entry: tuple[str, str], split: Split, model_config: ModelConfig, train_config: TrainConfig,
              seed: int, labels: Mapping | None = None) -> FitJob:
    return FitJob(MODEL_KIND, split_entry, split.dataset, model_config.to_dict(), train_config.to_dict(), seed,
                  labels=dict(labels or {}))


@dataclass
class FitOutcome:
    """What a worker hands back: everything the driver stores and records."""

    key: str
    state: dict[str, torch.Tensor]
    result: dict  # test, valid, best_epoch, seconds, epochs_run, epoch_s, parameters, kd_parameters
    history: list[dict]
    config: dict
    module_state: dict[str, torch.Tensor] | None = None
    selection: dict[str, np.ndarray] | None = None
    threads: int = 1
    device: str = "cpu"
    files: dict[str, Any] = field(default_factory=dict)  # a task's own store files (arrays, JSON)


def fit_summary(result: FitResult, kd_parameters: int) -> dict:
    train_seconds = [h["train_s"] for h in result.history if "train_s" in h]
    return {"test": result.test, "valid": result.valid, "best_epoch": result.best_epoch, "seconds": result.seconds,
            "epochs_run": len(result.history), "epoch_s": float(np.mean(train_seconds)) if train_seconds else None,
            "parameters": count_parameters(result.model), "kd_parameters": kd_parameters}


LEAVE_ONE_OUT = ("loo_sampled", "loo_full")


def held_out_ranks(model: torch.nn.Module, split: Split) -> str | None:
    """Leave-one-out protocols: each test user's held-out item rank (1-based; 0 beyond the top max k), as
    base64 bytes in the order of the test users, from which every per-user metric follows
    (:func:`kdrepro.metrics.per_user_metrics_from_ranks`): the popularity breakdowns need no weights."""
    if split.protocol not in LEAVE_ONE_OUT:
        return None
    ndcg = evaluate(model, split, "test", per_user=True)[f"NDCG@{max(split.ks)}"]
    inside = ndcg > 0  # NDCG@k of one relevant item is 1 / log2(rank + 1) within the top k, else 0
    ranks = np.zeros(len(ndcg), dtype=np.uint8)
    ranks[inside] = np.rint(2.0 ** (1.0 / ndcg[inside]) - 1)
    return base64.b64encode(ranks.tobytes()).decode()


def decode_ranks(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=np.uint8).astype(np.int64)


def execute(item: tuple[FitJob, Split, TeacherOutputs | None]) -> FitOutcome:
    """Run one fit (in a worker or in the driver); it writes nothing."""
    job, split, outputs = item
    if job.task:
        return task(job.task).run(job, split, outputs)
    selection_log, module = None, None
    if job.spec is not None:
        configs = {name: make_config(name, values) for name, values in job.configs.items()}
        module = build_method(job.spec, outputs, split, job.student_repr, seed=job.seed, **configs)
        if job.record_selection:
            selection_log = SelectionLog(module)
    kd_parameters = count_parameters(module) if module is not None else 0
    result = fit(job.model_config, split, job.train_config, distill=selection_log or module, seed=job.seed)
    selection = None
    if selection_log is not None:
        epochs, experts = selection_log.finish(len(result.history))
        selection = {"epochs": epochs, "experts": experts}
    keep_module = module is not None and job.kind == MODULE_KIND
    summary = fit_summary(result, kd_parameters)
    summary["test_ranks"] = held_out_ranks(result.model, split)
    return FitOutcome(
        key=job.key, state={k: v.detach().cpu() for k, v in result.model.state_dict().items()},
        result=summary, history=result.history, config=result.config,
        module_state={k: v.detach().cpu() for k, v in module.state_dict().items()} if keep_module else None,
        selection=selection, threads=torch.get_num_threads(),
        device=str(resolve_device(job.train_config.device)))


# --------------------------------------------------------------------------------------------------
# DE's expert selection over training (recorded by the job that fits it)
# --------------------------------------------------------------------------------------------------


def recorded_epoch(epoch: int) -> bool:
    """The epochs after which a selection map is kept: every one up to 20, every 5th to 100, then every 10th."""
    return epoch <= 20 or (epoch <= 100 and epoch % 5 == 0) or epoch % 10 == 0


class SelectionLog(torch.nn.Module):
    """Wraps a distillation module that contains DE and records which expert each user selects.

    At the start of epoch ``e`` (so after ``e - 1`` epochs of training) it stores
    ``DE.selection_map("user")`` when ``e - 1`` is a recorded epoch; ``finish`` adds the state after the
    last epoch and returns ``(epochs (R,), experts (R, num_users))``.
    """

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        found = [m for m in inner.modules() if hasattr(m, "selection_map")]
        if not found:
            raise ValueError("SelectionLog needs a distillation module that contains DE")
        self._de = found  # a list, so that DE is not registered twice
        self.epochs: list[int] = []
        self.maps: list[np.ndarray] = []

    def forward(self, student, batch):
        return self.inner(student, batch)

    def record(self, epoch: int) -> None:
        if not self.epochs or self.epochs[-1] != epoch:
            self.epochs.append(epoch)
            self.maps.append(self._de[0].selection_map("user").numpy().astype(np.int16))

    def on_epoch_start(self, epoch: int, generator: torch.Generator) -> None:
        if recorded_epoch(epoch - 1):
            self.record(epoch - 1)
        self.inner.on_epoch_start(epoch, generator)

    def finish(self, epochs_run: int) -> tuple[np.ndarray, np.ndarray]:
        self.record(epochs_run)
        return np.asarray(self.epochs), np.stack(self.maps)


# --------------------------------------------------------------------------------------------------
# The results ledger
# --------------------------------------------------------------------------------------------------


def default_ledger_root() -> Path:
    """``$KDREPRO_RESULTS_DIR``, else ``results/`` at the repository root (the committed ledger)."""
    root = os.environ.get("KDREPRO_RESULTS_DIR")
    return Path(root) if root else REPO_ROOT / "results"


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def _git_sha() -> str | None:
    try:
        out = _git(REPO_ROOT, "rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _round(value: Any) -> Any:
    return float(f"{value:.6g}") if isinstance(value, float) else value


def compact_history(history: Sequence[Mapping]) -> list[dict]:
    """The history at validation epochs (and the last epoch), numbers to 6 significant digits."""
    kept = [h for i, h in enumerate(history) if any(k.startswith("valid/") for k in h) or i == len(history) - 1]
    return [{k: _round(v) for k, v in h.items()} for h in kept]


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo; elsewhere the platform's word for it). Dense layers' numbers
    can differ between CPU models (MKL picks its GEMM kernels per CPU), so an entry says where it was computed."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


CPU_MODEL = cpu_model()
# What a refit must give again for the earlier entry to stand: the numbers, not the timings.
RESULT_FIELDS = ("test", "valid", "best_epoch", "epochs_run", "test_ranks", "extra")
RUN_FIELDS = ("seconds", "epoch_s", "threads", "device", "cpu", "versions", "git_sha")


#: With this variable naming a file, :func:`run_jobs` appends to it one JSON line per ledger entry it hands
#: back (``{"entry": "<dataset>/<kind>/<name>-<key>.json", "digest": ...}``): a render records what its page
#: read, and a later run can tell when a refit has since superseded a number the page shows.
READS_FILE_ENV = "KDREPRO_LEDGER_READS_FILE"
COMMIT_ENV = "KDREPRO_COMMIT_LEDGER"  # "1": commit every ledger entry to git as it is written
INDEX_LOCK_RETRIES, INDEX_LOCK_WAIT_S = 30, 1.0  # another git command holding .git/index.lock: wait for it


def entry_digest(entry: Mapping) -> str:
    """A hash of what a page can read of a ledger entry: all of it but ``refits`` (a refit that gives the
    recorded numbers leaves the entry's record as it was) and the ``path`` :meth:`Ledger.entries` adds."""
    return stable_hash({k: v for k, v in entry.items() if k not in ("refits", "path")})


def reconcile_refit(earlier: dict, fresh: dict) -> dict:
    """The entry to keep when a recorded fit is trained again to restore its weights.

    Same numbers (every field of RESULT_FIELDS): the earlier entry stays the record — its timings and git SHA
    are those of the run that produced the published tables — and the refit is noted under ``refits``. Other
    numbers (dense layers on another CPU model, see the README): the fresh entry is the record, since it is
    what the store's weights now give, and the earlier numbers are kept under ``superseded``, so a changed
    table can be traced to the machine that changed it."""
    run = {k: fresh.get(k) for k in RUN_FIELDS}
    if all(earlier.get(k) == fresh.get(k) for k in RESULT_FIELDS):
        return {**earlier, "refits": [*earlier.get("refits", []), run]}
    superseded = {k: earlier.get(k) for k in ("test", "valid", "best_epoch", "epochs_run", *RUN_FIELDS)}
    return {**fresh, "superseded": [*earlier.get("superseded", []), superseded]}


class LedgerCommits:
    """Commits each ledger entry to git the moment it is written (``KDREPRO_COMMIT_LEDGER=1``, which
    ``run_all.py --commit-ledger`` sets): a campaign's finished fits are in history as they complete, and a
    machine that does not come back loses only the fits in flight, never hours of uncommitted entries.

    Each commit holds that entry's file only (``git commit --only``): whatever else the tree holds, staged
    or not, stays as it was. Processes that record at the same time (two fills, a fill beside a render)
    commit one at a time under a lock file in the repository's git folder. An entry git refuses (a hook,
    a full disk) stays written on disk, is reported on stderr and is retried with the next one: the
    campaign goes on."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        git_dir = _git(root, "rev-parse", "--absolute-git-dir")
        if git_dir.returncode:
            raise ValueError(f"{COMMIT_ENV}=1: the results ledger {root} is not inside a git work tree "
                             f"({git_dir.stderr.strip()}); unset {COMMIT_ENV} or drop --commit-ledger")
        identity = _git(root, "var", "GIT_COMMITTER_IDENT")
        if identity.returncode:
            raise ValueError(f"{COMMIT_ENV}=1: git has no committer identity to commit the results ledger with "
                             f"(set user.name and user.email: git config user.email you@example.org)")
        self.root = root
        self.lock = Path(git_dir.stdout.strip()) / "kdrepro-ledger.lock"
        self.pending: dict[Path, str] = {}  # entry file -> its commit message, until a commit holds it

    def commit(self, path: Path, message: str) -> None:
        """Commit ``path`` (and any entry an earlier commit failed on) with ``message``."""
        self.pending[path] = message
        with open(self.lock, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for entry, text in list(self.pending.items()):
                status = _git(self.root, "status", "--porcelain", "--", str(entry))
                if status.returncode == 0 and not status.stdout.strip():  # written as it already was committed
                    del self.pending[entry]
                    continue
                done = self._git_waiting("add", "--", str(entry))
                if done.returncode == 0:
                    done = self._git_waiting("commit", "-q", "--only", "-m", text, "--", str(entry))
                if done.returncode:
                    print(f"ledger: could not commit {entry} ({(done.stderr or done.stdout).strip()}); the entry "
                          f"is written and will be committed with the next one", file=sys.stderr)
                    continue
                del self.pending[entry]

    def _git_waiting(self, *args: str) -> subprocess.CompletedProcess:
        """``git *args``, tried again for up to ~30 s while another git command (a person's commit, an
        editor) holds the repository's index lock."""
        done = _git(self.root, *args)
        for _ in range(INDEX_LOCK_RETRIES):
            if done.returncode == 0 or "index.lock" not in done.stderr:
                break
            time.sleep(INDEX_LOCK_WAIT_S)
            done = _git(self.root, *args)
        return done


def commit_message(job: FitJob, seconds: float, threads: int, written: Mapping, earlier: Mapping | None) -> str:
    """``Ledger: fit bpr IR-RRD ir_users=40 seed 0 (5,012 s at 1 thread)``, with this run's own time; for a
    refit (``earlier`` is the entry it found), whether the entry ``written`` kept the recorded numbers."""
    if earlier is None:
        what = "fit"
    else:
        what = "refit, same numbers:" if entry_digest(written) == entry_digest(earlier) else "refit, other numbers:"
    return (f"Ledger: {what} {job.label or job.name} seed {job.seed} ({seconds or 0:,.0f} s at {threads} "
            f"thread{'' if threads == 1 else 's'})")


class Ledger:
    """One JSON per completed fit under ``root/<dataset>/<kind>/<name>-<key>.json`` (written atomically
    by the driver only; committed to git as it is written when ``commit``, by default when
    ``KDREPRO_COMMIT_LEDGER=1``)."""

    def __init__(self, root: str | os.PathLike | None = None, commit: bool | None = None) -> None:
        self.root = Path(root) if root is not None else default_ledger_root()
        self._git = _git_sha()
        self._versions = package_versions(VERSIONED_PACKAGES)
        if commit is None:
            commit = os.environ.get(COMMIT_ENV, "") == "1"
        self.commits = LedgerCommits(self.root) if commit else None

    @staticmethod
    def entry_name(job: FitJob) -> str:
        """``<dataset>/<kind>/<name>-<key>.json``: the entry's path under any ledger root."""
        return f"{job.dataset}/{job.kind}/{job.name}-{job.key}.json"

    def path(self, job: FitJob) -> Path:
        return self.root / self.entry_name(job)

    def changed(self, reads: Mapping[str, str]) -> list[str]:
        """The entries of ``reads`` (``{"<dataset>/<kind>/<name>-<key>.json": entry_digest}``, what a page
        read) that are gone or no longer have that digest (a refit superseded them), sorted."""
        changed = []
        for name, digest in sorted(reads.items()):
            try:
                current = entry_digest(json.loads((self.root / name).read_text()))
            except (OSError, ValueError):
                current = None
            if current != digest:
                changed.append(name)
        return changed

    def get(self, job: FitJob) -> dict | None:
        path = self.path(job)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text())
        except ValueError:
            return None
        return entry if entry.get("key") == job.key else None

    def entries(self) -> Iterator[dict]:
        for path in sorted(self.root.glob("*/*/*.json")):
            try:
                yield {**json.loads(path.read_text()), "path": str(path)}
            except ValueError:
                continue

    def record(self, job: FitJob, outcome_result: Mapping, history: Sequence[Mapping], threads: int, device: str
               ) -> dict:
        """Write the entry of a completed fit. A refit (the fit is recorded, its weights were gone from the
        store) is reconciled with the earlier entry by :func:`reconcile_refit`."""
        entry = {
            "key": job.key, "config_key": job.config_key, "kind": job.kind, "name": job.name,
            "labels": dict(job.labels), "described": job.described, "job": job.to_dict(),
            "test": outcome_result["test"], "valid": outcome_result["valid"],
            **{k: outcome_result.get(k) for k in ("best_epoch", "epochs_run", "seconds", "epoch_s", "parameters",
                                                   "kd_parameters", "test_ranks")},
            "threads": threads, "device": device, "cpu": CPU_MODEL, "versions": self._versions,
            "git_sha": self._git, "history": compact_history(history),
        }
        if outcome_result.get("extra") is not None:  # a task's small per-fit results (tables need no weights)
            entry["extra"] = outcome_result["extra"]
        earlier = self.get(job)
        if earlier is not None:
            entry = reconcile_refit(earlier, json.loads(json.dumps(entry)))
        write_json(self.path(job), entry)
        written = json.loads(self.path(job).read_text())  # as every later reader sees it (keys sorted)
        if self.commits is not None:
            message = commit_message(job, outcome_result.get("seconds"), threads, written, earlier)
            self.commits.commit(self.path(job), message)
        return written


# --------------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------------


def split_entry(store: Store, split: Split) -> tuple[str, str]:
    """The store entry (name, key) holding ``split`` (saved there when it is not yet)."""
    known = store.split_entries.get(split.key)
    if known is not None and store.open("splits", *known) is not None:
        return known
    name, key = f"{split.dataset}-{split.protocol}-seed{split.split_seed}", split.key
    if store.open("splits", name, key) is None:
        store.write_split(name, key, split)
    return name, key


def load_job_split(store: Store, job: FitJob) -> Split:
    entry = store.open("splits", *job.split)
    if entry is None:
        raise FileNotFoundError(f"split entry {job.split} is not in the store at {store.root}; run the chapter's "
                                f"notebook (or `run_all.py --plan`) once to create it")
    return load_split(entry.path / "split.npz")


@dataclass
class Done:
    """A completed job: its ledger entry, and whether it was computed by this call."""

    job: FitJob
    entry: dict
    trained: bool


def _store_files(outcome: FitOutcome, job: FitJob) -> dict[str, Any]:
    files: dict[str, Any] = {"config.json": {"model": job.model, **outcome.config, "key": job.key,
                                             "described": job.described},
                             "history.json": outcome.history,
                             "metrics.json": {k: outcome.result[k] for k in ("test", "valid", "best_epoch", "seconds")}
                             | {"kd_parameters": outcome.result["kd_parameters"]}}
    if outcome.state:  # a task may keep no weights (a trajectory keeps its rankings)
        files["model.pt"] = outcome.state
    if outcome.result.get("extra") is not None:
        files["extra.json"] = outcome.result["extra"]
    files.update(outcome.files)
    if outcome.selection is not None:
        files["selection.npz"] = outcome.selection
    if outcome.module_state is not None:
        files["module.pt"] = outcome.module_state
    return files


def _from_store(store: Store, ledger: Ledger, job: FitJob) -> dict | None:
    """A fit in the store but not in the ledger (trained before the ledger existed): recorded now."""
    entry = store.open(job.kind, job.name, job.key)
    if entry is None:
        return None
    metrics, history = entry.json("metrics.json"), entry.json("history.json")
    train_seconds = [h["train_s"] for h in history if "train_s" in h]
    stored = set(entry.files)
    result = {**metrics, "epochs_run": len(history),
              "epoch_s": float(np.mean(train_seconds)) if train_seconds else None,
              "parameters": int(sum(v.numel() for v in entry.state("model.pt").values()))
              if "model.pt" in stored else None,
              "extra": entry.json("extra.json") if "extra.json" in stored else None}
    return ledger.record(job, result, history, threads=0, device="unknown")


def _eta(started: float, done: int, total: int) -> str:
    if not done:
        return "ETA unknown"
    left = (time.time() - started) / done * (total - done)
    return f"ETA {left / 60:.1f} min" if left >= 60 else f"ETA {left:.0f} s"


def run_jobs(jobs: Sequence[FitJob], *, store: Store | None = None, ledger: Ledger | None = None,
             settings: ExecutorSettings | None = None, need_weights: bool = False,
             log: Callable[[str], None] = print) -> dict[str, Done]:
    """Complete every job: from the ledger when recorded there (and, with ``need_weights``, in the store),
    else through the executor; teachers of missing distilled jobs first. Returns ``{key: Done}``."""
    store = store or Store()
    ledger = ledger or Ledger()
    settings = settings or current_settings()
    unique = list({job.key: job for job in jobs}.values())
    read = {job.key for job in jobs if need_weights or job.reads_weights}  # fits whose weights must be in the store
    plan_file = os.environ.get(PLAN_FILE_ENV)
    if plan_file:  # planning: record the jobs, fit nothing, hand back what the ledger has (else placeholders)
        recorded = [dataclasses.replace(job, reads_weights=job.key in read) for job in unique]
        with open(plan_file, "a") as handle:
            handle.writelines(json.dumps(job.to_dict()) + "\n" for job in recorded)
        return {job.key: Done(job, ledger.get(job) or dict(PLACEHOLDER), False) for job in unique}
    done: dict[str, Done] = {}
    missing: list[FitJob] = []
    for job in unique:
        entry = ledger.get(job)
        if entry is not None and (job.key not in read or store.open(job.kind, job.name, job.key) is not None):
            done[job.key] = Done(job, entry, False)
            continue
        entry = _from_store(store, ledger, job)
        if entry is not None:
            done[job.key] = Done(job, entry, False)
        else:
            missing.append(job)
    if not missing:
        return _reads_noted(done)
    needed = {d.key: d for j in missing for d in j.requires}  # teachers, a task's inputs
    missing_keys = {j.key for j in missing}
    needed_jobs = [d for k, d in needed.items() if store.open(d.kind, d.name, d.key) is None and k not in missing_keys]
    first = [j for j in missing if not j.requires] + needed_jobs
    second = [j for j in missing if j.requires]
    if settings.kind != "serial":  # longest first: the last fits to start are short, no worker idles long at the end
        timings = recorded_timings(ledger.entries())
        first, second = (sorted(phase, key=lambda j: -estimate_seconds(j, timings)[0]) for phase in (first, second))
    total, count, started = len(first) + len(second), 0, time.time()
    executor = Executor(settings)
    splits: dict[tuple[str, str], Split] = {}
    outputs_of: dict[tuple, Any] = {}  # one load per teacher (or a task's inputs), not per student
    for phase in (first, second):
        if not phase:
            continue
        items = []
        for job in phase:
            if settings.kind != "serial":  # no progress bars from workers (cosmetic: the key is unchanged)
                job = dataclasses.replace(job, train={**job.train, "progress": False})
            if job.split not in splits:
                splits[job.split] = load_job_split(store, job)
            outputs = None
            if job.task and job.inputs:
                wanted = (job.task, *(j.key for j in job.inputs))
                if wanted not in outputs_of:
                    outputs_of[wanted] = task(job.task).load_inputs(store, job, splits[job.split])
                outputs = outputs_of[wanted]
            elif job.teacher is not None:
                wanted = (job.teacher.key, tuple(job.top_n))
                if wanted not in outputs_of:
                    outputs_of[wanted] = teacher_outputs(store, job, splits[job.split])
                outputs = outputs_of[wanted]
            items.append((job, splits[job.split], outputs))
        by_key = {job.key: job for job in phase}
        for outcome in executor.map(execute, items):
            job = by_key[outcome.key]
            store.write(job.kind, job.name, job.key, _store_files(outcome, job), job.described)
            entry = ledger.record(job, outcome.result, outcome.history, outcome.threads, outcome.device)
            done[job.key] = Done(job, entry, True)
            count += 1
            log(f"[fit {count}/{total}] {job.label or job.name} seed {job.seed}: trained in "
                f"{outcome.result['seconds']:.1f} s, best epoch {outcome.result['best_epoch']}; "
                f"{_eta(started, count, total)}")
    return _reads_noted(done)


def _reads_noted(done: dict[str, Done]) -> dict[str, Done]:
    """``done``, its entries appended to the :data:`READS_FILE_ENV` file first when one is named."""
    reads_file = os.environ.get(READS_FILE_ENV)
    if reads_file:
        with open(reads_file, "a") as handle:
            handle.writelines(json.dumps({"entry": Ledger.entry_name(d.job), "digest": entry_digest(d.entry)}) + "\n"
                              for d in done.values())
    return done


def load_model(store: Store, job: FitJob, settings: ExecutorSettings | None = None) -> torch.nn.Module:
    """The trained model of ``job`` (from the store; fitted now when the store lacks it)."""
    entry = load_entry(store, job, settings)
    split = load_job_split(store, job)
    torch.manual_seed(job.seed)
    if job.task and task(job.task).build is None:
        raise ValueError(f"task {job.task!r} keeps no weights: {job.name} has no model to load")
    model = task(job.task).build(job, split) if job.task else build_model(job.model_config, split)
    model.load_state_dict(entry.state("model.pt"))
    return model.to(resolve_device(job.train_config.device))


def load_entry(store: Store, job: FitJob, settings: ExecutorSettings | None = None):
    """The verified store entry of ``job`` (fitted now when the store lacks it)."""
    entry = store.open(job.kind, job.name, job.key)
    if entry is None:
        run_jobs([job], store=store, settings=settings, need_weights=True)
        entry = store.open(job.kind, job.name, job.key)
    if entry is None:  # planning mode records the job and fits nothing
        raise RuntimeError(f"{job.name} ({job.key}) is not in the store and was not fitted (planning mode?)")
    return entry


def teacher_outputs(store: Store, job: FitJob, split: Split) -> TeacherOutputs:
    """The stored outputs of ``job``'s teacher (the teacher's fit and its outputs computed when missing)."""
    teacher = job.teacher
    model = load_model(store, teacher)
    path = store.folder(teacher.kind, teacher.name, teacher.key)
    fitted = teachers.Teacher(model, teacher.model_config, split, {}, [], path, teacher.key, True, store)
    return fitted.outputs(*job.top_n)


# --------------------------------------------------------------------------------------------------
# Campaigns: collect a chapter's jobs, plan what is missing, fill it
# --------------------------------------------------------------------------------------------------


def collect_jobs(chapters: Sequence[tuple[str, Path, Mapping[str, Any]]], *, kernel: str = "kdrepro",
                 workdir: str | os.PathLike, timeout: int | None = PLAN_CELL_TIMEOUT,
                 log: Callable[[str], None] = print) -> dict[str, list[FitJob]]:
    """The fits of each chapter ``(stem, notebook path, parameters)``, without training anything.

    Each notebook is executed (papermill, every cell, errors allowed) with :data:`PLAN_FILE_ENV` set:
    :func:`run_jobs` records every job it is handed and returns the ledger's entries, or empty
    placeholders, so the chapter's own code enumerates its fits (data and splits are loaded for real,
    splits saved in the store). Cells that need trained weights fail in this mode and are ignored; a cell
    running past ``timeout`` seconds (timing sections, which fit nothing) is interrupted and skipped.
    Executed copies and the chapter's outputs go under ``workdir``.
    """
    workdir = Path(workdir)
    found: dict[str, list[FitJob]] = {}
    for stem, path, parameters in chapters:
        plan_file = workdir / f"{stem}.jobs.jsonl"
        plan_file.unlink(missing_ok=True)
        plan_file.touch()
        started = time.time()
        try:
            with environment_variable(PLAN_FILE_ENV, str(plan_file)):
                papermill.execute_notebook(str(path), str(workdir / f"{stem}.ipynb"), parameters=dict(parameters),
                                           kernel_name=kernel, progress_bar=False, allow_errors=True,
                                           cwd=str(Path(path).parent), execution_timeout=timeout,
                                           interrupt_on_timeout=True,
                                           kernel_manager_class=PrivateSocketKernelManager)
        except papermill.PapermillExecutionError:
            pass  # sections that need weights fail while planning; their jobs are recorded all the same
        lines = [line for line in plan_file.read_text().splitlines() if line.strip()]
        jobs: dict[str, FitJob] = {}
        for line in lines:  # a fit shared by sections keeps the label of the first (the main table's)
            job = FitJob.from_dict(json.loads(line))
            first = jobs.setdefault(job.key, job)
            if job.reads_weights and not first.reads_weights:  # one section reading its weights is enough
                jobs[job.key] = dataclasses.replace(first, reads_weights=True)
        found[stem] = list(jobs.values())
        log(f"{stem}: {len(jobs)} fits enumerated in {time.time() - started:.0f} s")
    return found


def job_text(job: FitJob) -> str:
    """How ``--plan`` names a fit, and what ``--match`` searches: ``"students bpr DE lambda_de=0.1 seed 0"``."""
    return f"{job.kind} {job.label or job.name} seed {job.seed}"


def select_jobs(jobs_by_chapter: Mapping[str, Sequence[FitJob]], pattern: str | None) -> dict[str, list[FitJob]]:
    """The fits whose :func:`job_text` matches the regular expression ``pattern`` (all of them for None); the
    teachers and inputs a kept fit needs are computed with it all the same."""
    if pattern is None:
        return {chapter: list(jobs) for chapter, jobs in jobs_by_chapter.items()}
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"--match {pattern!r} is not a regular expression: {exc}") from None
    return {chapter: [job for job in jobs if compiled.search(job_text(job))]
            for chapter, jobs in jobs_by_chapter.items()}


def expected_epochs(train: Mapping[str, Any]) -> int:
    """Epochs a fit is expected to run before the ledger knows: all of them without early stopping, else
    :data:`EARLY_STOPPED_EPOCHS` (at most all of them)."""
    if not train.get("patience"):
        return int(train["epochs"])
    return int(min(train["epochs"], EARLY_STOPPED_EPOCHS))


@dataclass(frozen=True)
class Timing:
    """A recorded fit's cost: seconds, epochs run and its schedule (:func:`_schedule`)."""

    seconds: float
    epochs: int | None
    schedule: tuple
    scale: float = 1.0  # its cost_scale: the method settings' share of work, against the measured setting


def _schedule(train: Mapping[str, Any]) -> tuple:
    return (train.get("epochs"), train.get("patience"), train.get("eval_every"))


def _cost_class(job_or_entry: Mapping[str, Any]) -> tuple:
    if job_or_entry.get("task"):  # same task, model and parameters: any seed, train settings or code
        return (job_or_entry["dataset"], job_or_entry["task"], json.dumps(job_or_entry["model"], sort_keys=True),
                json.dumps(job_or_entry["params"], sort_keys=True))
    return (job_or_entry["dataset"], job_or_entry["spec"], job_or_entry["model"]["name"], job_or_entry["model"]["dim"])


def cost_scale(job: Mapping[str, Any]) -> float:
    """How much more work per epoch ``job``'s (a :meth:`FitJob.to_dict`) method settings give than those
    :data:`EPOCH_SECONDS` was measured at, so that a fit with no recorded twin is estimated from its recorded
    siblings, not from the first one's seconds: DE's expert bank (M experts d_s → (d_s + d_t)/2 → d_t;
    measured at M = 30, d_s = 20, d_t = 200), HTD's (K groups, the same widths) and IR's users per item
    (K + L; measured at 20 + 20). Every other setting counts 1."""
    def expert_bank(count: int, d_s: int, d_t: int) -> int:  # multiply-adds of `count` experts d_s → h → d_t
        hidden = (d_s + d_t) // 2
        return count * (d_s * hidden + hidden * d_t)

    scale = 1.0
    for method in (job.get("spec") or "").split("+"):
        config = (job.get("configs") or {}).get(method) or {}
        if method in ("de", "htd"):
            d_s = int(job.get("student_repr") or job["model"]["dim"])
            d_t = int((job.get("teacher") or {}).get("model", {}).get("dim", 200))
            count = config.get("num_experts" if method == "de" else "num_groups", 30)
            scale *= expert_bank(count, d_s, d_t) / expert_bank(30, 20, 200)
        elif method == "ir":
            scale *= (config.get("num_interesting", 20) + config.get("num_uninteresting", 20)) / 40
    return scale


def recorded_timings(entries: Iterable[Mapping[str, Any]]) -> dict[tuple, list[Timing]]:
    """The ledger's fits' seconds by cost class (:func:`estimate_seconds` reads them)."""
    timings: dict[tuple, list[Timing]] = {}
    for entry in entries:
        job = entry.get("job")
        if job and entry.get("seconds") is not None and entry.get("threads"):
            timing = Timing(float(entry["seconds"]), entry.get("epochs_run"), _schedule(job.get("train", {})),
                            cost_scale(job))
            timings.setdefault(_cost_class(job), []).append(timing)
    return timings


def estimate_seconds(job: FitJob, timings: Mapping[tuple, list[Timing]]) -> tuple[float, str]:
    """Seconds ``job`` should take, from the ledger's fits of its class (dataset, method, model, dim; a task's:
    task, model, parameters): the median of those trained under the same schedule (epochs, patience,
    validation interval), else their median seconds per epoch × :func:`expected_epochs` ("ledger per epoch":
    DE's 101-epoch runs say little about a 1000-epoch schedule's whole cost). Without any, the fallback
    costs: (the base model's epoch, :func:`base_seconds`, plus each method's extra, :data:`EPOCH_SECONDS`) ×
    :func:`expected_epochs`, plus a validation every ``eval_every`` epochs."""
    seen = timings.get(_cost_class(job.to_dict()))
    if seen:
        scale = cost_scale(job.to_dict())
        same = [t.seconds for t in seen if job.task or (t.schedule == _schedule(job.train) and t.scale == scale)]
        if same:
            return float(np.median(same)), "ledger"
        per_epoch = [t.seconds / t.epochs * _fallback_epoch(job, scale) / _fallback_epoch(job, t.scale)
                     for t in seen if t.epochs]
        if per_epoch:
            return float(np.median(per_epoch)) * expected_epochs(job.train), "ledger per epoch"
    if job.task:
        return task(job.task).seconds(job), "fallback"
    _, validation_s = base_seconds(job.model["name"], int(job.model["dim"]))
    per_epoch = _fallback_epoch(job, cost_scale(job.to_dict()))
    epochs = expected_epochs(job.train)
    validations = epochs // max(1, int(job.train.get("eval_every", 1)))
    return per_epoch * epochs + validation_s * validations, "fallback"


def _fallback_epoch(job: FitJob, scale: float) -> float:
    """The fallback seconds of one of ``job``'s epochs were its settings' :func:`cost_scale` ``scale``: the base
    model's epoch plus each method's extra (:func:`method_epoch_seconds`), the scalable ones (DE, HTD, IR)
    their measured extra times ``scale``."""
    epoch_s, _ = base_seconds(job.model["name"], int(job.model["dim"]))
    return epoch_s + sum(EPOCH_SECONDS[m] * scale if m in SCALED_METHODS else method_epoch_seconds(job, m)
                         for m in (job.spec or "").split("+") if m)


def method_epoch_seconds(job: FitJob, method: str) -> float:
    """Fallback seconds one epoch of ``method`` adds to ``job``'s student (:data:`EPOCH_SECONDS`, 1 s for a
    method not listed); PHR's grow with its hidden width (``hidden=None``: HyperKDMA's (d_t + d_t·d_s) / 2)."""
    seconds = EPOCH_SECONDS.get(method, 1.0)
    if method in SCALED_METHODS:
        return seconds * cost_scale({**job.to_dict(), "spec": method})
    if method != "phr":
        return seconds
    hidden = (job.configs.get("phr") or {}).get("hidden")
    if hidden is None:
        d_t = int(job.teacher.model["dim"]) if job.teacher is not None else int(job.model["dim"])
        hidden = (d_t + d_t * (job.student_repr or int(job.model["dim"]))) // 2
    return seconds + max(0, int(hidden) - PHR_MEASURED_HIDDEN) * PHR_SECONDS_PER_HIDDEN


def base_seconds(model: str, dim: int) -> tuple[float, float]:
    """Fallback (epoch, validation) seconds of base ``model`` at size ``dim`` (:data:`BASE_SECONDS`; a model
    not measured there costs what BPR-MF does): linear in the dimension between the two measured sizes,
    extrapolated beyond them, never under the smaller size's cost."""
    (low_dim, low), (high_dim, high) = sorted(BASE_SECONDS.get(model, BASE_SECONDS["bpr"]).items())
    share = (dim - low_dim) / (high_dim - low_dim)
    return tuple(max(a, a + share * (b - a)) for a, b in zip(low, high, strict=True))


def plan(jobs_by_chapter: Mapping[str, Sequence[FitJob]], ledger: Ledger | None = None,
         store: Store | None = None) -> list[dict]:
    """One row per (chapter, fit): ``status`` done | missing | stale (recorded under another code digest:
    never used) | refit, and the estimated seconds of the fits to compute (the teachers and task inputs they
    need included).

    ``refit``: a fit recorded in the ledger whose weights are not in ``store`` (given: the ledger keeps no
    weights, so on a fresh machine they are gone) while something reads them: a teacher (or a task's input)
    of a fit still to compute, a ``kd_modules`` fit (kept for its trained module, which a chapter's analysis
    loads), or a fit a section loads the weights of (``reads_weights``: an inference timing, say).
    :func:`run_jobs` trains it again (the same numbers, on CPU), at its recorded cost.
    """
    ledger = ledger or Ledger()
    entries = list(ledger.entries())
    timings = recorded_timings(entries)
    stale_configs = {entry.get("config_key", "") for entry in entries}
    rows = []
    for chapter, jobs in jobs_by_chapter.items():
        wanted = list({j.key: j for j in [*(d for j in jobs for d in j.requires), *jobs]}.values())
        recorded = {job.key: ledger.get(job) for job in wanted}
        read_by_missing = {d.key for j in wanted if recorded[j.key] is None for d in j.requires}
        for job in wanted:
            entry = recorded[job.key]
            if entry is None:
                status = "stale" if job.config_key in stale_configs else "missing"
            elif (store is not None and (job.key in read_by_missing or job.kind == MODULE_KIND or job.reads_weights)
                  and store.open(job.kind, job.name, job.key) is None):
                status = "refit"
            else:
                status = "done"
            if status == "refit" and entry.get("seconds") is not None:
                seconds, source = float(entry["seconds"]), "ledger"
            else:
                seconds, source = estimate_seconds(job, timings) if status != "done" else (0.0, "")
            rows.append({"chapter": chapter, "kind": job.kind, "fit": job.label or job.name, "dataset": job.dataset,
                         "seed": job.seed, "key": job.key, "status": status, "est_seconds": seconds,
                         "estimate": source})
    return rows


def format_plan(rows: Sequence[Mapping[str, Any]], workers: int = 1) -> str:
    """Per chapter: fits done / missing / stale and the estimated thread-hours of what is missing."""
    lines = []
    chapters = list(dict.fromkeys(r["chapter"] for r in rows))
    unique_todo = {r["key"]: r["est_seconds"] for r in rows if r["status"] != "done"}  # chapters share fits
    for chapter in chapters:
        mine = [r for r in rows if r["chapter"] == chapter]
        todo = [r for r in mine if r["status"] != "done"]
        seconds = sum(r["est_seconds"] for r in todo)
        counts = {s: sum(r["status"] == s for r in mine) for s in ("done", "missing", "stale", "refit")}
        sources = {r["estimate"] for r in todo}
        refits = f", {counts['refit']} to refit (in the ledger, weights not in this store)" if counts["refit"] else ""
        lines.append(f"{chapter}: {len(mine)} fits, {counts['done']} done, {counts['missing']} missing, "
                     f"{counts['stale']} stale{refits}; to compute ≈ {seconds / 3600:.2f} thread-hours"
                     + (f" ({'/'.join(sorted(sources))} timings)" if sources else ""))
        several = len({r.get("dataset") for r in mine}) > 1  # e.g. chapter 06's runs on the authors' 10-core data
        for r in todo:
            data = f" [{r['dataset']}]" if several else ""
            lines.append(f"    {r['status']:7s} {r['kind']:10s} {r['fit']}{data} seed {r['seed']}  "
                         f"≈ {r['est_seconds'] / 60:.1f} min")
    total = sum(unique_todo.values())
    lines.append(f"total to compute: {len(unique_todo)} distinct fits ≈ {total / 3600:.2f} thread-hours ≈ "
                 f"{total / 3600 / max(1, workers):.2f} h on {workers} worker(s)")
    return "\n".join(lines)


def fill(jobs_by_chapter: Mapping[str, Sequence[FitJob]], *, store: Store | None = None,
         ledger: Ledger | None = None, settings: ExecutorSettings | None = None,
         log: Callable[[str], None] = print) -> dict[str, Done]:
    """Compute every missing fit of the chapters in one pool (teachers first), nothing rendered.

    Each fit is written to the store (manifest last) and the ledger as it completes, so a killed fill
    (even ``kill -9``) loses only the fits in flight: rerunning it resumes with what is missing.
    """
    every = [job for jobs in jobs_by_chapter.values() for job in jobs]
    ledger = ledger or Ledger()
    log(f"fill: {len(every)} fits in {len(jobs_by_chapter)} chapter(s)")
    done = run_jobs(every, store=store, ledger=ledger, settings=settings, log=log)
    log(f"fill: {sum(d.trained for d in done.values())} fits computed, {len(done)} complete")
    if ledger.commits is not None and ledger.commits.pending:
        log(f"fill: {len(ledger.commits.pending)} ledger entries written but not committed (git refused them, "
            f"see above): {', '.join(str(p) for p in ledger.commits.pending)}")
    return done


def weights_gone(ledger: Ledger, store: Store) -> bool:
    """Whether some fit recorded in ``ledger`` has no weights in ``store`` (cheap: no chapter is planned),
    i.e. whether a chapter might have refits pending (:func:`restore_weights`)."""
    return any(store.open(e["kind"], e["name"], e["key"], verify=False) is None
               for e in ledger.entries() if {"kind", "name", "key"} <= e.keys())


def restore_weights(jobs_by_chapter: Mapping[str, Sequence[FitJob]], *, store: Store | None = None,
                    ledger: Ledger | None = None, settings: ExecutorSettings | None = None,
                    log: Callable[[str], None] = print) -> list[FitJob]:
    """Refit now the chapters' recorded fits whose weights something reads and the store lacks (the
    ``refit`` rows of :func:`plan`), and return them.

    A render calls this before its notebook runs. Left to the notebook, a refit happens in the section that
    first loads the weights, after earlier tables have read the ledger entry the refit may replace
    (:func:`reconcile_refit`): one page would show two numbers for one fit.
    """
    store = store or Store()
    ledger = ledger or Ledger()
    pending = {row["key"] for row in plan(jobs_by_chapter, ledger, store) if row["status"] == "refit"}
    every = {job.key: job for jobs in jobs_by_chapter.values() for j in jobs for job in (*j.requires, j)}
    todo = [job for key, job in every.items() if key in pending]
    if todo:
        log(f"restoring the weights of {len(todo)} recorded fit(s) before the chapter reads the ledger")
        run_jobs(todo, store=store, ledger=ledger, settings=settings, need_weights=True, log=log)
    return todo
