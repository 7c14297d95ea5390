"""Chapter 06's fits as jobs: the task ``concf`` of :mod:`kdrepro.jobs` (one ConCF or SingleCF fit).

A job describes the multi-branch model (heads, dim, dropout, target head) in ``model``, the run's ConCF
config and the top-K of the recorded test hits in ``params``, the training config and the seed; the fit runs
in a worker and hands back the weights and, for the ledger, every head's and the consensus' test metrics,
the validation log at each consensus generation, the balancing weights per epoch and the target head's top-K
test hits (packed bits), so the chapter's tables need no weights. This file is the code behind those fits
(its digest is in their keys, with the model's, the method's and the training loop's): the chapter's runs,
tables and figures live in :mod:`kdrepro.concf_analysis`, so editing them refits nothing.
"""

from __future__ import annotations

import base64

import numpy as np
import torch

from kdrepro import jobs
from kdrepro.distill.concf import ConCF, ConCFConfig, ConsensusScorer
from kdrepro.evaluate import evaluate, rank_full
from kdrepro.models.multihead import MultiHeadCF
from kdrepro.splits import Split
from kdrepro.store import TRAINING_CODE, code_digest
from kdrepro.train import fit, resolve_device


def encode_hits(hits: np.ndarray) -> str:
    """(n,) bool → base64 of its packed bits (a ledger field: one bit per test interaction)."""
    return base64.b64encode(np.packbits(hits.astype(bool)).tobytes()).decode()


def decode_hits(text: str, length: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8), count=length).astype(bool)


def test_hits(model: torch.nn.Module, split: Split, k: int = 50) -> np.ndarray:
    """(n_test,) bool: whether each test interaction (in ``split.test_*`` order) is in the model's top-``k``."""
    tops = np.empty((split.num_users, k), dtype=np.int64)
    model.eval()
    for users, ranked in rank_full(model, split, "test", top_k=k):
        tops[users] = ranked.cpu().numpy()
    return (tops[split.test_users] == split.test_items[:, None]).any(axis=1)


def _build(job: jobs.FitJob, split: Split) -> MultiHeadCF:
    model = job.model
    return MultiHeadCF(split.num_users, split.num_items, tuple(model["heads"]), dim=model["dim"],
                       target=model["target"], dropout=model["dropout"])


def _config(job: jobs.FitJob) -> ConCFConfig:
    return ConCFConfig(**{**job.params["concf"], "heads": tuple(job.params["concf"]["heads"])})


def _run_concf(job: jobs.FitJob, split: Split, _inputs: None) -> jobs.FitOutcome:
    """One fit (in a worker): the model built after seeding, the ConCF module as ``fit``'s extension, then
    every head (and the consensus) on the test set and the target head's top-K test hits."""
    config = _config(job)
    torch.manual_seed(job.seed)
    model = _build(job, split)
    module = ConCF(config, split)
    result = fit(model, split, job.train_config, distill=module, seed=job.seed)
    heads = {head: evaluate(model.head(head), split, "test") for head in config.heads}
    if len(config.heads) > 1:
        heads["consensus"] = evaluate(ConsensusScorer(model, split, "test", config.top_n, config.temperature),
                                      split, "test")
    hits = test_hits(model.head(config.target), split, job.params["hits_k"])
    summary = jobs.fit_summary(result, 0)
    summary["extra"] = {"heads": heads, "log": module.log, "weight_log": module.weight_log,
                        "test_hits": encode_hits(hits), "num_test": len(hits)}
    return jobs.FitOutcome(key=job.key, state={k: v.detach().cpu() for k, v in model.state_dict().items()},
                           result=summary, history=result.history, config=result.config,
                           threads=torch.get_num_threads(), device=str(resolve_device(job.train_config.device)))


def _concf_code(job: jobs.FitJob) -> str:
    return code_digest(*TRAINING_CODE, "models/multihead.py", "distill/concf.py", "distill/_concf_kernels.py",
                       "concf_task.py")


def _concf_seconds(job: jobs.FitJob) -> float:
    """Fallback: SingleCF epochs; ConCF's warm-up and consensus-learning epochs and its generations (every
    ``update_every`` epochs, kept without CL to log the heads), pro rata of six heads."""
    cost, config, epochs = jobs.EPOCH_SECONDS, job.params["concf"], jobs.expected_epochs(job.train)
    heads = len(config["heads"])
    if heads == 1:
        return cost["singlecf"] * epochs
    share = heads / 6
    warmup = epochs if not config["consensus_learning"] else min(epochs, config["warmup_epochs"])
    generations = -(-epochs // config["update_every"])
    return share * (cost["concf_warmup"] * warmup + cost["concf_cl"] * (epochs - warmup)
                    + cost["concf_generation"] * generations)


CONCF_TASK = jobs.Task(code=_concf_code, run=_run_concf, seconds=_concf_seconds, build=_build)
