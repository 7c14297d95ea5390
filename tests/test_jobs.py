"""Fits as jobs: the same numbers under every executor, the ledger, plan, and a fill that survives kill -9."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from kdrepro import jobs, runs
from kdrepro.evaluate import evaluate
from kdrepro.jobs import ExecutorSettings, Ledger, run_jobs
from kdrepro.metrics import PROTOCOL_METRICS, per_user_metrics_from_ranks
from kdrepro.models import ModelConfig
from kdrepro.store import Store
from kdrepro.train import TrainConfig

CFG = TrainConfig(epochs=2, eval_every=1, patience=0, progress=False, device="cpu")


def _setting(split, root: Path) -> runs.KDSetting:
    return runs.KDSetting(split, ["bpr"], [0, 1], CFG, {"bpr": 16}, {"bpr": 4},
                          {"rrd": {"top_n": 20, "num_interesting": 4, "num_uninteresting": 4}},
                          top_n=20, top_n_users=20, cache_dir=root)


def _jobs(split, root: Path) -> list[jobs.FitJob]:
    setting = _setting(split, root)
    return [runs.kd_job(setting, run, "bpr", seed) for seed in (0, 1)
            for run in runs.method_runs(["Teacher", "Student", "RRD"])]


def _metrics(done) -> dict:
    return {key: (d.entry["test"], d.entry["valid"], d.entry["best_epoch"]) for key, d in done.items()}


@pytest.fixture(scope="session")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _run(executor: str, split, tmp_path: Path, **settings) -> dict:
    root = tmp_path / executor
    work = _jobs(split, root / "store")
    done = run_jobs(work, store=Store(root / "store"), ledger=Ledger(root / "results"),
                    settings=ExecutorSettings(kind=executor, threads=1, **settings), log=lambda _: None)
    assert all(d.trained for d in done.values()) and len(done) == 6
    return _metrics(done)


@pytest.mark.ray
def test_every_executor_gives_the_same_numbers(synthetic_splits, tmp_path, local_ray):
    split = synthetic_splits["loo_sampled"]
    serial = _run("serial", split, tmp_path)
    assert _run("local", split, tmp_path, workers=2) == serial
    assert _run("ray", split, tmp_path) == serial


def test_parallel_executors_start_the_longest_fits_first_and_serial_keeps_the_chapter_order(
        synthetic_splits, tmp_path, monkeypatch):
    split = synthetic_splits["loo_sampled"]
    started: list[list[jobs.FitJob]] = []

    def run_in_process(self, fn, items):  # record the order the pool is handed, then fit here
        started.append([item[0] for item in items])
        return map(fn, items)

    costs = {"bpr Student": 300.0, "bpr Teacher": 200.0, "bpr RRD": 100.0}  # a student dearer than its teacher
    monkeypatch.setattr(jobs.Executor, "map", run_in_process)
    monkeypatch.setattr(jobs, "estimate_seconds", lambda job, timings: (costs[job.label] + job.seed, "test"))
    for kind in ("serial", "local"):
        started.clear()
        root = tmp_path / kind
        work = _jobs(split, root / "store")  # Teacher, Student, RRD × seeds 0, 1: in the chapter's order
        run_jobs(work, store=Store(root / "store"), ledger=Ledger(root / "results"),
                 settings=ExecutorSettings(kind=kind, workers=2 if kind == "local" else 0, threads=1),
                 log=lambda _: None)
        first, second = ([(j.label, j.seed) for j in phase] for phase in started)
        if kind == "serial":
            assert first == [("bpr Teacher", 0), ("bpr Student", 0), ("bpr Teacher", 1), ("bpr Student", 1)]
            assert second == [("bpr RRD", 0), ("bpr RRD", 1)]
        else:  # teachers before their students still (two phases), each phase by decreasing estimated cost
            assert first == [("bpr Student", 1), ("bpr Student", 0), ("bpr Teacher", 1), ("bpr Teacher", 0)]
            assert second == [("bpr RRD", 1), ("bpr RRD", 0)]


def test_workers_times_threads_never_exceed_the_cores():
    cores = os.cpu_count() or 1
    with pytest.raises(ValueError, match="exceed"):
        ExecutorSettings(kind="local", workers=cores, threads=2)
    assert ExecutorSettings(kind="local", threads=1).pool_size == cores
    with pytest.raises(ValueError, match="executor"):
        ExecutorSettings(kind="threads")


def test_the_ledger_renders_without_weights_and_refits_only_what_a_section_reads(synthetic_splits, tmp_path):
    split = synthetic_splits["loo_full"]
    setting = _setting(split, tmp_path / "store")
    first = runs.run_kd(setting, runs.method_runs(["Teacher", "Student", "RRD"]))
    ledger = Ledger()  # the test's own ledger folder (conftest)
    assert len(list(ledger.entries())) == 6
    entry = next(ledger.entries())
    for field in ("key", "described", "test", "valid", "best_epoch", "epochs_run", "seconds", "threads", "device",
                  "versions", "git_sha", "history"):
        assert field in entry
    assert entry["described"]["code"]
    # A fresh clone: the ledger, no store. Metrics come back identical without training.
    fresh = runs.KDSetting(**{**setting.__dict__, "cache_dir": tmp_path / "empty-store"})
    again = runs.run_kd(fresh, runs.method_runs(["Teacher", "Student", "RRD"]))
    assert again.fits["from_cache"].all()
    assert again.results.equals(first.results) and again.histories.equals(first.histories)
    assert not (tmp_path / "empty-store" / "models").exists()
    # A section that needs weights refits only the fit it reads (bit-identical on CPU).
    model = again.find("models", "bpr", "Student", seed=1)
    assert len(list((tmp_path / "empty-store" / "models").iterdir())) == 1
    assert torch.equal(model.state_dict()["user_embedding.weight"],
                       first.find("models", "bpr", "Student", seed=1).state_dict()["user_embedding.weight"])


def test_plan_lists_missing_and_stale_fits(synthetic_splits, tmp_path):
    split = synthetic_splits["loo_sampled"]
    ledger = Ledger(tmp_path / "results")
    work = _jobs(split, tmp_path / "store")
    students = [j for j in work if j.labels["method"] == "Student"]
    run_jobs(students[:1], store=Store(tmp_path / "store"), ledger=ledger, settings=ExecutorSettings(),
             log=lambda _: None)
    # An entry recorded under another code digest: stale, never used.
    stale_job = students[1]
    recorded = ledger.record(stale_job, {"test": {}, "valid": {}}, [], 1, "cpu")
    recorded["key"] = "0" * 16
    path = ledger.path(stale_job)
    path.rename(path.with_name(f"{stale_job.name}-{'0' * 16}.json"))
    path.with_name(f"{stale_job.name}-{'0' * 16}.json").write_text(json.dumps(recorded))
    rows = jobs.plan({"ch": work}, ledger)
    status = {r["key"]: r["status"] for r in rows}
    assert status[students[0].key] == "done" and status[stale_job.key] == "stale"
    assert sum(s == "missing" for s in status.values()) == 4  # 2 teachers, 2 RRD students
    assert all(r["est_seconds"] > 0 for r in rows if r["status"] != "done")
    text = jobs.format_plan(rows)
    assert "ch: 6 fits, 1 done, 4 missing, 1 stale" in text
    assert "missing models     bpr Teacher seed 0" in text  # one dataset: not named on every line
    other = [{**r, "dataset": "other-core10"} if r["key"] == stale_job.key else r for r in rows]
    assert "stale   models     bpr Student [other-core10] seed 1" in jobs.format_plan(other)


def test_plan_lists_a_recorded_teacher_whose_weights_are_gone_as_a_refit(synthetic_splits, tmp_path):
    split = synthetic_splits["loo_sampled"]
    ledger = Ledger(tmp_path / "results")
    work = _jobs(split, tmp_path / "store")
    teacher = next(j for j in work if j.labels["method"] == "Teacher" and j.seed == 0)
    run_jobs([teacher], store=Store(tmp_path / "store"), ledger=ledger, settings=ExecutorSettings(),
             log=lambda _: None)
    recorded_seconds = ledger.get(teacher)["seconds"]
    status = {r["key"]: r for r in jobs.plan({"ch": work}, ledger, store=Store(tmp_path / "store"))}
    assert status[teacher.key]["status"] == "done"  # its weights are here
    fresh = {r["key"]: r for r in jobs.plan({"ch": work}, ledger, store=Store(tmp_path / "fresh-machine"))}
    assert fresh[teacher.key]["status"] == "refit" and fresh[teacher.key]["est_seconds"] == recorded_seconds
    assert "1 to refit (in the ledger, weights not in this store)" in jobs.format_plan(list(fresh.values()))
    # Nothing left to compute that reads it: no refit.
    readers = [j for j in work if j.teacher is not None and j.teacher.key == teacher.key]
    assert readers
    only_teacher = {r["key"]: r for r in jobs.plan({"ch": [teacher]}, ledger, store=Store(tmp_path / "fresh-machine"))}
    assert only_teacher[teacher.key]["status"] == "done"


def test_a_kept_module_is_its_own_fit_in_the_plan_and_a_refit_where_its_weights_are_gone(synthetic_splits, tmp_path):
    split = synthetic_splits["loo_sampled"]
    ledger = Ledger(tmp_path / "results")
    setting = _setting(split, tmp_path / "store")
    student = runs.kd_job(setting, runs.KDRun("RRD"), "bpr", 0)
    with_module = runs.kd_job(setting, runs.KDRun("RRD"), "bpr", 0, kind=jobs.MODULE_KIND)
    # The same training, another artefact: a recorded student does not stand for the module a section loads.
    assert with_module.key != student.key and with_module.config_key != student.config_key
    run_jobs([student, with_module], store=Store(tmp_path / "store"), ledger=ledger, settings=ExecutorSettings(),
             log=lambda _: None)
    assert ledger.get(student)["test"] == ledger.get(with_module)["test"]  # bit-identical on CPU
    here = {r["key"]: r["status"] for r in jobs.plan({"ch": [student, with_module]}, ledger,
                                                      store=Store(tmp_path / "store"))}
    assert here == {student.key: "done", with_module.key: "done", student.teacher.key: "done"}
    fresh = {r["key"]: r["status"] for r in jobs.plan({"ch": [student, with_module]}, ledger,
                                                       store=Store(tmp_path / "fresh-machine"))}
    assert fresh == {student.key: "done", with_module.key: "refit", student.teacher.key: "done"}


def test_restore_weights_refits_the_pending_refits_first_and_only_those(synthetic_splits, tmp_path):
    split = synthetic_splits["loo_sampled"]
    ledger = Ledger(tmp_path / "results")
    setting = _setting(split, tmp_path / "store")
    student = runs.kd_job(setting, runs.KDRun("RRD"), "bpr", 0)
    with_module = runs.kd_job(setting, runs.KDRun("RRD"), "bpr", 0, kind=jobs.MODULE_KIND)
    run_jobs([student, with_module], store=Store(tmp_path / "store"), ledger=ledger, settings=ExecutorSettings(),
             log=lambda _: None)
    here, fresh = Store(tmp_path / "store"), Store(tmp_path / "fresh-machine")
    shutil.copytree(tmp_path / "store" / "splits", tmp_path / "fresh-machine" / "splits")  # as planning leaves it
    assert not jobs.weights_gone(ledger, here) and jobs.weights_gone(ledger, fresh)
    recorded = ledger.get(with_module)
    messages: list[str] = []
    restored = jobs.restore_weights({"ch": [student, with_module]}, store=fresh, ledger=ledger,
                                    settings=ExecutorSettings(), log=messages.append)
    # Only the module a section loads is refitted (its teacher's outputs come with it); the student's entry
    # is read from the ledger without weights.
    assert [job.key for job in restored] == [with_module.key]
    assert fresh.open(with_module.kind, with_module.name, with_module.key) is not None
    assert fresh.open(student.kind, student.name, student.key) is None
    assert "restoring the weights of 1 recorded fit(s)" in messages[0]
    refitted = ledger.get(with_module)
    assert refitted["test"] == recorded["test"] and len(refitted["refits"]) == 1  # the same numbers on CPU
    assert {r["status"] for r in jobs.plan({"ch": [student, with_module]}, ledger, store=fresh)} == {"done"}
    assert jobs.restore_weights({"ch": [student, with_module]}, store=fresh, ledger=ledger,
                                settings=ExecutorSettings(), log=messages.append) == []


def test_match_keeps_the_fits_whose_plan_line_matches_and_their_teachers_stay_required(synthetic_splits, tmp_path):
    work = _jobs(synthetic_splits["loo_sampled"], tmp_path / "store")
    texts = [jobs.job_text(j) for j in work]
    assert "students bpr RRD seed 1" in texts and "models bpr Student seed 0" in texts
    kept = jobs.select_jobs({"ch": work}, r"^students bpr RRD seed 1$")["ch"]
    assert [jobs.job_text(j) for j in kept] == ["students bpr RRD seed 1"]
    rows = jobs.plan({"ch": kept}, Ledger(tmp_path / "results"))
    assert {r["fit"] for r in rows} == {"bpr RRD", "bpr Teacher"}  # its teacher is planned with it
    assert jobs.select_jobs({"ch": work}, None)["ch"] == work
    with pytest.raises(ValueError, match="--match '\\(' is not a regular expression"):
        jobs.select_jobs({}, "(")


FILL_SCRIPT = """
import sys, json
from pathlib import Path
from kdrepro import jobs
from kdrepro.store import Store
root = Path(sys.argv[1])
work = [jobs.FitJob.from_dict(d) for d in json.loads((root / "jobs.json").read_text())]
jobs.fill({"ch": work}, store=Store(root / "store"), ledger=jobs.Ledger(root / "results"),
          settings=jobs.ExecutorSettings(kind="serial", threads=1))
"""


def test_a_killed_fill_resumes_and_ends_complete_and_consistent(synthetic_data, tmp_path):
    store = Store(tmp_path / "store")
    split = store.split(synthetic_data, "loo_sampled", 0, num_negatives=30)
    slow = TrainConfig(epochs=30, eval_every=1, patience=0, progress=False, device="cpu")
    entry = jobs.split_entry(store, split)
    work = [jobs.model_job(entry, split, ModelConfig("bpr", 16), slow, seed) for seed in range(4)]
    (tmp_path / "jobs.json").write_text(json.dumps([j.to_dict() for j in work]))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-c", FILL_SCRIPT, str(tmp_path)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ledger_dir = tmp_path / "results"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(ledger_dir.glob("**/*.json"))) < 1:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # mid-fill: at least one fit recorded, another in flight
    process.wait()
    recorded_before = len(list(ledger_dir.glob("**/*.json")))
    assert 1 <= recorded_before < 4
    rerun = subprocess.run([sys.executable, "-c", FILL_SCRIPT, str(tmp_path)], env=env, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{4 - recorded_before} fits computed" in rerun.stdout or "fits computed" in rerun.stdout
    ledger = Ledger(ledger_dir)
    assert all(ledger.get(job) is not None for job in work)
    for job in work:  # every store entry verifies; the ledger agrees with it
        opened = store.open(job.kind, job.name, job.key)
        assert opened is not None
        assert opened.json("metrics.json")["test"] == ledger.get(job)["test"]
    assert not list((tmp_path / "store").glob("**/.*.tmp"))


def test_planning_mode_records_jobs_and_trains_nothing(synthetic_splits, tmp_path, monkeypatch):
    split = synthetic_splits["loo_sampled"]
    work = _jobs(split, tmp_path / "store")
    plan_file = tmp_path / "plan.jsonl"
    monkeypatch.setenv(jobs.PLAN_FILE_ENV, str(plan_file))
    with pytest.raises(RuntimeError, match="planning mode"):
        jobs.fit(ModelConfig("bpr", 4), split, CFG)
    done = run_jobs(work, store=Store(tmp_path / "store"), ledger=Ledger(tmp_path / "results"))
    assert {d.entry["test"] == {} and not d.trained for d in done.values()} == {True}
    recorded = [jobs.FitJob.from_dict(json.loads(line)) for line in plan_file.read_text().splitlines()]
    assert [j.key for j in recorded] == [j.key for j in {j.key: j for j in work}.values()]
    assert not (tmp_path / "results").exists() and not (tmp_path / "store" / "models").exists()


def test_a_fit_whose_weights_a_section_loads_is_a_refit_on_a_fresh_machine_and_fill_restores_it(
        synthetic_splits, tmp_path, monkeypatch):
    """An inference timing loads a recorded fit's weights: planning marks the fit (reads_weights, not in its
    key), --plan counts a refit where the store lacks it, and --fill trains it again (the same numbers)."""
    split = synthetic_splits["loo_sampled"]
    ledger, store = Ledger(tmp_path / "results"), Store(tmp_path / "store")
    job = jobs.model_job(jobs.split_entry(store, split), split, ModelConfig("bpr", 8), CFG, 0)
    recorded = run_jobs([job], store=store, ledger=ledger, log=lambda _: None)[job.key].entry
    plan_file = tmp_path / "plan.jsonl"
    monkeypatch.setenv(jobs.PLAN_FILE_ENV, str(plan_file))
    run_jobs([job], store=store, ledger=ledger)  # the main table: metrics only
    with pytest.raises(RuntimeError, match="planning mode"):
        jobs.load_model(Store(tmp_path / "fresh"), job)  # a timing section: the weights
    monkeypatch.delenv(jobs.PLAN_FILE_ENV)
    lines = [jobs.FitJob.from_dict(json.loads(line)) for line in plan_file.read_text().splitlines()]
    assert [j.reads_weights for j in lines] == [False, True] and {j.key for j in lines} == {job.key}
    read = lines[1]
    assert jobs.plan({"ch": [read]}, ledger, store=store)[0]["status"] == "done"
    fresh_store = Store(tmp_path / "fresh")
    jobs.split_entry(fresh_store, split)
    row = jobs.plan({"ch": [read]}, ledger, store=fresh_store)[0]
    assert row["status"] == "refit" and row["est_seconds"] == recorded["seconds"]
    assert jobs.plan({"ch": [job]}, ledger, store=fresh_store)[0]["status"] == "done"  # metrics only: nothing to do
    done = jobs.fill({"ch": [read]}, store=fresh_store, ledger=ledger, log=lambda _: None)
    assert done[job.key].trained and done[job.key].entry["test"] == recorded["test"]
    assert fresh_store.open(job.kind, job.name, job.key) is not None
    kept = ledger.get(job)
    assert kept["seconds"] == recorded["seconds"] and "superseded" not in kept, "same numbers: the first run stands"
    assert [set(r) for r in kept["refits"]] == [set(jobs.RUN_FIELDS)] and kept["refits"][0]["cpu"] == jobs.CPU_MODEL


def test_a_refit_with_other_numbers_becomes_the_record_and_keeps_the_earlier_numbers():
    earlier = {"key": "k", "test": {"HR@5": 0.5}, "valid": {"HR@5": 0.4}, "best_epoch": 10, "epochs_run": 31,
               "seconds": 100.0, "cpu": "CPU A", "git_sha": "aaa", "history": [{"epoch": 1}]}
    same = {**earlier, "seconds": 90.0, "cpu": "CPU B", "git_sha": "bbb"}
    kept = jobs.reconcile_refit(earlier, same)
    assert {k: v for k, v in kept.items() if k != "refits"} == earlier
    assert kept["refits"][0]["seconds"] == 90.0 and kept["refits"][0]["cpu"] == "CPU B"
    other = {**same, "test": {"HR@5": 0.49}, "best_epoch": 9}
    record = jobs.reconcile_refit(kept, other)
    assert record["test"] == {"HR@5": 0.49} and record["best_epoch"] == 9 and record["cpu"] == "CPU B"
    assert record["superseded"] == [{"test": {"HR@5": 0.5}, "valid": {"HR@5": 0.4}, "best_epoch": 10,
                                     "epochs_run": 31, **{k: earlier.get(k) for k in jobs.RUN_FIELDS}}]


def test_run_jobs_notes_what_it_read_and_the_ledger_tells_a_superseded_entry_from_a_matching_refit(
        synthetic_splits, tmp_path, monkeypatch):
    split = synthetic_splits["loo_sampled"]
    ledger, store = Ledger(tmp_path / "results"), Store(tmp_path / "store")
    work = _jobs(split, tmp_path / "store")[:2]  # a teacher and a student, seed 0
    reads = tmp_path / "reads.jsonl"
    monkeypatch.setenv(jobs.READS_FILE_ENV, str(reads))
    done = run_jobs(work, store=store, ledger=ledger, log=lambda _: None)  # trained now
    run_jobs(work, store=store, ledger=ledger, log=lambda _: None)  # from the ledger
    lines = [json.loads(line) for line in reads.read_text().splitlines()]
    assert len(lines) == 4 and {line["entry"] for line in lines} == {Ledger.entry_name(j) for j in work}
    read = {line["entry"]: line["digest"] for line in lines}
    assert ledger.changed(read) == []
    student = ledger.path(work[1])
    entry = json.loads(student.read_text())
    same = jobs.reconcile_refit(entry, {**entry, "seconds": 1.0})  # a refit that gives the recorded numbers
    student.write_text(json.dumps(same))
    assert ledger.changed(read) == [], "a matching refit changes nothing a page shows"
    other = jobs.reconcile_refit(same, {**entry, "test": {**entry["test"], "HR@5": entry["test"]["HR@5"] + 0.01}})
    student.write_text(json.dumps(other))
    assert ledger.changed(read) == [Ledger.entry_name(work[1])]
    ledger.path(work[0]).unlink()
    assert ledger.changed(read) == sorted(Ledger.entry_name(j) for j in work), "a vanished entry counts too"
    assert done[work[1].key].entry["key"] == work[1].key


@pytest.mark.parametrize("protocol", ["loo_sampled", "loo_full"])
def test_the_ledger_s_held_out_ranks_give_every_per_user_metric(synthetic_splits, tmp_path, protocol):
    split = synthetic_splits[protocol]
    store = Store(tmp_path / "store")
    job = jobs.model_job(jobs.split_entry(store, split), split, ModelConfig("bpr", 8), CFG, 0)
    entry = run_jobs([job], store=store, ledger=Ledger(tmp_path / "results"), log=lambda _: None)[job.key].entry
    ranks = torch.from_numpy(jobs.decode_ranks(entry["test_ranks"]))
    from_ranks = per_user_metrics_from_ranks(ranks, PROTOCOL_METRICS[protocol], split.ks)
    direct = evaluate(jobs.load_model(store, job), split, "test", per_user=True)
    assert set(from_ranks) == set(direct) - {"user"}
    for name, values in from_ranks.items():
        np.testing.assert_allclose(values.numpy(), direct[name], rtol=0, atol=1e-6)


def test_fallback_costs_follow_the_base_model_and_its_size_and_count_validations():
    assert jobs.base_seconds("bpr", 20) == jobs.BASE_SECONDS["bpr"][20]
    mid = jobs.base_seconds("lightgcn", 110)  # halfway between the measured sizes 20 and 200: halfway in cost
    measured = jobs.BASE_SECONDS["lightgcn"].values()
    assert mid == pytest.approx(tuple((a + b) / 2 for a, b in zip(*measured, strict=True)))
    assert jobs.base_seconds("lightgcn", 1) == jobs.BASE_SECONDS["lightgcn"][20]  # never under the small size
    assert jobs.base_seconds("cml", 200) == jobs.BASE_SECONDS["bpr"][200]  # unmeasured: BPR-MF's cost

    def teacher(name: str, dim: int, eval_every: int) -> jobs.FitJob:
        return jobs.FitJob(kind="models", dataset="citeulike-t", split=("s", "k"), seed=0,
                           model={"name": name, "dim": dim},
                           train={"epochs": 100, "patience": 0, "eval_every": eval_every})

    epoch_s, validation_s = jobs.BASE_SECONDS["neumf"][250]
    seconds, source = jobs.estimate_seconds(teacher("neumf", 250, 1), {})
    assert source == "fallback" and seconds == pytest.approx(100 * (epoch_s + validation_s))
    assert jobs.estimate_seconds(teacher("neumf", 250, 10), {})[0] == pytest.approx(100 * epoch_s + 10 * validation_s)
    assert jobs.estimate_seconds(teacher("bpr", 200, 1), {})[0] < seconds / 5


def test_fallback_cost_of_phr_grows_with_its_hidden_width():
    def phr(hidden: int | None) -> jobs.FitJob:
        teacher = jobs.FitJob(kind="models", dataset="citeulike-t", split=("s", "k"), seed=0,
                              model={"name": "bpr", "dim": 200}, train={"epochs": 10, "patience": 0, "eval_every": 1})
        return jobs.FitJob(kind="students", dataset="citeulike-t", split=("s", "k"), seed=0, spec="phr",
                           model={"name": "bpr", "dim": 20}, configs={"phr": {"hidden": hidden}}, teacher=teacher,
                           student_repr=20, train={"epochs": 10, "patience": 0, "eval_every": 1})

    measured = jobs.EPOCH_SECONDS["phr"]
    assert jobs.method_epoch_seconds(phr(jobs.PHR_MEASURED_HIDDEN), "phr") == measured
    assert jobs.method_epoch_seconds(phr(64), "phr") == pytest.approx(measured + 56 * jobs.PHR_SECONDS_PER_HIDDEN)
    # None: HyperKDMA's width (200 + 200 * 20) / 2 = 2100 hidden units.
    assert jobs.method_epoch_seconds(phr(None), "phr") == pytest.approx(measured + 2092 * jobs.PHR_SECONDS_PER_HIDDEN)
    epoch_s, validation_s = jobs.base_seconds("bpr", 20)
    assert jobs.estimate_seconds(phr(64), {})[0] == pytest.approx(
        10 * (epoch_s + measured + 56 * jobs.PHR_SECONDS_PER_HIDDEN + validation_s))


def test_ledger_estimates_use_the_same_schedule_else_seconds_per_epoch():
    def job(epochs: int, patience: int) -> jobs.FitJob:
        return jobs.FitJob(kind="students", dataset="citeulike-t", split=("s", "k"), seed=0, spec="de",
                           model={"name": "bpr", "dim": 20},
                           train={"epochs": epochs, "patience": patience, "eval_every": 1})

    short = job(101, 0)
    timings = {jobs._cost_class(short.to_dict()): [jobs.Timing(500.0, 101, (101, 0, 1)),
                                                    jobs.Timing(700.0, 101, (101, 0, 1))]}
    assert jobs.estimate_seconds(short, timings) == (600.0, "ledger")
    # A 1000-epoch early-stopped schedule: the recorded cost per epoch × the epochs it is expected to run.
    seconds, source = jobs.estimate_seconds(job(1000, 20), timings)
    assert source == "ledger per epoch" and seconds == pytest.approx(600.0 / 101 * jobs.EARLY_STOPPED_EPOCHS)


def _git_repo(path: Path, monkeypatch) -> Callable[..., str]:
    """A fresh git repository at ``path`` with one commit, and a ``git(*args) -> stdout`` runner for it."""
    monkeypatch.setenv("GIT_AUTHOR_NAME", "kdrepro test")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "kdrepro test")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "test@example.org")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "test@example.org")

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=path, check=True, capture_output=True, text=True).stdout

    path.mkdir()
    git("init", "-q")
    (path / "README").write_text("first\n")
    git("add", "README")
    git("commit", "-qm", "init")
    return git


def _student_job(seed: int) -> jobs.FitJob:
    return jobs.FitJob(kind="models", dataset="synthetic", split=("s", "k"), seed=seed,
                       model={"name": "bpr", "dim": 8}, train={"epochs": 2, "patience": 0, "eval_every": 1},
                       labels={"base": "bpr", "method": "Student"})


RESULT = {"test": {"HR@5": 0.5}, "valid": {"HR@5": 0.4}, "best_epoch": 3, "epochs_run": 5, "seconds": 1234.4}


def test_a_committing_ledger_commits_each_entry_alone_as_it_is_written(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    git = _git_repo(repo, monkeypatch)
    (repo / "notes.txt").write_text("staged, not to be committed\n")
    git("add", "notes.txt")
    (repo / "README").write_text("edited, not staged\n")
    ledger, job = Ledger(repo / "results", commit=True), _student_job(0)
    entry_file = str(ledger.path(job).relative_to(repo))

    ledger.record(job, RESULT, [], threads=1, device="cpu")
    assert git("log", "-1", "--format=%s").strip() == "Ledger: fit bpr Student seed 0 (1,234 s at 1 thread)"
    assert git("show", "--name-only", "--format=", "HEAD").split() == [entry_file]
    assert sorted(git("status", "--porcelain").splitlines()) == [" M README", "A  notes.txt"]

    ledger.record(job, {**RESULT, "seconds": 998.6}, [], threads=2, device="cpu")  # same numbers
    assert git("log", "-1", "--format=%s").strip() == ("Ledger: refit, same numbers: bpr Student seed 0 "
                                                       "(999 s at 2 threads)")
    ledger.record(job, {**RESULT, "test": {"HR@5": 0.49}}, [], threads=1, device="cpu")
    assert git("log", "-1", "--format=%s").startswith("Ledger: refit, other numbers: bpr Student seed 0")
    assert json.loads(git("show", f"HEAD:{entry_file}"))["test"] == {"HR@5": 0.49}
    assert git("rev-list", "--count", "HEAD").strip() == "4"
    assert ledger.commits.pending == {}


def test_committing_ledgers_in_two_processes_take_turns_and_lose_no_entry(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    git = _git_repo(repo, monkeypatch)
    script = ("import sys\nfrom kdrepro.jobs import FitJob, Ledger\n"
              f"RESULT = {RESULT!r}\n"
              "ledger = Ledger(sys.argv[1], commit=True)\n"
              "for seed in range(int(sys.argv[2]), int(sys.argv[2]) + 4):\n"
              "    job = FitJob(kind='models', dataset='synthetic', split=('s', 'k'), seed=seed,\n"
              "                 model={'name': 'bpr', 'dim': 8}, train={'epochs': 2, 'patience': 0, 'eval_every': 1},\n"
              "                 labels={'base': 'bpr', 'method': 'Student'})\n"
              "    ledger.record(job, RESULT, [], threads=1, device='cpu')\n"
              "assert not ledger.commits.pending\n")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(repo / "results"), str(first)], cwd=root, env=env,
                              stderr=subprocess.PIPE, text=True) for first in (0, 10)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    subjects = git("log", "--format=%s").splitlines()
    assert sorted(int(s.split(" seed ")[1].split()[0]) for s in subjects[:-1]) == [0, 1, 2, 3, 10, 11, 12, 13]
    assert git("status", "--porcelain") == ""



def test_a_committing_ledger_waits_for_another_git_command_s_index_lock_and_retries_what_git_refused(
        tmp_path, monkeypatch, capsys):
    repo = tmp_path / "repo"
    git = _git_repo(repo, monkeypatch)
    monkeypatch.setattr(jobs, "INDEX_LOCK_WAIT_S", 0.2)
    ledger = Ledger(repo / "results", commit=True)
    lock = repo / ".git" / "index.lock"
    lock.write_text("")  # a person's git command, running
    threading.Timer(0.5, lock.unlink).start()
    ledger.record(_student_job(0), RESULT, [], threads=1, device="cpu")
    assert git("log", "-1", "--format=%s").startswith("Ledger: fit bpr Student seed 0")

    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho refused by hook >&2\nexit 1\n")
    hook.chmod(0o755)
    ledger.record(_student_job(1), RESULT, [], threads=1, device="cpu")
    assert "could not commit" in capsys.readouterr().err and len(ledger.commits.pending) == 1
    hook.unlink()
    ledger.record(_student_job(2), RESULT, [], threads=1, device="cpu")  # commits seed 1's entry too
    assert ledger.commits.pending == {} and git("status", "--porcelain") == ""
    assert git("rev-list", "--count", "HEAD").strip() == "4"


def test_a_fit_without_a_recorded_twin_is_estimated_from_its_siblings_scaled_by_the_work_its_settings_add():
    def ir_rrd(users: int, seconds: float | None = None) -> dict:
        job = jobs.FitJob(kind="students", dataset="citeulike-t", split=("s", "k"), seed=0, spec="rrd+ir",
                          model={"name": "bpr", "dim": 20},
                          configs={"ir": {"num_interesting": users, "num_uninteresting": users}},
                          train={"epochs": 1000, "patience": 20, "eval_every": 1})
        return job if seconds is None else {"job": job.to_dict(), "seconds": seconds, "threads": 1, "epochs_run": 200}

    timings = jobs.recorded_timings([ir_rrd(20, 4000.0), ir_rrd(10, 1500.0)])
    assert jobs.estimate_seconds(ir_rrd(20), timings) == (4000.0, "ledger")
    # 40 + 40 users: IR's share of the epoch twice the 20 + 20 run's, four times the 10 + 10 run's; the base
    # epoch and RRD's as they were. By hand from the fallback costs (b = BPR-20 epoch + RRD, r = IR at 20 + 20):
    # the 20-user run's 20 s an epoch × (b + 2r) / (b + r), the 10-user run's 7.5 s × (b + 2r) / (b + r / 2).
    b, r = jobs.base_seconds("bpr", 20)[0] + jobs.EPOCH_SECONDS["rrd"], jobs.EPOCH_SECONDS["ir"]
    per_epoch = np.median([20.0 * (b + 2 * r) / (b + r), 7.5 * (b + 2 * r) / (b + r / 2)])
    seconds, source = jobs.estimate_seconds(ir_rrd(40), timings)
    assert source == "ledger per epoch" and seconds == pytest.approx(per_epoch * jobs.EARLY_STOPPED_EPOCHS)

    # DE's expert bank at φ = 1 (d_s = 200 = d_t): (200·200 + 200·200) / (20·110 + 110·200) = 3.31 times dim 20's.
    teacher = jobs.FitJob(kind="models", dataset="citeulike-t", split=("s", "k"), seed=0,
                          model={"name": "bpr", "dim": 200}, train={"epochs": 10})
    de = jobs.FitJob(kind="students", dataset="citeulike-t", split=("s", "k"), seed=0, spec="de", teacher=teacher,
                     model={"name": "bpr", "dim": 200}, configs={"de": {"num_experts": 30}}, train={"epochs": 10})
    assert jobs.cost_scale(de.to_dict()) == pytest.approx(80000 / 24200)
    assert jobs.method_epoch_seconds(de, "de") == pytest.approx(jobs.EPOCH_SECONDS["de"] * 80000 / 24200)
