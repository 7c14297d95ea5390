"""What a chapter runs: settings, run lists and sweeps → fit jobs → long-form results.

- :func:`setup`, :func:`splits_for` — threads, executor and the chapter's splits (from the store).
- :func:`run_grid` — models × roles (teacher/student dims) × protocols × seeds (chapter 00).
- :func:`run_kd` — distilled students: a :class:`KDSetting` (split, bases, seeds, dims, method configs)
  × a list of :class:`KDRun` built by :func:`method_runs`, :func:`size_runs`, :func:`sweep_runs`,
  :func:`design_runs`, :func:`tied_sweep_runs` or :func:`td_variant_runs`.
- :func:`fit_kd_module` — one distilled student with its trained method module (PHR's bridges).

Every fit is a :class:`kdrepro.jobs.FitJob` handed to :func:`kdrepro.jobs.run_jobs`: recorded fits come
from the results ledger (no weights needed), missing ones run on the configured executor (serial, local
workers or Ray; teachers first). Results, histories and per-fit summaries are built from the ledger
entries, so a complete ledger renders a chapter's metric tables without training. ``models``,
``selections`` and ``outputs`` are lazy: a section that needs weights loads them from the store when it
first reads them, and fits only those missing there.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from kdrepro import jobs
from kdrepro.data import Interactions
from kdrepro.distill import METHODS, make_config, parse
from kdrepro.distill import build as build_method
from kdrepro.jobs import FitJob, run_jobs
from kdrepro.models import ModelConfig
from kdrepro.models import build as build_model
from kdrepro.report import history_frame, long_results
from kdrepro.splits import Split
from kdrepro.store import Store
from kdrepro.train import TrainConfig, resolve_device

# The base objective each model is trained with (the papers' choices).
BASE_LOSS = {"bpr": "bpr", "mf": "bpr", "neumf": "bce", "lightgcn": "bpr", "cml": "cml"}


def environment(device: str = "auto") -> dict:
    """Where this notebook runs: resolved device, its name, torch version and CPU threads."""
    resolved = resolve_device(device)
    return {
        "device": str(resolved),
        "device_name": torch.cuda.get_device_name(resolved) if resolved.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def setup(device: str = "auto", threads: int = 0) -> dict:
    """Use ``threads`` CPU threads in torch (0 keeps torch's default), choose the executor of the fits and
    describe the environment. One thread is much faster for tiny models (the smoke profile) and on a busy
    machine.

    The executor comes from ``KDREPRO_EXECUTOR`` / ``KDREPRO_WORKERS`` / ``KDREPRO_THREADS`` /
    ``KDREPRO_RAY_ADDRESS``, read once here (``run_all.py --executor …`` sets them): a serial fit uses the
    notebook's threads, pool workers one thread each unless ``KDREPRO_THREADS`` says otherwise.
    """
    if threads > 0:
        torch.set_num_threads(threads)
    serial = os.environ.get("KDREPRO_EXECUTOR", "serial") == "serial"
    settings = jobs.configure(threads=torch.get_num_threads() if serial and "KDREPRO_THREADS" not in os.environ
                              else None)
    return {**environment(device), "executor": settings.kind, "fit_threads": settings.threads,
            "workers": settings.pool_size if settings.kind == "local" else None}


def splits_for(
    dataset: Interactions, protocols: Sequence[str], split_seed: int = 0, num_negatives: int = 499
) -> dict[str, Split]:
    """``{protocol: split}`` for every protocol (kept in the store; fixed by ``split_seed``)."""
    store = Store()
    return {p: store.split(dataset, p, split_seed, num_negatives=num_negatives) for p in protocols}


def train_config_for(model: str, base: TrainConfig) -> TrainConfig:
    """``base`` with the model's own objective (BPR for MF/LightGCN, BCE for NeuMF, hinge for CML)."""
    return replace(base, loss=BASE_LOSS.get(model, base.loss))


@dataclass
class Grid:
    """Results of :func:`run_grid`.

    - ``results``: long form ``dataset, protocol, base, method, seed, metric, value`` (test metrics).
    - ``histories``: one row per validation epoch and fit (``protocol, base, method, seed, epoch, loss, valid/…``).
    - ``fits``: one row per fit (dim, best epoch, epochs run, seconds, #parameters, from the ledger or trained now).
    - ``models``: ``{(protocol, base, method, seed): trained model}``, loaded from the store when read.
    """

    results: pd.DataFrame
    histories: pd.DataFrame
    fits: pd.DataFrame
    models: Mapping = field(default_factory=dict, repr=False)


class Lazy(Mapping):
    """A mapping whose values are computed on first access (weights loaded from the store, or fitted)."""

    def __init__(self, loaders: Mapping[object, Callable[[], object]]) -> None:
        self._loaders = dict(loaders)
        self._values: dict = {}

    def __getitem__(self, key):
        if key not in self._values:
            self._values[key] = self._loaders[key]()
        return self._values[key]

    def __iter__(self) -> Iterator:
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)


def _model_loader(store: Store, job: FitJob) -> Callable[[], torch.nn.Module]:
    return lambda: jobs.load_model(store, job)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _fit_row(entry: Mapping, trained: bool) -> dict:
    epoch_s = entry.get("epoch_s")
    return {"parameters": entry.get("parameters"), "kd_parameters": entry.get("kd_parameters") or 0,
            "best_epoch": entry.get("best_epoch"), "epochs_run": entry.get("epochs_run"),
            "seconds": float(entry.get("seconds") or np.nan),
            "epoch_s": float(epoch_s) if epoch_s is not None else np.nan, "from_cache": not trained}


def _report(what: str, done: Mapping[str, jobs.Done], total: int) -> None:
    trained = sum(d.trained for d in done.values())
    print(f"{what}: {total} fits, {total - trained} from the ledger, {trained} trained now", flush=True)


def run_grid(
    splits: Mapping[str, Split],
    protocols: Sequence[str],
    models: Sequence[str],
    dims: Mapping[str, Mapping[str, int]],
    seeds: Sequence[int],
    train_config: TrainConfig,
    *,
    cache_dir: str | os.PathLike | None = None,
) -> Grid:
    """Every protocol × model × role × seed, from the ledger or fitted through the executor.

    ``dims`` maps a role (the ``method`` label, e.g. ``"Teacher"``, ``"Student"``) to ``{model: dim}``.
    Each model is trained with its own objective (:data:`BASE_LOSS`). ``cache_dir``: the store's root.
    """
    unknown = [p for p in protocols if p not in splits]
    if unknown:
        raise ValueError(f"no split for protocols {unknown}; splits has {sorted(splits)}")
    store = Store(cache_dir)
    entries = {p: jobs.split_entry(store, splits[p]) for p in protocols}
    by_cell = {}
    for protocol, model, role, seed in itertools.product(protocols, models, dims, seeds):
        labels = {"protocol": protocol, "base": model, "method": role}
        by_cell[(protocol, model, role, seed)] = jobs.model_job(
            entries[protocol], splits[protocol], ModelConfig(model, dims[role][model]),
            train_config_for(model, train_config), seed, labels)
    done = run_jobs(list(by_cell.values()), store=store)
    _report("run_grid", done, len(by_cell))
    results, histories, fits = [], [], []
    for (protocol, model, role, seed), job in by_cell.items():
        finished = done[job.key]
        keys = {"dataset": job.dataset, "protocol": protocol, "base": model, "method": role, "seed": seed}
        results.append(long_results(finished.entry["test"], **keys))
        histories.append(history_frame(finished.entry["history"], **{k: v for k, v in keys.items() if k != "dataset"}))
        fits.append({**{k: v for k, v in keys.items() if k != "dataset"}, "dim": job.model["dim"],
                     **_fit_row(finished.entry, finished.trained)})
    return Grid(results=_concat(results), histories=_concat(histories), fits=pd.DataFrame(fits),
                models=Lazy({cell: _model_loader(store, job) for cell, job in by_cell.items()}))


# The papers' method labels → registry specs of kdrepro.distill (DE-RRD is the sum of DE and RRD,
# IR-RRD of RRD and IR, TD's "FTD+DE" of FTD and DE).
KD_SPECS = {
    "RD": "rd", "CD": "cd", "DE": "de", "RRD": "rrd", "DE-RRD": "de+rrd",
    "FitNet": "fitnet", "FTD": "ftd", "HTD": "htd", "FTD+DE": "ftd+de",
    "PHR": "phr", "IR": "ir", "IR-RRD": "rrd+ir",
}
NO_KD = ("Teacher", "Student")

# DE-RRD's Table 4, by the paper's labels: config overrides of DE (a–c) and of RRD (d, e). "(b)" is
# one expert as wide as all M experts together (about their number of parameters), see KDRun.
DE_DESIGN_CHOICES: dict[str, dict[str, object]] = {
    "DE": {},
    "(a) Attention": {"selection": "attention"},
    "(b) One expert (large)": {"num_experts": 1},
    "(c) One expert (small)": {"num_experts": 1},
}
RRD_DESIGN_CHOICES: dict[str, dict[str, object]] = {
    "RRD": {},
    "(d) Full ranking": {"ranking": "full"},
    "(e) Interesting ranking": {"ranking": "interesting_only"},
    "RRD top-K (no sampling)": {"sampling": "none"},
}
# TD's Table 2 (ablation) and Table 4 (group assignment), by the paper's labels: overrides of HTD.
HTD_DESIGN_CHOICES: dict[str, dict[str, object]] = {
    "HTD": {},
    "Group only": {"variant": "group_only"},
    "Entity only": {"variant": "entity_only"},
    "Group (P,P)": {"variant": "group_pp"},
    "K-means assignment": {"assignment": "kmeans"},
}
_DESIGN_TABLES = {"DE": DE_DESIGN_CHOICES, "RRD": RRD_DESIGN_CHOICES, "HTD": HTD_DESIGN_CHOICES}

@dataclass(frozen=True)
class KDRun:
    """One kind of model to train for every base model and seed of a :class:`KDSetting`.

    - ``method``: ``"Teacher"``, ``"Student"`` (no distillation) or a label of :data:`KD_SPECS`.
    - ``overrides``: ``{method name: {config field: value}}`` on top of the setting's configs, e.g.
      ``{"rrd": {"ranking": "full"}}``.
    - ``phi``: student size as a fraction of the teacher's (``None``: the setting's student dims).
    - ``match_experts``: DE's single expert gets the hidden width of all M experts of the setting's DE
      config together (Table 4 (b), "one large expert").
    - ``keys``: extra columns that label this run's rows (``variant``, a swept value, ``phi`` …).
    """

    method: str
    overrides: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    phi: float | None = None
    match_experts: bool = False
    keys: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in NO_KD and self.method not in KD_SPECS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {[*NO_KD, *KD_SPECS]}")


@dataclass(frozen=True)
class KDSetting:
    """What every run of a distillation chapter shares.

    ``configs``: per-method config overrides (``{"de": {...}, "rrd": {...}}``) for every base model, or
    ``{base: {method: {...}}}`` per base model. ``top_n``/``top_n_users``: length of the teacher's cached
    rankings (RRD's N must not exceed ``top_n``). Teachers and students without distillation are trained
    exactly as in chapter 00 (:func:`run_grid`), so they load from its cache; the teacher of seed ``s``
    teaches the students of seed ``s``. ``teacher_train_config``: how the teachers are trained when it
    differs from the students' ``train_config`` (TD's students run a fixed 101 epochs while the teacher
    keeps chapter 00's early-stopped protocol); ``None``: the same.
    """

    split: Split
    bases: Sequence[str]
    seeds: Sequence[int]
    train_config: TrainConfig
    teacher_dims: Mapping[str, int]
    student_dims: Mapping[str, int]
    configs: Mapping[str, Mapping] = field(default_factory=dict)
    top_n: int = 500
    top_n_users: int = 500
    cache_dir: str | os.PathLike | None = None
    teacher_train_config: TrainConfig | None = None

    def method_configs(self, base: str) -> dict[str, dict]:
        """``{method name: overrides}`` of this setting for ``base``."""
        if self.configs and all(k in METHODS for k in self.configs):
            return {k: dict(v) for k, v in self.configs.items()}
        return {k: dict(v) for k, v in self.configs.get(base, {}).items()}


@dataclass
class Selection:
    """Which expert every user selects (argmax of DE's selection network) after the listed epochs."""

    epochs: np.ndarray  # (R,) epochs of training done when recorded (0: at initialisation)
    experts: np.ndarray  # (R, num_users) expert index per user


@dataclass
class KDResults:
    """Results of :func:`run_kd` (one row per fit and metric; ``keys`` of the runs as extra columns).

    - ``results``: ``dataset, protocol, base, method, <keys>, seed, metric, value`` (test metrics).
    - ``histories``: one row per validation epoch and fit.
    - ``fits``: one row per fit (dim, #parameters of the student and of the method, best epoch,
      seconds, seconds per training epoch, whether it came from the ledger).
    - ``models``: ``{(base, method, keys, seed): trained model}``; ``keys`` a tuple of (name, value).
    - ``selections``: the same keys → :class:`Selection`, for the runs with DE.
    - ``outputs``: ``{(base, seed): TeacherOutputs}`` of the teachers used.
    - ``test_ranks``: the ``models`` keys → the ledger's held-out item ranks (leave-one-out protocols; see
      :func:`kdrepro.jobs.held_out_ranks`), from which per-user metrics follow without weights.

    ``models``, ``selections`` and ``outputs`` are read from the store when first accessed (fitted
    when the store lacks them): sections that need weights say so by reading them.
    """

    results: pd.DataFrame
    histories: pd.DataFrame
    fits: pd.DataFrame
    models: Mapping = field(default_factory=dict, repr=False)
    selections: Mapping = field(default_factory=dict, repr=False)
    outputs: Mapping = field(default_factory=dict, repr=False)
    test_ranks: Mapping = field(default_factory=dict, repr=False)  # same keys → the ledger's held-out ranks

    def find(self, store: str, base: str, method: str, seed: int | None = None, **keys):
        """The entry of ``models``/``selections`` for (base, method, seed, keys); first seed by default."""
        table = getattr(self, store)
        wanted = tuple(sorted(keys.items()))
        for b, m, k, s in table:
            if b == base and m == method and tuple(sorted(k)) == wanted and (seed is None or s == seed):
                return table[(b, m, k, s)]
        raise KeyError(f"no {store} entry for base={base!r}, method={method!r}, seed={seed}, keys={keys}")


def method_runs(methods: Sequence[str], **keys: object) -> list[KDRun]:
    """One :class:`KDRun` per method label (``"Teacher"``, ``"Student"``, ``"DE"``, ``"DE-RRD"`` …); ``keys``
    label every run's rows (e.g. ``schedule="..."`` for runs of another setting shown beside the main ones)."""
    return [KDRun(m, keys=dict(keys)) for m in methods]


def size_runs(methods: Sequence[str], phis: Sequence[float]) -> list[KDRun]:
    """Every method at every student size φ (student dim = round(φ × teacher dim)); key ``phi``."""
    return [KDRun(m, phi=float(p), keys={"phi": float(p)}) for p in phis for m in methods]


def sweep_runs(method: str, grid: Mapping[str, Sequence]) -> list[KDRun]:
    """``method`` over the product of config values, e.g. ``{"de.lambda_de": [...], "rrd.lambda_rrd": [...]}``.

    Each swept field becomes a key column named after the field (``lambda_de``).
    """
    names = list(grid)
    runs = []
    for values in itertools.product(*(grid[n] for n in names)):
        overrides = _field_overrides(names, values)  # checks the names first
        keys = {name.split(".", 1)[1]: value for name, value in zip(names, values, strict=True)}
        runs.append(KDRun(method, overrides=overrides, keys=keys))
    return runs


def _field_overrides(names: Sequence[str], values: Sequence) -> dict[str, dict]:
    """``["de.lambda_de", …]`` and their values → ``{"de": {"lambda_de": value}, …}``."""
    overrides: dict[str, dict] = {}
    for name, value in zip(names, values, strict=True):
        if "." not in name:
            raise ValueError(f"sweep field {name!r} must read 'method.field', e.g. 'de.lambda_de'")
        method_name, field_name = name.split(".", 1)
        overrides.setdefault(method_name, {})[field_name] = value
    return overrides


def design_runs(method: str, variants: Sequence[str]) -> list[KDRun]:
    """DE-RRD's Table 4 variants of ``"DE"`` or ``"RRD"`` by the paper's labels; key ``variant``.

    Labels: the keys of :data:`DE_DESIGN_CHOICES` / :data:`RRD_DESIGN_CHOICES`.
    """
    choices = _DESIGN_TABLES[method]
    unknown = [v for v in variants if v not in choices]
    if unknown:
        raise ValueError(f"unknown {method} variants {unknown}; choose from {list(choices)}")
    name = KD_SPECS[method]
    return [
        KDRun(method, overrides={name: choices[v]}, match_experts=v == "(b) One expert (large)",
              keys={"variant": v})
        for v in variants
    ]


def tied_sweep_runs(method: str, fields: Sequence[str], values: Sequence, key: str) -> list[KDRun]:
    """``method`` with several config fields set to one value at a time, e.g. IR's K and L together.

    ``fields`` read ``method.field`` (``["ir.num_interesting", "ir.num_uninteresting"]``); each value of
    ``values`` becomes one run, labelled by the key column ``key``.
    """
    if not fields or any("." not in name for name in fields):
        raise ValueError(f"fields {list(fields)} must be a non-empty list of 'method.field' names")
    return [KDRun(method, overrides=_field_overrides(fields, [value] * len(fields)), keys={key: value})
            for value in values]


def precision_runs(methods: Sequence[str], precision: str) -> list[KDRun]:
    """Each method with the dense products of every part that has a ``precision`` option (DE, HTD) in
    ``precision`` (``"bf16"``), key ``precision``: the fast path, to compare with the exact runs."""
    runs = []
    for method in methods:
        if method not in KD_SPECS:
            raise ValueError(f"{method!r} is not a distillation method; choose from {list(KD_SPECS)}")
        names = [n for n in parse(KD_SPECS[method])
                 if "precision" in {f.name for f in dataclasses.fields(make_config(n))}]
        if not names:
            raise ValueError(f"{method} has no precision option (methods with one: DE, HTD and their combinations)")
        runs.append(KDRun(method, overrides={n: {"precision": precision} for n in names},
                          keys={"precision": precision}))
    return runs


# TD's Table 4 labels → ours (the adaptive assignment is HTD itself).
TD_ASSIGNMENT_LABELS = {"K-means": "K-means assignment", "DE-style (adaptive, end-to-end)": "HTD"}


def td_variant_runs(labels: Sequence[str]) -> list[KDRun]:
    """TD's Table 2 / Table 4 rows by the paper's labels, key ``variant``: methods of :data:`KD_SPECS`
    (``"FTD"``, ``"FTD+DE"``) as they are, the rest HTD variants of :data:`HTD_DESIGN_CHOICES`."""
    unknown = [v for v in labels if v not in KD_SPECS and v not in HTD_DESIGN_CHOICES]
    if unknown:
        raise ValueError(f"unknown TD variants {unknown}; choose from "
                         f"{sorted({'FTD', 'FTD+DE', *HTD_DESIGN_CHOICES})}")
    return [KDRun(v, keys={"variant": v}) if v in KD_SPECS and v != "HTD" else design_runs("HTD", [v])[0]
            for v in labels]


def _default_expert_hidden(student_repr: int, teacher_repr: int) -> int:
    """DE's default expert width (as in kdrepro.distill.de): (d_s + d_t) // 2, d_s // 2 when equal."""
    return student_repr // 2 if student_repr == teacher_repr else (student_repr + teacher_repr) // 2


def _student_dim(setting: KDSetting, run: KDRun, base: str) -> int:
    """φ × the teacher's dim when the run sets φ; else the teacher's dim for "Teacher", the student's otherwise."""
    if run.phi is not None:
        return max(1, round(run.phi * setting.teacher_dims[base]))
    return setting.teacher_dims[base] if run.method == "Teacher" else setting.student_dims[base]


def _teacher_job(setting: KDSetting, entry: tuple[str, str], base: str, seed: int) -> FitJob:
    teacher_train = train_config_for(base, setting.teacher_train_config or setting.train_config)
    return jobs.model_job(entry, setting.split, ModelConfig(base, setting.teacher_dims[base]), teacher_train, seed,
                          {"protocol": setting.split.protocol, "base": base, "method": "Teacher"})


def kd_job(setting: KDSetting, run: KDRun, base: str, seed: int, *, store: Store | None = None,
           kind: str = jobs.STUDENT_KIND) -> FitJob:
    """The job of ``run`` for ``base`` and ``seed``: the teacher's or a student's fit without distillation,
    or a distilled student with its merged method configs (chapter ← run overrides)."""
    split = setting.split
    entry = jobs.split_entry(store or Store(setting.cache_dir), split)
    teacher = _teacher_job(setting, entry, base, seed)
    dim = _student_dim(setting, run, base)
    labels = {"protocol": split.protocol, "base": base, "method": run.method, **run.keys}
    if run.method in NO_KD:
        if run.method == "Teacher" and dim == setting.teacher_dims[base]:
            return dataclasses.replace(teacher, labels=labels)
        return jobs.model_job(entry, split, ModelConfig(base, dim), train_config_for(base, setting.train_config), seed,
                              labels)
    spec = KD_SPECS[run.method]
    model_config = ModelConfig(base, dim)
    student_repr = build_model(model_config, split).repr_dim
    chapter = setting.method_configs(base)
    configs = {}
    for name in parse(spec):
        merged = {**chapter.get(name, {}), **run.overrides.get(name, {})}
        if name == "de" and run.match_experts:
            chapter_experts = make_config("de", chapter.get("de", {})).num_experts
            teacher_repr = build_model(teacher.model_config, split).repr_dim
            width = merged.get("expert_hidden") or _default_expert_hidden(student_repr, teacher_repr)
            merged["expert_hidden"] = chapter_experts * width
        configs[name] = dataclasses.asdict(make_config(name, merged))
    return FitJob(kind, entry, split.dataset, model_config.to_dict(),
                  train_config_for(base, setting.train_config).to_dict(), seed, spec, configs, student_repr, teacher,
                  (setting.top_n, setting.top_n_users), record_selection="de" in configs and kind == jobs.STUDENT_KIND,
                  labels=labels)


def _selection_loader(store: Store, job: FitJob) -> Callable[[], Selection]:
    def load() -> Selection:
        arrays = jobs.load_entry(store, job).arrays("selection.npz")
        return Selection(arrays["epochs"], arrays["experts"])

    return load


def _outputs_loader(store: Store, job: FitJob) -> Callable:
    return lambda: jobs.teacher_outputs(store, job, jobs.load_job_split(store, job))


def run_kd(setting: KDSetting, runs: Sequence[KDRun]) -> KDResults:
    """Every base model × seed × run of ``runs``: from the ledger, or fitted through the executor.

    The teacher of seed ``s`` teaches the students of seed ``s``; teachers and students without
    distillation are the same jobs as chapter 00's (:func:`run_grid`) when their settings are, so a
    chapter that repeats a fit (a sweep passing through the main setting) reads it from the ledger.
    Runs with DE record the expert each user selects over training (``selections``).
    """
    store = Store(setting.cache_dir)
    cells = {}
    for base, seed, run in itertools.product(setting.bases, setting.seeds, runs):
        cells[(base, run.method, tuple(run.keys.items()), seed)] = (run, kd_job(setting, run, base, seed, store=store))
    done = run_jobs([job for _, job in cells.values()], store=store)
    _report("run_kd", done, len(cells))
    results, histories, fits = [], [], []
    selections, outputs, test_ranks = {}, {}, {}
    for (base, method, keys, seed), (run, job) in cells.items():
        finished = done[job.key]
        labels = {"dataset": job.dataset, "protocol": setting.split.protocol, "base": base, "method": method,
                  **run.keys, "seed": seed}
        results.append(long_results(finished.entry["test"], **labels))
        short = {k: v for k, v in labels.items() if k not in ("dataset", "protocol")}
        histories.append(history_frame(finished.entry["history"], **short))
        fits.append({**short, "dim": job.model["dim"], **_fit_row(finished.entry, finished.trained)})
        if finished.entry.get("test_ranks"):
            test_ranks[(base, method, keys, seed)] = finished.entry["test_ranks"]
        if job.record_selection:
            selections[(base, method, keys, seed)] = _selection_loader(store, job)
        if job.teacher is not None and (base, seed) not in outputs:
            outputs[(base, seed)] = _outputs_loader(store, job)
    return KDResults(
        results=_concat(results), histories=_concat(histories), fits=pd.DataFrame(fits),
        models=Lazy({cell: _model_loader(store, job) for cell, (_, job) in cells.items()}),
        selections=Lazy(selections), outputs=Lazy(outputs), test_ranks=test_ranks,
    )


@dataclass
class KDModuleFit:
    """A distilled student with its trained distillation module (PHR's personalization networks, DE's
    experts), which :func:`run_kd` does not keep: ``metrics`` as run_kd's (test, valid, best epoch …)."""

    model: torch.nn.Module
    module: torch.nn.Module
    metrics: dict
    history: list[dict]
    cached: bool


def fit_kd_module(setting: KDSetting, run: KDRun, base: str, seed: int) -> KDModuleFit:
    """The distilled student of ``run`` for ``base`` and ``seed`` with its module (store kind ``kd_modules``).

    The inputs are :func:`run_kd`'s (teacher, its outputs, merged configs, seeds), so on CPU the student
    is bit-identical to run_kd's row of the same run.
    """
    if run.method in NO_KD or run.match_experts:
        raise ValueError(f"run {run.method!r} (match_experts={run.match_experts}) has no module to keep; "
                         f"pass a KDRun of {list(KD_SPECS)} without match_experts")
    store = Store(setting.cache_dir)
    job = kd_job(setting, run, base, seed, store=store, kind=jobs.MODULE_KIND)
    finished = run_jobs([job], store=store, need_weights=True)[job.key]
    entry = jobs.load_entry(store, job)
    split = setting.split
    outputs = jobs.teacher_outputs(store, job, split)
    configs = {name: make_config(name, values) for name, values in job.configs.items()}
    module = build_method(job.spec, outputs, split, job.student_repr, seed=seed, **configs)
    module.load_state_dict(entry.state("module.pt"))
    device = resolve_device(job.train_config.device)
    metrics = {**entry.json("metrics.json")}
    return KDModuleFit(jobs.load_model(store, job), module.to(device), metrics, entry.json("history.json"),
                       not finished.trained)


