"""``fit``: the one training loop (nanoGPT-style: flat, readable, everything visible).

One epoch = a pass over the training pairs in a seeded random order, in batches of (user, positive,
sampled negatives) — or, for a model that trains on whole rows (the autoencoders declare
``row_side = "users"`` or ``"items"``), a pass over its rows in batches of training rows scored by a
row objective (``loss="multinomial"``). The loss is the base objective plus the named, already weighted terms of an
optional distillation module, which may own trainable parameters (optimised with the student).
Validation every ``eval_every`` epochs; early stopping after ``patience`` evaluations without
improvement of ``monitor``; the best state is restored and evaluated once on the test set.
"""

from __future__ import annotations

import copy
import ctypes
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from kdrepro.evaluate import evaluate, gather_rows
from kdrepro.models import ModelConfig, Recommender, build
from kdrepro.objectives import BASE_LOSSES, multinomial_loss
from kdrepro.sampling import PairSet, sample_outside
from kdrepro.splits import Split
from kdrepro.types import Batch

# Set while a campaign enumerates a chapter's fits (kdrepro.jobs.collect_jobs): nothing may train then.
PLAN_FILE_ENV = "KDREPRO_PLAN_FILE"
DEFAULT_MONITOR = {"loo_sampled": "NDCG@10", "loo_full": "Recall@50", "holdout": "Recall@50"}
# Objectives over whole training rows, for the models that declare a ``row_side`` (autoencoders).
ROW_LOSSES = {"multinomial": multinomial_loss}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1000  # at most; early stopping usually ends sooner
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 1e-3  # Adam's L2 on all parameters, as in the authors' code
    num_negatives: int = 1  # sampled unobserved items per observed pair, redrawn every epoch
    loss: str = "bpr"  # base objective (BASE_LOSSES; ROW_LOSSES for row-trained models), or "none": KD terms only
    eval_every: int = 1  # epochs between validations
    patience: int = 20  # validations without improvement before stopping; 0 disables early stopping
    monitor: str = "auto"  # validation metric to select on; "auto" = NDCG@10 (sampled) / Recall@50 (full)
    device: str = "auto"  # "auto" picks CUDA when available
    progress: bool = True  # tqdm bar

    def __post_init__(self) -> None:
        if self.loss != "none" and self.loss not in BASE_LOSSES and self.loss not in ROW_LOSSES:
            raise ValueError(f"TrainConfig.loss={self.loss!r}; choose one of {sorted(BASE_LOSSES)}, "
                             f"{sorted(ROW_LOSSES)} (row-trained models) or 'none'")
        for name in ("epochs", "batch_size", "num_negatives", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
                sign = "positive" if name == "lr" else "non-negative"
                raise ValueError(f"TrainConfig.{name} must be a finite {sign} number, got {value}")
        if self.patience < 0:
            raise ValueError(f"TrainConfig.patience must be >= 0, got {self.patience}")

    def to_dict(self) -> dict:
        return asdict(self)


class DivergenceError(FloatingPointError):
    """A fit whose loss or parameters became non-finite: an error, never a result (nothing is stored)."""

    def __init__(self, epoch: int, term: str, lr: float, detail: str) -> None:
        self.epoch, self.term, self.lr = epoch, term, lr
        super().__init__(f"training diverged at epoch {epoch}: {detail} (loss term {term!r}, lr={lr:g}); "
                         f"lower the learning rate or check the method's weights")


def _check_finite_parameters(named: list[tuple[str, nn.Parameter]], epoch: int, lr: float) -> None:
    for name, param in named:
        if not bool(torch.isfinite(param).all()):
            raise DivergenceError(epoch, "parameters", lr, f"parameter {name!r} holds NaN or inf")


@dataclass
class FitResult:
    model: Recommender
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    valid: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    config: dict = field(default_factory=dict)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class NegativeSampler:
    """Uniform unobserved items for every training pair, by vectorised rejection (no Python loops)."""

    def __init__(self, split: Split) -> None:
        self.users = torch.from_numpy(split.train_users)
        self.observed = PairSet(self.users, torch.from_numpy(split.train_items), split.num_users, split.num_items)

    def sample(self, num_negatives: int, generator: torch.Generator) -> torch.Tensor:
        return sample_outside(self.observed, self.users, num_negatives, generator)


class RowBatches:
    """Batches of whole training rows for a row-trained model: users' item rows or items' user rows.

    Holds the training matrix in CSR form on the model's side; each batch is the row ids in a seeded
    random order and their dense 0/1 rows (B, num_cols) built by one scatter (no Python loop over rows).
    """

    def __init__(self, split: Split, side: str) -> None:
        if side not in ("users", "items"):
            raise ValueError(f"a model's row_side must be 'users' or 'items', got {side!r}")
        rows, cols = (split.train_users, split.train_items) if side == "users" else (split.train_items,
                                                                                   split.train_users)
        self.num_rows, self.num_cols = (split.num_users, split.num_items) if side == "users" else (
            split.num_items, split.num_users)
        order = np.argsort(rows, kind="stable")
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=self.num_rows))])
        self.cols = cols[order]

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(self.num_rows, generator=generator)
        for lo in range(0, self.num_rows, batch_size):
            ids = order[lo : lo + batch_size]
            position, cols = gather_rows(self.indptr, self.cols, ids.numpy())
            dense = torch.zeros(len(ids), self.num_cols)
            dense[torch.from_numpy(position), torch.from_numpy(cols)] = 1.0
            yield ids, dense


def retain_freed_memory() -> None:
    """Let glibc keep freed memory for reuse instead of handing it back to the OS after every batch.

    By default glibc returns large freed blocks (trims the heap, unmaps big chunks), so each large
    temporary of the next batch is page-faulted in again at ~1 µs per 4 KB page: DE's (n, 30·110)
    expert activations and HTD's 512 × 512 similarity tiles paid 0.7–1.5 s of sys time per epoch.
    Blocks up to 32 MB (glibc's maximum mmap threshold) now come from the heap, which is not trimmed:
    peak memory is unchanged, resident memory stays at its peak. A no-op where the C library has no
    ``mallopt`` (not glibc).
    """
    try:
        mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    except (OSError, TypeError):  # no C library to load by that name (Windows)
        return
    if mallopt is not None:
        mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD (a C int): trim only beyond 2 GB of free heap
        mallopt(-3, 1 << 25)  # M_MMAP_THRESHOLD: heap (not mmap) for blocks below 32 MB


def _make_optimizer(params: list[nn.Parameter], config: TrainConfig, device: torch.device) -> torch.optim.Adam:
    # Fused Adam is the same maths as torch.optim.Adam, computed in one pass (much faster on CPU).
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)


def _pair_terms(model, distill, base_loss, train_users, train_items, negatives, batch_size, epoch, generator,
                device) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch of (user, positive, negatives) batches: the named loss terms of each batch."""
    order = torch.randperm(len(train_users), generator=generator)
    for lo in range(0, len(train_users), batch_size):
        idx = order[lo : lo + batch_size]
        batch = Batch(users=train_users[idx].to(device), pos=train_items[idx].to(device),
                      neg=negatives[idx].to(device), epoch=epoch)
        terms: dict[str, torch.Tensor] = {}
        if base_loss is not None:
            scores = model.score(batch.users, torch.cat([batch.pos.unsqueeze(1), batch.neg], dim=1))
            terms["base"] = base_loss(scores[:, 0], scores[:, 1:])
        if distill is not None:
            terms.update(distill(model, batch))
        yield terms


def _row_terms(model, rows: RowBatches, row_loss, batch_size, generator, device) -> Iterator[dict[str, torch.Tensor]]:
    """One epoch of whole-row batches: the row objective on the model's reconstruction, plus its own terms
    (the VAE's annealed KL)."""
    for ids, targets in rows.batches(batch_size, generator):
        scores, extra = model.reconstruct(ids.to(device))
        yield {"base": row_loss(scores, targets.to(device)), **extra}


def fit(
    model: Recommender | ModelConfig,
    split: Split,
    config: TrainConfig = TrainConfig(),
    distill: nn.Module | None = None,
    seed: int = 0,
    on_evaluate: Callable[[int, Recommender, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train ``model`` on ``split`` and return it in its best validation state with its test metrics.

    ``model`` may be a :class:`ModelConfig`: it is then built after seeding, so that the same ``seed``
    gives the same initialisation. All sampling draws from a ``torch.Generator`` seeded with ``seed``.
    ``on_evaluate(epoch, model, valid_metrics)`` is called after every validation (to record a trajectory).
    """
    if os.environ.get(PLAN_FILE_ENV):
        raise RuntimeError(f"planning mode ({PLAN_FILE_ENV} is set): fits are enumerated, not trained")
    started = time.perf_counter()
    retain_freed_memory()
    # x86 takes ~100x longer per operation on subnormal floats, which DE's and HTD's annealed Gumbel weights
    # and their gradients pass through (an epoch of 77 CPU s instead of 23); flushing them to zero changes
    # only values below 1.2e-38, the same way on every run, so a seed still fixes the numbers.
    torch.set_flush_denormal(True)
    torch.manual_seed(seed)
    if isinstance(model, ModelConfig):
        model = build(model, split)
    device = resolve_device(config.device)
    model.to(device)
    if distill is not None:
        distill.to(device)
    generator = torch.Generator().manual_seed(seed)
    monitor = DEFAULT_MONITOR[split.protocol] if config.monitor == "auto" else config.monitor
    base_loss = BASE_LOSSES.get(config.loss)
    row_side = getattr(model, "row_side", None)
    if row_side is not None and (config.loss not in ROW_LOSSES or distill is not None):
        raise ValueError(f"{type(model).__name__} trains on whole {row_side} rows: it needs TrainConfig.loss in "
                         f"{sorted(ROW_LOSSES)} (got {config.loss!r}) and no distillation module")
    if row_side is None and config.loss in ROW_LOSSES:
        raise ValueError(f"TrainConfig.loss={config.loss!r} scores whole rows; {type(model).__name__} trains on "
                         f"(user, item) pairs: choose one of {sorted(BASE_LOSSES)} or 'none'")

    named_params = list(model.named_parameters()) + (
        [(f"distill.{n}", p) for n, p in distill.named_parameters()] if distill is not None else [])
    params = [p for _, p in named_params]
    optimizer = _make_optimizer(params, config, device)
    sampler = NegativeSampler(split) if row_side is None else None
    rows = RowBatches(split, row_side) if row_side is not None else None
    train_users = torch.from_numpy(split.train_users)
    train_items = torch.from_numpy(split.train_items)

    history: list[dict] = []
    best_value, best_epoch, best_state, best_valid, stale = -np.inf, 0, None, {}, 0
    bar = tqdm(range(1, config.epochs + 1), disable=not config.progress, desc="epochs", leave=False)
    for epoch in bar:
        epoch_start = time.perf_counter()
        model.train()
        if distill is not None and hasattr(distill, "on_epoch_start"):
            distill.on_epoch_start(epoch, generator)
        if rows is not None:
            steps = _row_terms(model, rows, ROW_LOSSES[config.loss], config.batch_size, generator, device)
        else:
            negatives = sampler.sample(config.num_negatives, generator)
            steps = _pair_terms(model, distill, base_loss, train_users, train_items, negatives, config.batch_size,
                                epoch, generator, device)
        totals: dict[str, float] = {}
        for terms in steps:
            loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            model.constrain()
            for name, value in terms.items():
                number = float(value.detach())
                if not math.isfinite(number):
                    raise DivergenceError(epoch, name, config.lr, f"loss term {name!r} is {number}")
                totals[name] = totals.get(name, 0.0) + number
        _check_finite_parameters(named_params, epoch, config.lr)
        record = {"epoch": epoch, "loss": sum(totals.values()), **{f"loss/{k}": v for k, v in totals.items()},
                  "train_s": time.perf_counter() - epoch_start}
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            valid = evaluate(model, split, "valid")
            if monitor not in valid:
                raise ValueError(f"monitor={monitor!r} is not a {split.protocol} metric; choose one of {sorted(valid)}")
            record.update({f"valid/{k}": v for k, v in valid.items()})
            if on_evaluate is not None:
                on_evaluate(epoch, model, valid)
            if valid[monitor] > best_value:
                best_value, best_epoch, best_valid, stale = valid[monitor], epoch, valid, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
            bar.set_postfix(loss=f"{record['loss']:.4g}", **{monitor: f"{valid[monitor]:.4f}"}, best=best_epoch)
        history.append(record)
        if config.patience and stale >= config.patience:
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    test = evaluate(model, split, "test")
    return FitResult(
        model=model,
        history=history,
        best_epoch=best_epoch,
        valid=best_valid,
        test=test,
        seconds=time.perf_counter() - started,
        config={"train": config.to_dict(), "seed": seed, "monitor": monitor, "split": split.summary(),
                "dataset_sha256": split.dataset_sha256},
    )
