"""Parameter sets per notebook: ``smoke``, ``quick`` and ``paper`` (plain dicts of literals).

A notebook's own parameters cell holds the paper profile's values where that is practical; a profile
overrides some of them. ``overrides(stem, profile, declared)`` merges the profile's common block
(applied only to the names a notebook declares, so one block serves every chapter) with the notebook's
own entries (which must be declared; ``run_all.py`` validates names and types before running).

- ``smoke``: synthetic data, a few epochs, seconds per notebook — what the tests run.
- ``quick``: real CiteULike, few epochs and one seed; the whole suite in about 15 minutes on a laptop
  CPU. Absolute numbers are below the papers' (short training); orderings are what it shows.
- ``paper``: the papers' protocol — up to 1000 epochs with early stopping (patience 20, validation every
  epoch) and 3 seeds. Hours on 2 CPU cores for the heavier chapters; each notebook says where its
  budget exceeds 30 minutes.
"""

from __future__ import annotations

from collections.abc import Iterable

PROFILES = ("smoke", "quick", "paper")
DEFAULT = "quick"

# Applied to every notebook that declares the name.
COMMON: dict[str, dict[str, object]] = {
    "smoke": {
        "DATASET": "synthetic",
        "MIN_USER_INTERACTIONS": 0,  # synthetic data has no user filter
        "NUM_NEGATIVES": 99,  # synthetic users have at least 300 unobserved items
        "SEEDS": [0, 1],
        "EPOCHS": 2,
        "EVAL_EVERY": 1,
        "PATIENCE": 0,
        "DEVICE": "cpu",
        "THREADS": 1,  # tiny models: one thread avoids thread start-up and contention costs
    },
    "quick": {
        "DATASET": "citeulike-t",
        "MIN_USER_INTERACTIONS": 5,
        "NUM_NEGATIVES": 499,
        "SEEDS": [0],
        "EPOCHS": 40,
        "EVAL_EVERY": 5,
        "PATIENCE": 2,
        # 40 epochs at the papers' lr 1e-3 leave BPR far from converged; 5e-3 gets most of the way. The
        # teachers chapter 00 trains with these values are the ones the other chapters' quick runs load
        # from the cache (same model, split and TrainConfig), so keep a chapter's teacher settings equal.
        "LR": 0.005,
    },
    "paper": {
        "DATASET": "citeulike-t",
        "MIN_USER_INTERACTIONS": 5,
        "NUM_NEGATIVES": 499,
        "SEEDS": [0, 1, 2],
        "EPOCHS": 1000,
        "EVAL_EVERY": 1,
        "PATIENCE": 20,
    },
}

# Per notebook stem; every name here must be a parameter of that notebook.
NOTEBOOKS: dict[str, dict[str, dict[str, object]]] = {
    "00_data_protocols_teachers": {
        "smoke": {
            "MODELS": ["bpr", "neumf", "lightgcn"],
            "PROTOCOLS": ["loo_sampled", "loo_full"],
            "TEACHER_DIMS": {"bpr": 32, "neumf": 32, "lightgcn": 32},
            "STUDENT_DIMS": {"bpr": 8, "neumf": 8, "lightgcn": 8},
        },
        "quick": {
            # One epoch of LightGCN (full-graph propagation per batch) or NeuMF-250 costs tens of seconds on
            # 2 CPU cores, and NeuMF-250's full ranking needs more memory than a laptop has: the quick tier
            # trains BPR-MF only; the paper tier trains all three.
            "MODELS": ["bpr"],
            "PROTOCOLS": ["loo_sampled", "loo_full"],
        },
        "paper": {
            "MODELS": ["bpr", "neumf", "lightgcn"],
            "PROTOCOLS": ["loo_sampled", "loo_full"],
        },
    },
    "01_distillation_experts": {
        "smoke": {
            "SEEDS": [0],
            "MODELS": ["bpr", "neumf"],
            "TEACHER_DIMS": {"bpr": 32, "neumf": 32},
            "STUDENT_DIMS": {"bpr": 8, "neumf": 8},
            "NUM_EXPERTS": 4,
            "ANNEAL_EPOCHS": 2,
            "PHIS": [0.25, 1.0],
            "SELECTION_EPOCHS": [0, 1, 2],
            "SELECTION_USERS": 50,
            "LAMBDAS_DE": [0.001, 0.01],
            "EXPERT_COUNTS": [1, 4],
        },
        "quick": {
            # BPR-MF only (NeuMF-250 costs tens of seconds an epoch on 2 cores); teachers and undistilled
            # students load from chapter 00's quick cache. While tau is large every expert runs on every
            # entity (~15-30 s an epoch on 2 cores, against ~1.5 s once one expert is selected), so tau is
            # annealed over the first 10 epochs, and the variants that run all experts all the time
            # ((a) attention, (b) one large expert) are left to the paper profile. Two points per sweep,
            # one of them a run already made (loaded from this chapter's cache). 8 min measured on a busy
            # 2-core machine with chapter 00's teacher cached.
            "MODELS": ["bpr"],
            "ANNEAL_EPOCHS": 10,
            "DESIGN_VARIANTS": ["DE", "(c) One expert (small)"],
            "PHIS": [0.1, 1.0],
            "SELECTION_EPOCHS": [0, 1, 2, 3, 5, 10, 40],
            "LAMBDAS_DE": [0.01, 0.1],
            "EXPERT_COUNTS": [1, 30],
        },
        "paper": {
            "MODELS": ["bpr", "neumf"],
        },
    },
    "02_personalized_hint_regression": {
        "smoke": {
            "MODELS": ["bpr", "lightgcn"],
            "TEACHER_DIMS": {"bpr": 32, "lightgcn": 32},
            "STUDENT_DIMS": {"bpr": 8, "lightgcn": 8},
            "GRID_LAMBDA_DE": [0.01],
            "GRID_NUM_EXPERTS": [2, 4],
            "ANNEAL_EPOCHS": 2,
            "BRIDGE_USERS": 100,
            "BRIDGE_PAIRS": 500,
            "PHR_HIDDEN": 8,
        },
        "quick": {
            # BPR-MF only; teachers and undistilled students load from chapter 00's quick cache. DE's grid is
            # two configurations (M = 1 and 30 at lambda 0.01) with tau annealed over 10 epochs as in chapter
            # 01, whose number-of-experts sweep already trained both under loo_sampled (loaded from its
            # cache). Estimated on an idle 2-core machine from epoch costs: loo_full FitNet ~0.3 min, PHR
            # ~1.1 min, DE ~2.3 min (M = 30 ~1.9, M = 1 ~0.4); loo_sampled FitNet + PHR ~1.3 min; the bridge
            # analysis retrains PHR once ~1.1 min: about 7 minutes (9 without chapter 01's cache).
            "MODELS": ["bpr"],
            "ANNEAL_EPOCHS": 10,
            "GRID_LAMBDA_DE": [0.01],
            "GRID_NUM_EXPERTS": [1, 30],
            "PHR_HIDDEN": 8,  # PHR's width (one thread, beside two busy cores, 2026-12-06: 2.1 s an epoch; 64: 9.3 s)
        },
        "paper": {
            # HyperKDMA's width (d_t + d_t d_s) / 2 = 2100 costs an estimated 150-300 s an epoch on one CPU
            # thread (jobs.PHR_SECONDS_PER_HIDDEN); 64 (9.3 s an epoch on one thread of a busy machine, about
            # 20-30 min a fit) is the largest that keeps chapter 02's 6 PHR fits within a few hours.
            "PHR_HIDDEN": 64,
        },
    },
    "03_topology_distillation": {
        "smoke": {
            "SEEDS": [0],
            "MODELS": ["bpr", "lightgcn"],
            "TEACHER_DIMS": {"bpr": 32, "lightgcn": 32},
            "STUDENT_DIMS": {"bpr": 8, "lightgcn": 8},
            "NUM_EXPERTS": 4,
            "NUM_GROUPS": 4,
            "ANNEAL_EPOCHS": 2,
            "ABLATION_MODELS": ["bpr"],
            "PHIS": [0.125, 0.25, 1.0],
            "TIME_PHIS": [0.125, 0.25, 1.0],
            "TAG_MIN_ITEMS": 10,  # synthetic pseudo-tags: 8 groups of about 75 items
            "PROBE_K": 1,  # 8 pseudo-tags: Recall@10 would be 1 for any representation
            "PROBE_EPOCHS": 3,
            "PROBE_SEEDS": [0, 1],
            "RELATIONAL_K": 20,
            "RELATIONAL_ANCHORS": 50,
            "TEACHER_EPOCHS": 2,  # chapter 00's smoke teacher (loaded from its cache)
            "TEACHER_PATIENCE": 0,
            "TEACHER_EVAL_EVERY": 1,
            "SCHEDULE_METHODS": ["Student", "HTD"],
            "SCHEDULE_EPOCHS": 4,
            "SCHEDULE_PATIENCE": 1,
        },
        "quick": {
            # BPR-MF only; teacher and undistilled student load from chapter 00's loo_full quick cache. DE and
            # HTD run every expert on every entity while tau is large (~14-16 s an epoch on 2 cores, ~2 s and
            # ~4 s once the selection is one-hot), so tau is annealed over 10 epochs. Estimated on an idle
            # 2-core CPU (from the measured epoch costs, not a measured run): Table 1 (FitNet ~20 s, DE ~2 min,
            # FTD ~30 s, HTD ~3.5 min), Fig. 3 with Student and FTD only at phi 0.05 / 0.1 / 1 (~2 min),
            # probes (~40 s), Fig. 4 timing and the relational KL (~30 s): about 9-10 minutes. Partial: the
            # ablation (Table 2) and assignment (Table 4) show only the runs of Table 1 (FTD, HTD; every
            # HTD variant costs ~3 min), and HTD's size curve is left to the paper profile.
            "MODELS": ["bpr"],
            "ANNEAL_EPOCHS": 10,
            "ABLATION_MODELS": ["bpr"],
            "ABLATION_VARIANTS": ["FTD", "HTD"],
            "ASSIGNMENTS": ["HTD"],
            "PHIS": [0.05, 0.1, 1.0],
            "PHI_METHODS": ["Student", "FTD"],
            "TEACHER_EPOCHS": 40,  # chapter 00's quick teacher (loaded from its cache)
            "TEACHER_PATIENCE": 2,
            "TEACHER_EVAL_EVERY": 5,
            # Section 1b: the student and FTD up to 80 epochs (about a minute); DE and HTD left to the paper profile.
            "SCHEDULE_METHODS": ["Student", "FTD"],
            "SCHEDULE_EPOCHS": 80,
            "SCHEDULE_PATIENCE": 2,
        },
        "paper": {
            "MODELS": ["bpr", "neumf", "lightgcn"],
            # Students follow the TD authors' schedule: 101 epochs, no early stopping, Recall@50 every 10
            # epochs, best epoch selected on validation (their notebook read the test curve). Teachers keep
            # chapter 00's paper protocol (early stopping) and load from its cache.
            "EPOCHS": 101,
            "PATIENCE": 0,
            "EVAL_EVERY": 10,
            "TEACHER_EPOCHS": 1000,
            "TEACHER_PATIENCE": 20,
            "TEACHER_EVAL_EVERY": 1,
        },
    },
    "04_relaxed_ranking_distillation": {
        "smoke": {
            "SEEDS": [0],
            "MODELS": ["bpr", "neumf"],
            "TEACHER_DIMS": {"bpr": 32, "neumf": 32},
            "STUDENT_DIMS": {"bpr": 8, "neumf": 8},
            "NUM_EXPERTS": 4,
            "ANNEAL_EPOCHS": 2,
            "RRD_TOP_N": 50,
            "RRD_K": 10,
            "RRD_L": 10,
            "EFFICIENCY_PHIS": [1.0, 0.25],
            "RATIO_PHIS": [0.25],
            "GRID_LAMBDA_DE": [0.001, 0.01],
            "GRID_LAMBDA_RRD": [0.001, 0.01],
            "LAMBDAS_RRD": [0.001, 0.01],
            "RRD_KS": [5, 10],
            "RD_GRID_TOP_K": [5, 10],
            "RD_GRID_POSITION_T": [1.0],
        },
        "quick": {
            # BPR-MF only; teachers, undistilled students and DE load from chapters 00 and 01 (same settings:
            # keep ANNEAL_EPOCHS equal to chapter 01's). Table 3 times every size but trains DE-RRD at
            # phi 0.1 only (the main run). A DE-RRD fit is the costliest (~2 min on 2 cores), so the lambda
            # grid is the main run's cell only (RRD's own lambda sweep shows lambda_RRD's effect); the
            # sweeps pass through the main run. 10 min measured on a busy 2-core machine with chapters 00
            # and 01 cached.
            "MODELS": ["bpr"],
            "ANNEAL_EPOCHS": 10,
            "RATIO_PHIS": [0.1],
            "RRD_VARIANTS": ["RRD", "(d) Full ranking", "(e) Interesting ranking"],
            "GRID_LAMBDA_DE": [0.01],
            "GRID_LAMBDA_RRD": [0.001],
            "LAMBDAS_RRD": [0.001, 0.01],
            "RRD_KS": [20, 40],
            "RD_GRID_TOP_K": [10, 20],  # two RD fits (~1 s an epoch each)
            "RD_GRID_POSITION_T": [1.0],
        },
        "paper": {
            "MODELS": ["bpr", "neumf"],
        },
    },
    "05_item_side_ranking_regularization": {
        "smoke": {
            "MODELS": ["bpr", "neumf"],
            "TEACHER_DIMS": {"bpr": 32, "neumf": 32},
            "STUDENT_DIMS": {"bpr": 8, "neumf": 8},
            "RRD_TOP_N": 50,
            "RRD_K": 10,
            "RRD_L": 10,
            "IR_TOP_N": 50,
            "IR_K": 5,
            "IR_L": 5,
            "LAMBDAS_IR": [0.0005, 0.005],
            "IR_USERS": [5, 10],
        },
        "quick": {
            # BPR-MF only; the teacher and undistilled student load from chapter 00's quick cache and RRD from
            # chapter 04's (same RRD settings). Two points per sweep, one of them the main run (cached).
            # IR covers the authors' item set (the batch users' RRD sets, ~18k items a batch): an IR-RRD epoch
            # measured 15.5 s on one thread of a busy machine (3.7 s with the old positives-and-negatives
            # set), so 4 fits of 40 epochs take about 40 minutes.
            "MODELS": ["bpr"],
            "LAMBDAS_IR": [0.0005, 0.005],
            "IR_USERS": [10, 20],
        },
    },
    "06_consensus_learning": {
        "smoke": {
            "EPOCHS": 4,
            "WARMUP_EPOCHS": 2,
            "UPDATE_EVERY": 1,
            "EVAL_EVERY": 1,
            "DIM": 16,
            "TOP_N": 60,
            "NUM_INTERESTING": 30,
            "TIMING_REPEATS": 1,
            "AUTHOR_CORE": 0,  # synthetic data: section 4 reuses the main runs (the same data and seeds, no filter)
            "AUTHOR_SEEDS": [0, 1],
            "AUTHOR_EPOCH": 3,  # the last consensus generation of 4 epochs (logged after epochs 0 … 3)
        },
        "quick": {
            # The authors' lr 1e-2 (not the common quick 5e-3), 30 epochs: consensus every 5 epochs, learned from
            # epoch 11. One seed. Estimated from epoch costs measured on a busy 2-core machine with one thread
            # (SingleCF ~1.3 s, ConCF ~4.3 s before and ~14 s during consensus learning, a generation ~4 s):
            # SingleCF x 6 ~4 min, ConCF ~6 min, without CL ~3 min, BPR+CML ~3 min: about 18 minutes.
            "EPOCHS": 30,
            "EVAL_EVERY": 5,
            "PATIENCE": 0,
            "LR": 0.01,
            "WARMUP_EPOCHS": 10,
            "UPDATE_EVERY": 5,
            # 30 epochs never reach the authors' readings at epoch 190: section 4 shows the curves, compares nothing
            "AUTHOR_SEEDS": [0],
        },
        "paper": {
            # The authors' schedule: 200 epochs, validation every 10 (no early stopping), three seeds.
            "EPOCHS": 200,
            "EVAL_EVERY": 10,
            "PATIENCE": 0,
        },
    },
    "07_heterogeneous_teachers": {
        "smoke": {
            "TEACHER_DIMS": {"bpr": 16, "cml": 16, "neumf": 16, "lightgcn": 16, "vae": 16, "item_ae": 16},
            "TEACHER_EPOCHS": 6,
            "TEACHER_EVAL_EVERY": 1,
            "TEACHER_PATIENCE": 0,
            "TEACHER_LR": 0.01,
            "ROW_BATCH_SIZE": 64,
            "EPOCHS": 4,
            "LR": 0.01,
            "DKC_PERIOD": 1,
            "NUM_REST": 20,
        },
        "quick": {
            # Four teacher kinds (MF, CML, Mult-VAE, item-AE) at 64-d; NeuMF (one full ranking of every user: 58 s
            # of CPU at 64-d, and a trajectory needs about two per validation) and LightGCN (6.7 s an epoch: full-
            # graph propagation per batch) are left to the paper profile. Teachers: at most 40 epochs at the quick
            # learning rate, validated every 5. Students: one seed, 40 epochs, knowledge construction every 5
            # epochs so the trajectories can be walked. Estimated from CPU seconds measured on one thread
            # (teacher epochs MF 0.33, CML 0.38, Mult-VAE 1.35, item-AE 2.67; rankings 0.7-1.4 s; student epochs
            # HetComp 0.96, DCD 3.1, RRD 0.55; a construction 1.4 s): teachers ~4.5 min, students ~6 min (DCD 2 of
            # them), inference timing ~0.5 min: about 11 minutes on an idle core.
            "TEACHER_KINDS": ["bpr", "cml", "vae", "item_ae"],
            "TEACHER_EPOCHS": 40,
            "TEACHER_EVAL_EVERY": 5,
            "TEACHER_PATIENCE": 3,
            "TEACHER_LR": 0.005,
            "DKC_PERIOD": 5,
        },
        "paper": {
            # HetComp's student schedule (validation Recall@50 every 10 epochs, patience 5) instead of the common
            # block's; six teachers up to 500 epochs. Measured 2026-12-06 (one thread per fit, two workers):
            # teachers 2.0 thread-h (NeuMF 61 min, LightGCN 28, Mult-VAE 14, CML 10, item-AE 4, MF 3.5), 21
            # student fits 1.2 thread-h (DCD 5-9 min each): 3.2 thread-hours, 1 h 45 min of wall time.
            "EVAL_EVERY": 10,
            "PATIENCE": 5,
        },
    },
    "08_scorecard": {
        # Reads the published reports only (seconds). The smoke profile writes no README block.
        "smoke": {"README_PATH": ""},
    },
}


def overrides(stem: str, profile: str, declared: Iterable[str] | None = None) -> dict[str, object]:
    """The parameter overrides of notebook ``stem`` under ``profile``.

    ``declared``: the notebook's parameter names; common entries it does not declare are dropped.
    Without it, every common entry is returned.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    names = None if declared is None else set(declared)
    common = {k: v for k, v in COMMON[profile].items() if names is None or k in names}
    return {**common, **NOTEBOOKS.get(stem, {}).get(profile, {})}
