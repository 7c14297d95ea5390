"""ConCF (chapter 06): the heads' objectives, the consensus, the listwise loss and the balancing, by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from kdrepro import concf_analysis, concf_task, data, jobs, splits
from kdrepro.distill._concf_kernels import (
    SortedConsensus,
    consensus_top_n,
    distinct,
    gather_row_sets,
    listed_scores,
    positions_in,
    queue_positions,
    rank_top_n,
    ranking_tables,
    sparse_multinomial_loss,
    top_n_columns,
)
from kdrepro.distill.concf import (
    ConCF,
    ConCFConfig,
    ConsensusScorer,
    consensus_learning_loss,
    consensus_learning_losses,
    consensus_ranking,
    consensus_scores,
    consistency_bonus,
    gradnorm_loss,
    renormalize_,
)
from kdrepro.evaluate import evaluate, rank_full
from kdrepro.models.multihead import OBJECTIVES, MultiHeadCF, project_unit_ball, relu_dropout
from kdrepro.objectives import BASE_LOSSES, bce_loss, bpr_loss, cml_hinge_loss, mse_loss, multinomial_loss
from kdrepro.store import Store
from kdrepro.train import TrainConfig, fit
from kdrepro.types import Batch


@pytest.fixture(scope="module")
def split():
    return splits.make_split(data.synthetic(num_users=60, num_items=120, seed=3), "holdout", 0)


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_objectives_by_hand():
    pos, neg = torch.tensor([2.0, -1.0]), torch.tensor([[1.0], [0.5]])
    assert bpr_loss(pos, neg).item() == pytest.approx(-math.log(_sigmoid(1.0)) - math.log(_sigmoid(-1.5)), rel=1e-6)
    assert bce_loss(pos, neg).item() == pytest.approx(
        -(math.log(_sigmoid(2)) + math.log(_sigmoid(-1)) + math.log(_sigmoid(-1)) + math.log(_sigmoid(-0.5))), rel=1e-6)
    assert mse_loss(pos, neg).item() == pytest.approx(1 + 4 + 1 + 0.25)
    # CML on s = −d²: [m + d²_pos − d²_neg]_+ = [0.5 − 2 + 1]_+ + [0.5 + 1 + 0.5]_+ = 0 + 2
    assert cml_hinge_loss(pos, neg).item() == pytest.approx(2.0)
    scores, targets = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[0.0, 1.0]])
    assert multinomial_loss(scores, targets).item() == pytest.approx(-math.log(3 / 4), rel=1e-6)


def test_consensus_learning_loss_by_hand():
    a, b, c, d = 2.0, 1.0, 0.5, -1.0
    scores = torch.tensor([[a, b, c, d]])
    # first K = 2 in order above the last two (unordered)
    expected = -((a - math.log(math.exp(a) + math.exp(b) + math.exp(c) + math.exp(d)))
                 + (b - math.log(math.exp(b) + math.exp(c) + math.exp(d))))
    assert consensus_learning_loss(scores, 2).item() == pytest.approx(expected, rel=1e-6)
    # every head at once: the same loss per head
    heads = torch.stack([scores.expand(3, -1), torch.randn(3, 4, generator=torch.Generator().manual_seed(0))])
    together = consensus_learning_losses(heads, 2)
    assert together[0].item() == pytest.approx(3 * expected, rel=1e-6)
    assert together[1].item() == pytest.approx(consensus_learning_loss(heads[1], 2).item(), rel=1e-6)


def test_positions_and_consistency_bonus_by_hand():
    old = torch.tensor([[5, 7, 9]])
    new = torch.tensor([[7, 5, 3]])
    assert positions_in(old, new).tolist() == [[1, 0, 3]]  # item 3 absent → N = 3
    bonus = consistency_bonus([old, new], temperature=10.0, num_items=10)
    # positions over the queue: item 7 (1, 0), item 5 (0, 1), item 3 (3, 2): population std 0.5 each
    assert bonus[0].tolist() == pytest.approx([math.exp(-0.05)] * 3)
    assert consistency_bonus([new], 10.0, 10).tolist() == [[1.0, 1.0, 1.0]]  # one ranking: nothing varies


def test_consensus_by_hand():
    # two heads, one user, top-2 each: head A ranks (4, 1), head B ranks (1, 2); T = 1, no bonus
    rankings = torch.tensor([[[4, 1]], [[1, 2]]])
    bonus = torch.zeros(2, 1, 2)
    scores = consensus_scores(rankings, bonus, num_items=5, temperature=1.0, consistency_weight=1.0)
    e = math.exp(-1.0)
    assert scores[0].tolist() == pytest.approx([0.0, e + 1.0, e, 0.0, 1.0])
    assert consensus_ranking(rankings, bonus, 5, 1.0, 1.0, top_n=3).tolist() == [[1, 4, 2]]
    # the consistency bonus can reorder: item 2 stable in head B, item 4 not in head A
    bonus = torch.tensor([[[0.0, 0.0]], [[0.0, 1.0]]])
    assert consensus_ranking(rankings, bonus, 5, 1.0, 1.0, top_n=3).tolist() == [[1, 2, 4]]


def test_gradnorm_gradient_reaches_the_weights_only():
    weights = torch.tensor([1.0, 1.0], requires_grad=True)
    norms, ratios = torch.tensor([1.0, 3.0], requires_grad=True), torch.tensor([1.0, 1.0])
    loss = gradnorm_loss(weights, norms, ratios, tau=0.15)
    # target = mean(w g) · 1 = 2: |1 − 2| + |3 − 2| = 2; d/dw = sign(w g − 2) · g = (−1, 3)
    assert loss.item() == pytest.approx(2.0)
    loss.backward()
    assert weights.grad.tolist() == pytest.approx([-1.0, 3.0])
    assert norms.grad is None


def test_weights_clipped_and_renormalised():
    weights = torch.tensor([0.1, 1.0, 5.0])
    renormalize_(weights, 0.5, 2.0)
    assert weights.sum().item() == pytest.approx(3.0)
    assert weights.tolist() == pytest.approx([3 * 0.5 / 3.5, 3 * 1.0 / 3.5, 3 * 2.0 / 3.5])


def test_model_heads_and_unit_ball(split):
    torch.manual_seed(0)
    model = MultiHeadCF(split.num_users, split.num_items, OBJECTIVES, dim=16, target="bpr")
    model.eval()
    users = torch.arange(5)
    assert torch.allclose(model.score_all(users), model.head("bpr").score_all(users))
    assert torch.allclose(model.head("cml").score_all(users)[:, :7],
                          model.head_scores("cml", users, torch.arange(7).expand(5, -1)), atol=1e-6)
    big = torch.randn(10, 4) * 10
    assert (project_unit_ball(big).norm(dim=1) <= 1 + 1e-6).all()
    single = MultiHeadCF(split.num_users, split.num_items, ("bpr",), dim=16)
    assert model.target_parameters() == sum(p.numel() for p in single.parameters())
    with pytest.raises(ValueError, match="target head"):
        MultiHeadCF(10, 10, ("bpr",), dim=16, target="cml")
    with pytest.raises(ValueError, match="heads"):
        ConCFConfig(heads=("bpr", "nope"))


def _batch(split, epoch=1):
    users, items = split.train_tensors()
    negatives = torch.randint(split.num_items, (32, 1), generator=torch.Generator().manual_seed(0))
    return Batch(users[:32], items[:32], negatives, epoch)


def test_gradient_reaches_every_head_and_the_consensus_terms(split):
    config = ConCFConfig(warmup_epochs=0, update_every=1, top_n=20, num_interesting=10, track_heads=False)
    torch.manual_seed(0)
    model = MultiHeadCF(split.num_users, split.num_items, config.heads, dim=16)
    concf = ConCF(config, split)
    concf.on_epoch_start(1, torch.Generator().manual_seed(0))
    for _ in range(2):  # the second batch has the first one's gradient norms: the balance term appears
        model.zero_grad()
        terms = concf(model, _batch(split))
        sum(terms.values()).backward()
    assert set(terms) == {*config.heads, *(f"cl/{h}" for h in config.heads), "balance"}
    assert concf.consensus.shape == (split.num_users, 20)
    for head in config.heads:
        grads = [p.grad for p in model.branches[head].parameters()]
        assert all(g is not None and g.abs().sum() > 0 for g in grads), head
    assert model.user_embedding.weight.grad.abs().sum() > 0
    assert concf.weights.grad is not None and concf.weights.grad.abs().sum() > 0
    assert (concf._grad_sq > 0).all()  # every head's gradient norm was captured


def test_training_is_deterministic_and_logs(split):
    def run():
        config = ConCFConfig(heads=("bpr", "cml", "user_multinomial"), warmup_epochs=1, update_every=1, top_n=50,
                             num_interesting=25)
        torch.manual_seed(0)
        model = MultiHeadCF(split.num_users, split.num_items, config.heads, dim=16)
        concf = ConCF(config, split)
        result = fit(model, split, TrainConfig(epochs=3, loss="none", lr=1e-2, weight_decay=1e-5, patience=0,
                                               progress=False, device="cpu"), distill=concf, seed=1)
        return result, concf

    (first, concf), (second, _) = run(), run()
    assert first.test == second.test
    assert [h["loss"] for h in first.history] == [h["loss"] for h in second.history]
    assert "loss/cl/bpr" in first.history[-1] and "loss/cl/bpr" not in first.history[0]
    assert len(concf.log) == 3 and "consensus/Recall@50" in concf.log[0]
    assert np.isfinite(first.test["Recall@50"])


def test_consensus_scorer_masks_validation_items_at_test(split):
    torch.manual_seed(0)
    model = MultiHeadCF(split.num_users, split.num_items, ("bpr", "mse"), dim=16).eval()
    scorer = ConsensusScorer(model, split, "test", top_n=60)
    users = torch.as_tensor(np.unique(split.valid_users)[:10])
    scores = scorer.score_all(users)
    valid = {(int(u), int(i)) for u, i in zip(split.valid_users, split.valid_items, strict=True)}
    nonzero = torch.nonzero(scores > 0).tolist()
    assert nonzero and not any((int(users[r]), c) in valid for r, c in nonzero)
    assert set(evaluate(scorer, split, "test")) == {f"{m}@{k}" for m in ("Recall", "NDCG") for k in (10, 20, 50)}


def test_validation_from_rankings_matches_evaluate(split):
    torch.manual_seed(0)
    model = MultiHeadCF(split.num_users, split.num_items, ("bpr", "cml"), dim=16).eval()
    concf = ConCF(ConCFConfig(heads=("bpr", "cml"), top_n=60, num_interesting=30), split)
    rankings = torch.stack([torch.cat([r for _, r in rank_full(model.head(h), split, "train", top_k=60)])
                            for h in ("bpr", "cml")])
    row = concf.validation_row(rankings)
    for head in ("bpr", "cml"):
        expected = evaluate(model.head(head), split, "valid")
        # equal up to the order of exactly tied scores of an untrained model (top-60 vs top-50 selection)
        assert {k: row[f"{head}/{k}"] for k in expected} == pytest.approx(expected, abs=1e-3)
    consensus = evaluate(ConsensusScorer(model, split, "valid", top_n=60), split, "valid")
    # consensus scores tie often (an item at rank r of one head only scores like another at rank r of
    # another head only): top-60 and top-50 selections may order such ties differently
    assert {k: row[f"consensus/{k}"] for k in consensus} == pytest.approx(consensus, abs=0.01)


def test_one_pass_core_filter_by_hand():
    # user 0: items 0, 1 · user 1: items 0, 3 · user 2: items 1, 0 — item 3 has one interaction
    users, items = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 0, 3, 1, 0])
    toy = data.Interactions("toy", users, items, 3, 4, np.array([10, 11, 12]), np.array([20, 21, 22, 23]), "sha")
    kept = concf_analysis.core_filter(toy, 2)
    # one pass drops (1, 3) only: user 1 keeps a single interaction (an iterated 2-core would drop it too)
    assert (kept.num_users, kept.num_items, kept.num_interactions) == (3, 2, 5)
    assert kept.raw_user_ids.tolist() == [10, 11, 12] and kept.raw_item_ids.tolist() == [20, 21]
    assert kept.sha256 != toy.sha256 and concf_analysis.core_filter(toy, 0) is toy
    with pytest.raises(ValueError, match="survives"):
        concf_analysis.core_filter(toy, 4)


def _setting(split, seeds=(0,)) -> concf_analysis.ConCFSetting:
    train = TrainConfig(epochs=3, eval_every=1, patience=0, loss="none", progress=False, device="cpu", batch_size=256)
    concf = ConCFConfig(heads=("bpr", "cml"), warmup_epochs=1, update_every=1, top_n=50, num_interesting=10,
                        queue_size=2)
    return concf_analysis.ConCFSetting("synthetic", split, seeds, train, concf, dim=16, hits_k=10)


def test_planning_records_the_concf_jobs_and_trains_nothing(split, monkeypatch, tmp_path):
    plan_file = tmp_path / "plan.jsonl"
    monkeypatch.setenv(jobs.PLAN_FILE_ENV, str(plan_file))
    setting = _setting(split, (0, 1))
    runs = concf_analysis.single_runs(["bpr", "cml"]) + concf_analysis.concf_runs(["bpr", "cml"])
    planned = concf_analysis.run(setting, runs)
    recorded = [jobs.FitJob.from_dict(json.loads(line)) for line in plan_file.read_text().splitlines()]
    assert len(recorded) == 8 and {j.task for j in recorded} == {"concf"}
    assert planned.results.empty and not any(item.trained for item in planned.fits)
    rows = jobs.plan({"06": recorded})
    assert {r["status"] for r in rows} == {"missing"} and all(r["est_seconds"] > 0 for r in rows)


def test_concf_jobs_fill_the_ledger_and_render_from_it(split, tmp_path):
    """A fit runs once; a rerun reads every row (heads, consensus, log, hits) from the ledger, no training;
    the local executor gives the serial numbers."""
    setting = _setting(split)
    runs = concf_analysis.single_runs(["bpr"]) + concf_analysis.concf_runs(["bpr", "cml"], without_cl=False)
    first = concf_analysis.run(setting, runs)
    again = concf_analysis.run(setting, runs)
    assert all(item.trained for item in first.fits) and not any(item.trained for item in again.fits)
    pd.testing.assert_frame_equal(first.results, again.results)
    assert set(again.results["method"]) >= {"SingleCF bpr", "ConCF bpr", "ConCF cml", "ConCF consensus"}
    assert set(again.log["model"]) >= {"bpr", "cml", "consensus"}
    single = again.fit_of("SingleCF bpr")
    hits = concf_task.test_hits(single.model.head("bpr"), split, 10)  # weights loaded lazily from the store
    assert np.array_equal(single.hits, hits)
    concf = again.fit_of("ConCF")
    assert evaluate(concf.model.head("bpr"), split, "test") == pytest.approx(concf.entry["extra"]["heads"]["bpr"])
    job = concf.job
    jobs.split_entry(Store(tmp_path / "store"), split)
    local = jobs.run_jobs([job], store=Store(tmp_path / "store"), ledger=jobs.Ledger(tmp_path / "results"),
                          settings=jobs.ExecutorSettings(kind="local", workers=2, threads=1), log=lambda _: None)
    assert local[job.key].trained and local[job.key].entry["test"] == concf.entry["test"]
    assert 0 < concf.entry["seconds"] and concf.entry["epochs_run"] == 3
    assert local[job.key].entry["extra"]["heads"] == concf.entry["extra"]["heads"]


def test_inference_cost_times_fresh_architectures_without_reading_weights(split, monkeypatch):
    """The kept head has SingleCF's parameter count by construction; the timing needs no weights (a fresh
    machine renders the section without refitting)."""
    setting = _setting(split)
    runs = concf_analysis.single_runs(["bpr"]) + concf_analysis.concf_runs(["bpr", "cml"], without_cl=False)
    trained = concf_analysis.run(setting, runs).fit_of("ConCF")
    fresh = trained.architecture(split)
    assert [p.shape for p in fresh.parameters()] == [p.shape for p in trained.model.parameters()]
    done = concf_analysis.run(setting, runs)  # from the ledger: no model loaded yet

    def no_weights(*_, **__):
        raise AssertionError("inference_cost read a fit's weights")

    monkeypatch.setattr(jobs, "load_model", no_weights)
    cost = concf_analysis.inference_cost(done.fit_of("ConCF"), done.fit_of("SingleCF bpr"), split, top_n=10,
                                         repeats=1)
    kept, alone, every = cost.to_dict("records")
    assert kept["parameters"] == alone["parameters"] < every["parameters"]
    assert every["parameters"] == sum(p.numel() for p in fresh.parameters())
    assert (cost["top10_all_users_s"] > 0).all()


def test_ranking_kernel_matches_rank_full(split):
    """Every head's top-N from once-transformed tables (the metric head through its augmented product) equals
    ``rank_full`` on the head (which re-transforms the item table per block)."""
    torch.manual_seed(0)
    model = MultiHeadCF(split.num_users, split.num_items, ("bpr", "cml"), dim=16).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(30)  # spread the scores: an untrained model's near-ties would reorder on rounding
    for head in ("bpr", "cml"):
        expected = torch.cat([r for _, r in rank_full(model.head(head), split, "train", top_k=40)])
        users, items = ranking_tables(model.branches[head], model.user_embedding.weight, model.item_embedding.weight)
        ranked = rank_top_n(users, items, split.train_indptr, split.train_items, 40, block=7)
        assert torch.equal(ranked, expected), head


def test_top_n_columns_match_a_stable_descending_sort():
    """Exact top-N by the segment-maximum threshold: the columns of a stable descending sort (ties by lower
    column), for negative, infinite, masked, tied and signed-zero scores and widths that do not divide."""
    generator = torch.Generator().manual_seed(0)
    cases = [torch.randn(7, 25181, generator=generator),
             -torch.rand(5, 2600, generator=generator) - 1.0,  # every score negative
             torch.randint(0, 40, (6, 2501), generator=generator).float(),  # many exact ties
             torch.randn(4, 3001, generator=generator).mul(1e-30)]  # subnormal and tiny magnitudes
    cases[0][0, ::3] = -torch.inf  # masked training items
    cases[0][1, :50] = torch.inf
    cases[2][0, :1000] = 0.0
    cases[2][0, 1000:2000] = -0.0
    for scores in cases:
        for top_n in (10, 100):
            expected = scores.sort(dim=1, descending=True, stable=True).indices[:, :top_n]
            assert torch.equal(top_n_columns(scores, top_n), expected), (scores.shape, top_n)
    narrow = torch.randint(0, 3, (3, 40), generator=generator).float()  # fewer segments than top_n: the sort
    assert torch.equal(top_n_columns(narrow, 5), narrow.sort(dim=1, descending=True, stable=True).indices[:, :5])


def test_queue_positions_and_consensus_kernels_match_the_plain_formulation():
    generator = torch.Generator().manual_seed(0)
    num_users, num_items, top_n = 9, 2000, 12  # 80 segments of 25 items: top_n_columns' own path
    queue = [torch.stack([torch.randperm(num_items, generator=generator)[:top_n] for _ in range(num_users)])
             for _ in range(4)]
    expected = torch.stack([positions_in(past, queue[-1]) for past in queue])
    assert torch.equal(queue_positions(queue, num_items, chunk=4).long(), expected)
    rankings = torch.stack(queue[:3])  # three heads' top-N
    bonus = torch.rand(rankings.shape, generator=generator)
    bonus[0, :, :4] = 0.0  # exact ties between heads (same position, no bonus) as in practice
    bonus[1, :, :4] = 0.0
    dense = consensus_scores(rankings, bonus, num_items, 10.0, 1.0)
    expected = dense.sort(dim=1, descending=True, stable=True).indices[:, :top_n]  # ties: the lower item first
    assert torch.equal(consensus_ranking(rankings, bonus, num_items, 10.0, 1.0, top_n), expected)
    listed = rankings.permute(1, 0, 2).reshape(num_users, -1)
    values = (torch.exp(-torch.arange(top_n) / 10.0) + bonus).permute(1, 0, 2).reshape(num_users, -1)
    assert torch.equal(consensus_top_n(listed, values, num_items, top_n, chunk=4), expected)


def test_distinct_and_sparse_multinomial_match_the_plain_formulation():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 40, (200,), generator=generator)
    expected = torch.unique(ids, return_inverse=True)
    found = distinct(ids, 50)
    assert torch.equal(found[0], expected[0]) and torch.equal(found[1], expected[1])
    scores = torch.randn(6, 30, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = (torch.rand(6, 30, generator=generator) < 0.2).double()
    targets[2] = 0.0  # a row without ones
    rows, cols = targets.nonzero(as_tuple=True)
    dense = multinomial_loss(scores, targets)
    (dense_grad,) = torch.autograd.grad(dense, scores)
    sparse = sparse_multinomial_loss(scores, rows, cols)
    (sparse_grad,) = torch.autograd.grad(sparse, scores)
    assert sparse.item() == pytest.approx(dense.item(), rel=1e-12)
    assert torch.allclose(sparse_grad, dense_grad, rtol=1e-10, atol=1e-12)


def test_listed_scores_match_branch_scores():
    """The sparse products give the plain gathered scores and gradients in consensus order, over every item and
    over the lists relabelled into their distinct items (as the pairwise heads' rows), for a subset of users."""
    torch.manual_seed(0)
    model = MultiHeadCF(10, 30, ("bpr", "cml"), dim=16)
    generator = torch.Generator().manual_seed(0)
    consensus = torch.stack([torch.randperm(30, generator=generator)[:7] for _ in range(10)])
    users = torch.tensor([1, 4, 5, 8])
    lists = SortedConsensus.of(consensus).select(users)
    assert torch.equal(lists.items, consensus[users].sort(dim=1).values)
    unique_items, labels = distinct(lists.items, 30)
    weights = torch.randn(len(users), 7)
    for head in ("bpr", "cml"):
        branch = model.branches[head].eval()
        parameters = [model.user_embedding.weight, model.item_embedding.weight, *branch.parameters()]
        user_out = branch(model.user_embedding.weight[users] * 50)
        item_out = branch(model.item_embedding.weight * 50)
        plain = branch.scores(user_out, item_out[consensus[users]])
        plain_grads = torch.autograd.grad((plain * weights).sum(), parameters, retain_graph=True)
        for rows, pattern in [(item_out, lists.pattern(lists.items, 30)),
                              (item_out[unique_items], lists.pattern(labels, len(unique_items)))]:
            assert torch.equal(rows[pattern.index], item_out[consensus[users]])
            fast = listed_scores(user_out, rows, pattern, branch.metric)
            assert torch.allclose(fast, plain, atol=1e-4), head
            fast_grads = torch.autograd.grad((fast * weights).sum(), parameters, retain_graph=True)
            for a, b in zip(fast_grads, plain_grads, strict=True):
                assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), head


def test_gathered_row_sets_match_separate_gathers():
    table = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    id_sets = [torch.tensor([0, 5, 7]), torch.tensor([5, 5, 11, 2]), torch.tensor([1])]
    weights = [torch.randn(len(ids), 3, dtype=torch.float64) for ids in id_sets]
    fast = gather_row_sets(table, id_sets)
    plain = [table.index_select(0, ids) for ids in id_sets]
    assert all(torch.equal(a, b) for a, b in zip(fast, plain, strict=True))
    (fast_grad,) = torch.autograd.grad(sum((r * w).sum() for r, w in zip(fast, weights, strict=True)), table,
                                       retain_graph=True)
    (plain_grad,) = torch.autograd.grad(sum((r * w).sum() for r, w in zip(plain, weights, strict=True)), table)
    assert torch.allclose(fast_grad, plain_grad, rtol=1e-12)
    (partial_grad,) = torch.autograd.grad(fast[1].sum(), table)  # one set used: the others' gradients are None
    assert torch.equal(partial_grad, torch.autograd.grad(table.index_select(0, id_sets[1]).sum(), table)[0])


def test_relu_dropout_keeps_the_dropout_distribution():
    """Kept entries are ReLU(x)/(1 − p), at rate 1 − p (binomial bounds, 10⁶ entries), the gradient flows
    through the kept positive entries only, and the seed fixes the mask."""
    x = torch.randn(1000, 1000, requires_grad=True)
    torch.manual_seed(0)
    out = relu_dropout(x, 0.1)
    kept = out != 0
    assert torch.allclose(out[kept], x[kept].detach() / 0.9)
    assert (x[kept] > 0).all()
    positive = int((x > 0).sum())
    rate = int(kept.sum()) / positive
    assert abs(rate - 0.9) < 5 * math.sqrt(0.09 / positive)
    grad = torch.randn_like(x)
    (x_grad,) = torch.autograd.grad(out, x, grad)
    assert torch.allclose(x_grad, torch.where(kept, grad / 0.9, torch.zeros(())))
    torch.manual_seed(0)
    assert torch.equal(relu_dropout(x, 0.1), out)
    assert torch.equal(relu_dropout(x, 0.0), torch.relu(x))


def test_training_terms_and_gradients_match_the_plain_formulation(split):
    """Every head's L_CF and L_CL on one batch (dropout off), and the gradients of their sum, equal the objectives
    written plainly on the model's scores: dense multinomial targets, ``head_scores`` on the consensus lists."""
    config = ConCFConfig(warmup_epochs=0, update_every=1, top_n=20, num_interesting=10, track_heads=False)
    torch.manual_seed(0)
    model = MultiHeadCF(split.num_users, split.num_items, config.heads, dim=16).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(20)  # scores far from 0: the comparison is not dominated by rounding near ties
    concf = ConCF(config, split)
    concf.on_epoch_start(1, torch.Generator().manual_seed(0))
    concf.consensus, concf._generate_now = concf.generate(model), False
    batch = _batch(split)
    ids = concf._batch_ids(batch, learn_consensus=True)
    terms = concf(model, batch)
    fast_grads = torch.autograd.grad(sum(terms.values()), list(model.parameters()))

    cl_users = torch.unique(batch.users)
    cl_items = concf.consensus[cl_users]
    train = torch.zeros(split.num_users, split.num_items)
    train[torch.as_tensor(split.train_users), torch.as_tensor(split.train_items)] = 1.0
    expected = {}
    for head in config.heads:
        if head == "user_multinomial":
            loss = multinomial_loss(model.head_score_all(head, ids.user_chunk), train[ids.user_chunk])
        elif head == "item_multinomial":
            branch = model.branches[head]
            item_out = branch(model.item_embedding(ids.item_chunk))
            loss = multinomial_loss(branch.score_matrix(item_out, branch(model.user_embedding.weight)),
                                    train[:, ids.item_chunk].T)
        else:
            scores = model.head_scores(head, batch.users, torch.cat([batch.pos.unsqueeze(1), batch.neg], dim=1))
            loss = BASE_LOSSES[head](scores[:, 0], scores[:, 1:])
        expected[head] = loss
        expected[f"cl/{head}"] = config.alpha * consensus_learning_loss(
            model.head_scores(head, cl_users, cl_items), config.num_interesting)
    assert set(terms) == set(expected)
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-4), name
    plain_grads = torch.autograd.grad(sum(expected.values()), list(model.parameters()))
    for (name, _), a, b in zip(model.named_parameters(), fast_grads, plain_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-3 * float(b.abs().max())), name
