"""``python -m kdrepro.benchmark``: the speed figures the project promises, as one JSON object.

Prints ``{figure_name: seconds, ...}`` to stdout (best of ``--repeats``). Figures are measured on the
papers' CiteULike (``$KDREPRO_DATA_DIR`` or a download) and on 2 CPU threads unless told otherwise:

- ``bpr_epoch_dim200_s`` / ``bpr_epoch_dim20_s``: one BPR epoch over the 115,142 LOO training pairs
  (batch 1024, Adam with weight decay, one sampled negative per pair).
- ``<model>_epoch_dim<d>_s`` / ``<model>_validation_dim<d>_s``: one training epoch and one validation of
  each base model of :data:`kdrepro.jobs.BASE_SECONDS` at its measured sizes, on the protocol its chapters
  use (NeuMF ``loo_sampled``, LightGCN ``loo_full``): the fallback costs of ``run_all.py --plan``, which
  are one-thread figures (``--threads 1``). ``teacher_outputs_<model>_dim<d>_s``: what a distilled fit's
  teacher costs before its first epoch (:func:`kdrepro.teachers.compute_outputs` at the teacher's size: every
  user's top-500 items and their scores, every item's top-500 users, the representations; measured once).
  ``--no-methods`` skips them.
- ``eval_full_all_users_s``: full-ranking evaluation of all 5,219 users (dim 200, top-50, training
  items masked), ``loo_full`` test.
- ``eval_loo_sampled_s``: ``loo_sampled`` test evaluation (1 + 499 candidates per user, dim 200).
- ``<method>_epoch_s``: one training epoch of a BPR dim-20 student with a distillation method (teacher:
  BPR dim 200 briefly trained; its quality does not change the cost). ``de_epoch_s`` /
  ``htd_epoch_s`` time the early regime where every expert runs on every entity (τ ≈ 1);
  ``de_annealed_epoch_s`` / ``htd_annealed_epoch_s`` the regime once selection is one-hot;
  ``de_bf16_epoch_s`` / ``htd_bf16_epoch_s`` the τ ≈ 1 regime with the ``precision="bf16"`` option (an
  approximation, off by default; on CPUs without native bfloat16 products it runs the exact fp32 path);
  ``de_transition_epoch_s`` the transition (τ 0.04 → 0.007), where the selection weights pass through
  float32's subnormal range (the epochs the authors' 1000-epoch schedule spends around epoch 140).
  ``--no-methods`` skips them.
- ``concf_warmup_epoch_s`` / ``concf_epoch_s``: one ConCF epoch (six heads on shared dim-64 embeddings, GradNorm
  balancing; the holdout 60/20/20 training pairs) before and during consensus learning;
  ``concf_consensus_s``: one consensus generation, every head's queue full (every head ranks every user's
  top-100; the consistency over the last 5 rankings; the consensus),
  ``concf_consolidation_s`` its part after the ranking (the authors' Python loop over users).
  ``singlecf_epoch_s``: the same model with the BPR head alone. ``--no-methods`` skips them, ``--only-concf``
  measures only them.
- ``hetcomp_epoch_s``: one HetComp epoch (MF student dim 6, KD loss only, the six-teacher ensemble's top-100, AKT's
  overall phase) on the holdout split; ``hetcomp_dkc_s``: one knowledge construction (the student's top-50 for
  every user, NDCG distances to 6 × 2 checkpoints, the new ensemble); ``dcd_epoch_s``: one DCD epoch (both
  sides, BPR student dim 6) on that ensemble. The trajectories are stand-ins with the real shapes (6 × 4
  checkpoints × top-100, drawn from a briefly trained BPR teacher's top-400): cost does not depend on them.
- ``teacher_<kind>_epoch_s`` / ``teacher_<kind>_ranking_s``: one training epoch of each of chapter 07's
  teacher kinds at dim 64 (autoencoders: 256 rows per batch) and one top-100 ranking of every user (what a
  trajectory checkpoint costs; validation costs about as much). ``--no-methods`` skips all of these.
- ``fits8_serial_s`` / ``fits8_local_s`` / ``fits8_ray_s``: wall seconds of a batch of 8 small student fits
  (BPR dim 20, 20 epochs, one validation) through each executor of :mod:`kdrepro.jobs` (one thread per fit;
  local and Ray with 2 workers; Ray started beforehand, its start-up not counted), the executors taking
  turns over 2 rounds, best kept;
  ``fits8_local_speedup_x`` = serial / local; ``local_overhead_per_fit_s`` / ``ray_overhead_per_fit_s`` =
  (wall × workers − serial) / fits, the worker-seconds each fit costs beyond its own compute (process
  start, transfers, scheduling). ``--no-executors`` skips them.
- The host's speed is not seconds either: stderr's first line is the fp32 GEMM rate on the benchmark's
  threads (:func:`host_gemm_gflops`; figures of two days compare only at similar rates: the project's
  2-core machines have read 40 to 75 GFLOPS a core for the same code).
- Peak memory is not seconds and is reported on stderr only, as are the cores other processes kept busy
  while the in-process figures were measured (:class:`kdrepro.efficiency.CPUContention`; above
  ``IDLE_OTHER_CORES`` it is a warning: the figures are inflated) and a table of each figure beside the
  project's target and the authors' code on the same 2-core machine (METHODS.md §6), with their ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch

try:  # the Ray executor's figures need Ray (the `cluster` and `dev` extras)
    import ray
except ImportError:  # pragma: no cover
    ray = None

from kdrepro import data, jobs, splits
from kdrepro.data import Interactions
from kdrepro.distill import build as build_method
from kdrepro.distill.concf import ConCF, ConCFConfig
from kdrepro.distill.hetcomp import HetComp, HetCompConfig, TeacherTrajectories, ensemble_outputs
from kdrepro.efficiency import IDLE_OTHER_CORES, CPUContention
from kdrepro.evaluate import evaluate
from kdrepro.models import ModelConfig, build
from kdrepro.models.multihead import MultiHeadCF
from kdrepro.store import Store
from kdrepro.teachers import compute_outputs
from kdrepro.train import TrainConfig, fit
from kdrepro.trajectories import TEACHER_OBJECTIVES, teacher_train_config, top_n_items


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bpr_epoch_seconds(split: splits.Split, dim: int, repeats: int) -> float:
    result = fit(ModelConfig("bpr", dim), split, TrainConfig(epochs=repeats + 1, eval_every=10**6, patience=0,
                                                             progress=False, device="cpu"))
    # Epoch 1 includes one-off allocations; the best later epoch is the steady state.
    return min(h["train_s"] for h in result.history[1:])


# The protocol each base model's chapters use (its validation cost depends on it).
BASE_PROTOCOLS = {"bpr": "loo_sampled", "neumf": "loo_sampled", "lightgcn": "loo_full"}


def base_model_seconds(chosen: dict[str, splits.Split], repeats: int) -> dict[str, float]:
    """One training epoch (the best after the first) and one validation of each base model at the sizes of
    :data:`kdrepro.jobs.BASE_SECONDS` (BPR's epochs are the ``bpr_epoch_dim*`` figures already)."""
    figures = {}
    for name, sizes in jobs.BASE_SECONDS.items():
        split = chosen[BASE_PROTOCOLS[name]]
        for dim in sorted(sizes):  # the teacher's size last
            result = fit(ModelConfig(name, dim), split, TrainConfig(epochs=repeats + 1, eval_every=10**6, patience=0,
                                                                    progress=False, device="cpu"))
            if name != "bpr":
                figures[f"{name}_epoch_dim{dim}_s"] = min(h["train_s"] for h in result.history[1:])
            validation = partial(evaluate, result.model, split, "valid")
            figures[f"{name}_validation_dim{dim}_s"] = _best(validation, repeats)
        # Once, at the teacher's size: NeuMF's two passes over the user × item scores take minutes.
        figures[f"teacher_outputs_{name}_dim{dim}_s"] = _best(partial(compute_outputs, result.model, split), 1)
    return figures


# figure name → (protocol of its chapter, registry spec, per-method config overrides)
METHOD_FIGURES = {
    "rrd_epoch_s": ("loo_sampled", "rrd", {}),
    "de_epoch_s": ("loo_sampled", "de", {}),
    "de_annealed_epoch_s": ("loo_sampled", "de", {"de": {"anneal_epochs": 1}}),
    "irrrd_epoch_s": ("loo_sampled", "rrd+ir", {}),
    "cd_epoch_s": ("loo_sampled", "cd", {}),
    "phr_epoch_s": ("loo_full", "phr", {"phr": {"hidden": 8}}),  # H = 8 as in earlier figures (default: 2100)
    "phr64_epoch_s": ("loo_full", "phr", {"phr": {"hidden": 64}}),  # the paper profile's CPU width
    "ftd_epoch_s": ("loo_full", "ftd", {}),
    "htd_epoch_s": ("loo_full", "htd", {}),
    "htd_annealed_epoch_s": ("loo_full", "htd", {"htd": {"anneal_epochs": 1}}),
    "de_bf16_epoch_s": ("loo_sampled", "de", {"de": {"precision": "bf16"}}),
    # τ 0.04 → 0.007 over the timed epochs 2-3: the Gumbel-softmax weights pass through float32's subnormal range
    "de_transition_epoch_s": ("loo_sampled", "de", {"de": {"anneal_epochs": 14}}),
    "htd_bf16_epoch_s": ("loo_full", "htd", {"htd": {"precision": "bf16"}}),
}

# Seconds the authors' public code takes on a 2-core CPU (METHODS.md §6; loo_sampled evaluation: issue 12),
# as (low, high), and the project's targets (issues 2, 12 and 15), for the comparison printed on stderr.
AUTHORS_CPU_S = {
    "bpr_epoch_dim20_s": (0.6, 0.6), "bpr_epoch_dim200_s": (3.7, 3.7), "eval_loo_sampled_s": (1.0, 3.0),
    "rrd_epoch_s": (6.0, 9.0), "de_epoch_s": (39.0, 45.0), "de_bf16_epoch_s": (39.0, 45.0),
    "irrrd_epoch_s": (34.0, 34.0), "ftd_epoch_s": (11.0, 11.0), "htd_epoch_s": (60.0, 60.0),
    "htd_bf16_epoch_s": (60.0, 60.0), "hetcomp_epoch_s": (27.0, 27.0),
}
TARGETS_S = {
    "eval_loo_sampled_s": 0.4, "rrd_epoch_s": 1.0, "irrrd_epoch_s": 1.0, "phr_epoch_s": 0.8,
    "de_epoch_s": 4.0, "de_bf16_epoch_s": 4.0, "de_annealed_epoch_s": 1.0,
    "htd_epoch_s": 5.0, "htd_bf16_epoch_s": 5.0, "htd_annealed_epoch_s": 2.0,
    "concf_epoch_s": 2.0, "concf_consensus_s": 1.0,
}


def comparison_table(figures: dict[str, float]) -> str:
    """Each figure beside its target and the authors' seconds; ``authors/ours`` is how many times faster."""
    lines = [f"{'figure':28s} {'ours':>8s} {'target':>7s} {'met':>4s} {'authors':>9s} {'authors/ours':>13s}"]
    for name, ours in figures.items():
        target, authors = TARGETS_S.get(name), AUTHORS_CPU_S.get(name)
        met = "" if target is None else ("yes" if ours <= target else "no")
        low, high = authors or (None, None)
        authors_text = "" if authors is None else (f"{low:g}" if low == high else f"{low:g}-{high:g}")
        ratio = "" if authors is None else f"{low / ours:.1f}x"
        if authors is not None and low != high:
            ratio = f"{low / ours:.1f}-{high / ours:.1f}x"
        target_text = "" if target is None else f"{target:g}"
        lines.append(f"{name:28s} {ours:8.3f} {target_text:>7s} {met:>4s} {authors_text:>9s} {ratio:>13s}")
    return "\n".join(lines)


def epoch_seconds(
    method: str,
    split: splits.Split,
    teacher_outputs,
    *,
    repeats: int = 2,
    student_dim: int = 20,
    device: str = "cpu",
    seed: int = 0,
    **configs: object,
) -> float:
    """The best of ``repeats`` training epochs of a BPR student with ``method``, after a first epoch (which pays
    one-off allocations).

    ``method`` is a registry spec ("rrd", "de", "de+rrd", …) or "" for the student without distillation;
    ``configs`` are per-method overrides as for :func:`kdrepro.distill.build`. The time is ``fit``'s
    ``train_s``: the epoch's sampling, forward and backward passes and optimiser steps, no validation.
    DE's cost depends on τ: near τ = 1 every expert runs on every entity; once the Gumbel-softmax is
    one-hot, one expert per entity does (``de={"anneal_epochs": 1}`` times that regime from epoch 1).
    """
    distill = build_method(method, teacher_outputs, split, student_dim, seed=seed, **configs) if method else None
    config = TrainConfig(epochs=repeats + 1, eval_every=10**6, patience=0, device=device, progress=False)
    result = fit(ModelConfig("bpr", student_dim), split, config, distill=distill, seed=seed)
    return min(h["train_s"] for h in result.history[1:])


def method_epoch_seconds(sampled: splits.Split, full: splits.Split, repeats: int) -> dict[str, float]:
    outputs = {}
    for split in (sampled, full):
        teacher = fit(ModelConfig("bpr", 200), split, TrainConfig(epochs=2, eval_every=10**6, patience=0,
                                                                  progress=False, device="cpu"))
        outputs[split.protocol] = compute_outputs(teacher.model, split)
    chosen = {"loo_sampled": sampled, "loo_full": full}
    return {
        name: epoch_seconds(spec, chosen[protocol], outputs[protocol], repeats=repeats, **configs)
        for name, (protocol, spec, configs) in METHOD_FIGURES.items()
    }


def concf_seconds(split: splits.Split, repeats: int) -> dict[str, float]:
    """ConCF epochs before and during consensus learning, a consensus generation, and SingleCF (BPR) epochs."""
    train = TrainConfig(epochs=2 + repeats, loss="none", lr=1e-2, weight_decay=1e-5, eval_every=10**6, patience=0,
                        progress=False, device="cpu")
    # Consensus every epoch, learned from epoch 3: epoch 2 is a warm-up epoch (epoch 1 pays one-off allocations).
    config = ConCFConfig(warmup_epochs=2, update_every=1, track_heads=False)
    torch.manual_seed(0)
    distill = ConCF(config, split)
    result = fit(MultiHeadCF(split.num_users, split.num_items, config.heads, dim=64), split, train, distill=distill)
    generation = [row["generation_s"] for row in distill.log]
    epochs = [h["train_s"] - g for h, g in zip(result.history, generation, strict=True)]
    # A generation's consistency term grows with the queue: time the steady state, every queue full (Q rankings).
    for _ in range(config.queue_size - len(distill.log) + repeats):
        distill.generate(result.model)
    full_queue = distill.log[-repeats:]
    single = ConCFConfig(heads=("bpr",), consensus_learning=False, track_heads=False)
    torch.manual_seed(0)
    single_fit = fit(MultiHeadCF(split.num_users, split.num_items, ("bpr",), dim=64), split,
                     replace(train, epochs=repeats + 1), distill=ConCF(single, split))
    return {"concf_warmup_epoch_s": epochs[1], "concf_epoch_s": min(epochs[2:]),
            "concf_consensus_s": min(row["generation_s"] for row in full_queue),
            "concf_consolidation_s": min(row["consolidation_s"] for row in full_queue),
            "singlecf_epoch_s": min(h["train_s"] for h in single_fit.history[1:])}


def stand_in_trajectories(split: splits.Split, teachers: int = 6, checkpoints: int = 4, top_n: int = 100
                          ) -> TeacherTrajectories:
    """Trajectories of the real shapes: random windows of a briefly trained BPR teacher's top-400."""
    teacher = fit(ModelConfig("bpr", 64), split, TrainConfig(epochs=1, eval_every=10**6, patience=0, progress=False,
                                                             device="cpu"))
    pool = torch.from_numpy(top_n_items(teacher.model, split, 4 * top_n))
    generator = torch.Generator().manual_seed(0)
    picks = [torch.randperm(pool.shape[1], generator=generator)[:top_n].sort().values
             for _ in range(teachers * checkpoints)]
    rankings = torch.stack([pool[:, p] for p in picks]).view(teachers, checkpoints, split.num_users, top_n)
    items = torch.stack([torch.randperm(split.num_users, generator=generator)[:top_n].expand(split.num_items, -1)
                         for _ in range(teachers)])
    return TeacherTrajectories(tuple(f"t{i}" for i in range(teachers)), rankings.int(), items.int(),
                               torch.zeros(teachers, checkpoints, dtype=torch.long))


def hetcomp_seconds(split: splits.Split, repeats: int) -> dict[str, float]:
    """HetComp's epoch and one knowledge construction, DCD's epoch, on stand-in trajectories (see the docstring)."""
    trajectories = stand_in_trajectories(split)
    train = TrainConfig(epochs=repeats + 1, loss="none", lr=1e-3, weight_decay=1e-5, eval_every=10**6, patience=0,
                        progress=False, device="cpu")
    method = HetComp(HetCompConfig(), trajectories, split, 6)
    result = fit(ModelConfig("bpr", 6), split, train, distill=method)
    start = time.perf_counter()
    method.construct(result.model)
    figures = {"hetcomp_epoch_s": min(h["train_s"] for h in result.history[1:]),
               "hetcomp_dkc_s": time.perf_counter() - start}
    dcd = build_method("dcd", ensemble_outputs(trajectories, num_items=split.num_items), split, 6)
    dcd_fit = fit(ModelConfig("bpr", 6), split, replace(train, loss="bpr"), distill=dcd)
    figures["dcd_epoch_s"] = min(h["train_s"] for h in dcd_fit.history[1:])
    return figures


def trajectory_seconds(split: splits.Split, repeats: int) -> dict[str, float]:
    """Per teacher kind of chapter 07 (dim 64): one training epoch and one top-100 ranking of every user."""
    figures = {}
    base = TrainConfig(epochs=repeats + 1, eval_every=10**6, patience=0, progress=False, device="cpu")
    for kind in TEACHER_OBJECTIVES:
        result = fit(ModelConfig(kind, 64), split, teacher_train_config(kind, base, 256))
        figures[f"teacher_{kind}_epoch_s"] = min(h["train_s"] for h in result.history[1:])
        figures[f"teacher_{kind}_ranking_s"] = _best(lambda model=result.model: top_n_items(model, split, 100), 1)
    return figures


def executor_seconds(split: splits.Split, fits: int = 8, workers: int = 2, epochs: int = 20, rounds: int = 2
                     ) -> dict[str, float]:
    """A batch of ``fits`` small student fits through each executor, each batch into a fresh store and ledger;
    the executors take turns for ``rounds`` rounds (A/B interleaved against a busy machine), best round kept."""
    config = TrainConfig(epochs=epochs, eval_every=epochs, patience=0, progress=False, device="cpu")
    kinds = {"serial": {}, "local": {"workers": workers}}
    if ray is not None:
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
        kinds["ray"] = {}
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="kdrepro-bench-") as folder:
        for round_number in range(rounds):
            for kind, extra in kinds.items():
                store = Store(Path(folder) / f"{kind}-{round_number}")
                entry = jobs.split_entry(store, split)
                batch = [jobs.model_job(entry, split, ModelConfig("bpr", 20), config, seed) for seed in range(fits)]
                start = time.perf_counter()
                jobs.run_jobs(batch, store=store, ledger=jobs.Ledger(store.root / "results"),
                              settings=jobs.ExecutorSettings(kind=kind, threads=1, **extra), log=lambda _: None)
                name = f"fits{fits}_{kind}_s"
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
    if ray is not None:
        ray.shutdown()
    serial = best[f"fits{fits}_serial_s"]
    figures = dict(best)
    figures[f"fits{fits}_local_speedup_x"] = serial / best[f"fits{fits}_local_s"]
    for kind in ("local", "ray"):
        if f"fits{fits}_{kind}_s" in best:
            figures[f"{kind}_overhead_per_fit_s"] = (best[f"fits{fits}_{kind}_s"] * workers - serial) / fits
    return figures


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the target machine has 2)")
    parser.add_argument("--dataset", default="citeulike-t", choices=["citeulike-t", "synthetic"])
    parser.add_argument("--no-methods", action="store_true", help="skip the distillation-method epochs")
    parser.add_argument("--no-executors", action="store_true", help="skip the batch of fits through the executors")
    parser.add_argument("--only-executors", action="store_true", help="measure the executors' batch only")
    parser.add_argument("--only-concf", action="store_true", help="measure the ConCF / SingleCF figures only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.dataset == "synthetic":
        dataset = data.synthetic(num_users=5219, num_items=25181, mean_interactions=24, seed=0)
    else:
        dataset = data.load("citeulike-t", min_user_interactions=5)
    store = Store()
    sampled = store.split(dataset, "loo_sampled", 0)
    full = store.split(dataset, "loo_full", 0)
    if args.only_executors:
        figures = executor_seconds(sampled)
        print(json.dumps({k: round(v, 4) for k, v in figures.items()}))
        return figures
    with CPUContention() as contention:  # the executors' workers are other processes: measured apart
        print(host_line(host_gemm_gflops(), torch.get_num_threads()), file=sys.stderr)
        figures = in_process_seconds(args, dataset, store, sampled, full)
    if not args.only_concf and not args.no_executors:
        figures.update(executor_seconds(sampled))
    print(json.dumps({k: round(v, 4) for k, v in figures.items()}))
    print(comparison_table(figures), file=sys.stderr)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"dataset={dataset!r} threads={torch.get_num_threads()} peak_rss_mb={peak_mb:.0f}", file=sys.stderr)
    print(contention_line(contention.other_cores), file=sys.stderr)
    return figures


def in_process_seconds(args: argparse.Namespace, dataset: Interactions, store: Store, sampled: splits.Split,
                       full: splits.Split) -> dict[str, float]:
    """Every figure measured in this process (all but the executors' batch), as ``main``'s flags select."""
    if args.only_concf:
        return concf_seconds(store.split(dataset, "holdout", 0), args.repeats)
    figures: dict[str, float] = {
        "bpr_epoch_dim200_s": bpr_epoch_seconds(sampled, 200, args.repeats),
        "bpr_epoch_dim20_s": bpr_epoch_seconds(sampled, 20, args.repeats),
    }
    torch.manual_seed(0)
    model = build(ModelConfig("bpr", 200), full)
    evaluate(model, full, "test")  # warm-up
    figures["eval_full_all_users_s"] = _best(lambda: evaluate(model, full, "test"), args.repeats)
    evaluate(model, sampled, "test")
    figures["eval_loo_sampled_s"] = _best(lambda: evaluate(model, sampled, "test"), args.repeats)
    if not args.no_methods:
        figures.update(base_model_seconds({"loo_sampled": sampled, "loo_full": full}, args.repeats))
        figures.update(method_epoch_seconds(sampled, full, args.repeats))
        figures.update(concf_seconds(store.split(dataset, "holdout", 0), args.repeats))
        figures.update(hetcomp_seconds(store.split(dataset, "holdout", 0), args.repeats))
        figures.update(trajectory_seconds(store.split(dataset, "holdout", 0), args.repeats))
    return figures


def host_gemm_gflops(size: int = 2048, repeats: int = 5) -> float:
    """The host's fp32 matrix-product rate on torch's current threads (best of ``repeats`` size³ GEMMs): the
    yardstick that tells a slower machine from slower code when figures of two days differ."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # first call: thread pool and allocations
    return 2 * size**3 / _best(lambda: a @ b, repeats) / 1e9


def host_line(gflops: float, threads: int) -> str:
    """The stderr line that states the host's speed (:func:`host_gemm_gflops`) beside the figures."""
    return (f"host: fp32 GEMM at {gflops:.0f} GFLOPS on {threads} thread(s) ({gflops / threads:.0f} a thread); "
            "compare figures across machines or days only at similar rates")


def contention_line(other_cores: float) -> str:
    """The stderr line that says whether the figures were measured on an otherwise idle machine."""
    if other_cores < IDLE_OTHER_CORES:
        return f"other processes kept {other_cores:.2f} cores busy on average: an idle machine"
    return (f"WARNING: other processes kept {other_cores:.2f} cores busy on average while the figures were "
            "measured: they are inflated; rerun on an idle machine before comparing them with the targets")

if __name__ == "__main__":
    main()
