"""Chapter 07's distilled students as jobs: the task ``hetcomp`` of :mod:`kdrepro.jobs`.

A job is an MF student (``model``, training config, seed) distilled by HetComp, RRD or DCD (``params``: the
chapter's label, the registry spec, the method's config, the ensemble's K and T); its inputs are the teachers'
trajectory jobs (:mod:`kdrepro.trajectories`), loaded by the driver and handed to the worker. HetComp reads the
trajectories, RRD and DCD the converged teachers' ensemble. The ledger entry keeps HetComp's DKC dynamics.
This file is the code behind those fits (its digest is in their keys, with the training loop's, MF's and the
methods' files): the chapter's tables live in :mod:`kdrepro.heterogeneous`, so editing them refits nothing.
"""

from __future__ import annotations

from typing import Any

import torch

from kdrepro import distill, jobs
from kdrepro.distill.hetcomp import TeacherTrajectories, ensemble_outputs
from kdrepro.efficiency import count_parameters
from kdrepro.models import MODELS, build
from kdrepro.splits import Split
from kdrepro.store import TRAINING_CODE, code_digest
from kdrepro.train import fit, resolve_device
from kdrepro.trajectories import load_trajectories


def _run_student(job: jobs.FitJob, split: Split, trajectories: TeacherTrajectories) -> jobs.FitOutcome:
    """One distilled student (in a worker): HetComp reads the trajectories, RRD and DCD the converged
    teachers' ensemble; the DKC dynamics go to the ledger entry."""
    spec, config = job.params["spec"], job.params["config"]
    top_n, temperature = job.params["ensemble"]
    teacher: Any = trajectories if spec == "hetcomp" else ensemble_outputs(trajectories, top_n, top_n, temperature,
                                                                           split.num_items)
    module = distill.build(spec, teacher, split, job.model["dim"], seed=job.seed, **{spec: config})
    result = fit(job.model_config, split, job.train_config, distill=module, seed=job.seed)
    summary = jobs.fit_summary(result, count_parameters(module))
    summary["extra"] = {"dynamics": getattr(module, "dynamics", [])}
    return jobs.FitOutcome(key=job.key, state={k: v.detach().cpu() for k, v in result.model.state_dict().items()},
                           result=summary, history=result.history, config=result.config,
                           threads=torch.get_num_threads(), device=str(resolve_device(job.train_config.device)))


def _student_code(job: jobs.FitJob) -> str:
    return code_digest(*TRAINING_CODE, MODELS["bpr"], distill.METHODS[job.params["spec"]], "distill/hetcomp.py",
                       "distill/rrd.py", "distill/base.py", "hetcomp_task.py")


def _student_seconds(job: jobs.FitJob) -> float:
    """Fallback: the method's epoch × expected epochs, HetComp's knowledge constructions every p epochs."""
    cost, spec, epochs = jobs.EPOCH_SECONDS, job.params["spec"], jobs.expected_epochs(job.train)
    if spec == "hetcomp":
        period = job.params["config"].get("period", 10)
        return cost["hetcomp"] * epochs + cost["knowledge_construction"] * -(-epochs // period)
    return {"dcd": cost["dcd"], "rrd": cost["ensemble_rrd"]}.get(spec, cost["models"]) * epochs


STUDENT_TASK = jobs.Task(code=_student_code, run=_run_student, seconds=_student_seconds,
                         load_inputs=load_trajectories, build=lambda job, split: build(job.model_config, split))
