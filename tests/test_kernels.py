"""The speed kernels of kdrepro.distill._kernels against their plain reference implementations."""

import pytest
import torch

from kdrepro.distill import _kernels as kernels
from kdrepro.distill import de as de_module
from kdrepro.distill._kernels import (
    NEGLIGIBLE_WEIGHT,
    bf16_supported,
    dense_mixture,
    expert_mixture_reference,
    sparse_mixture,
)
from kdrepro.distill.de import DEConfig, ExpertBank, de_loss
from kdrepro.distill.htd import HTDConfig

NAMES = ["output", "h", "logits", "w1", "b1", "w2", "b2"]


def problem(rows=50, experts=6, dims=(5, 7, 9), sharpness=1.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    bank = ExpertBank(experts, dims, generator)
    logits = (torch.randn(rows, experts, generator=generator) * sharpness).requires_grad_()
    h = torch.randn(rows, dims[0], generator=generator, requires_grad=True)
    target = torch.randn(rows, dims[2], generator=generator)
    return bank, logits, h, target


def output_and_gradients(mix, bank, logits, h, target):
    """The mixture and the gradients of DE's loss, through a softmax selection as in DE."""
    selection = torch.softmax(logits, dim=1)
    mixed = mix(h, selection, bank.w1, bank.b1, bank.w2, bank.b2)
    return [mixed.detach(), *torch.autograd.grad(de_loss(target, mixed), [h, logits, *bank.parameters()])]


def test_reference_is_the_sum_of_the_experts():
    bank, logits, h, _ = problem()
    selection = torch.softmax(logits, dim=1)
    by_hand = sum(selection[:, m : m + 1] * bank.expert(m, h) for m in range(6))
    torch.testing.assert_close(expert_mixture_reference(h, selection, bank.w1, bank.b1, bank.w2, bank.b2), by_hand)


def test_dense_mixture_float32_matches_the_reference():
    bank, logits, h, target = problem()
    ours = output_and_gradients(dense_mixture, bank, logits, h, target)
    reference = output_and_gradients(expert_mixture_reference, bank, logits, h, target)
    for name, mine, theirs in zip(NAMES, ours, reference, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6, msg=name)


def test_dense_mixture_with_exact_zero_weights_keeps_every_parameter_gradient():
    # A sharp softmax: many weights underflow to 0; the reference differentiates through them too.
    bank, logits, h, target = problem(sharpness=60.0)
    assert (torch.softmax(logits, dim=1) == 0).any()
    ours = output_and_gradients(dense_mixture, bank, logits, h, target)
    reference = output_and_gradients(expert_mixture_reference, bank, logits, h, target)
    for name, mine, theirs in zip(NAMES, ours, reference, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6, msg=name)


def test_dense_mixture_bfloat16_within_its_stated_tolerance():
    if not bf16_supported(torch.device("cpu")):
        pytest.skip("no native bfloat16 products on this CPU")
    # DE's shapes (d_s 20 → 110 → d_t 200, 30 experts): relative error of the output and of each
    # gradient, as a norm over the tensor. bfloat16 keeps 8 significant bits (3e-3 relative per value).
    bank, logits, h, target = problem(rows=400, experts=30, dims=(20, 110, 200))
    ours = output_and_gradients(lambda *a: dense_mixture(*a, torch.bfloat16), bank, logits, h, target)
    reference = output_and_gradients(expert_mixture_reference, bank, logits, h, target)
    tolerance = {"output": 1e-2, "logits": 1e-2, "w2": 1e-2, "b2": 1e-2, "h": 5e-2, "w1": 5e-2, "b1": 5e-2}
    for name, mine, theirs in zip(NAMES, ours, reference, strict=True):
        assert mine.dtype == torch.float32
        error = float((mine - theirs).norm() / theirs.norm())
        assert error < tolerance[name], (name, error)
        assert error > 0  # it is an approximation: the products did run in bfloat16


@pytest.mark.parametrize("kind", ["sparse", "one_hot", "skewed"])
def test_sparse_mixture_matches_the_reference(kind):
    bank, logits, h, target = problem(rows=40, sharpness=200.0 if kind == "sparse" else 1.0)
    if kind != "sparse":
        chosen = torch.randint(6, (40,), generator=torch.Generator().manual_seed(1))
        if kind == "skewed":
            chosen[:30] = 2  # one expert takes 3/4 of the rows: chunks of the mean size
        logits = (torch.nn.functional.one_hot(chosen, 6).float() * 1e3).requires_grad_()
    assert (torch.softmax(logits, dim=1) == 0).float().mean() > 0.5
    ours = output_and_gradients(sparse_mixture, bank, logits, h, target)
    reference = output_and_gradients(expert_mixture_reference, bank, logits, h, target)
    for name, mine, theirs in zip(NAMES, ours, reference, strict=True):
        torch.testing.assert_close(mine, theirs, msg=name)


def test_min_weight_skips_small_weights_and_moves_the_output_by_their_share():
    generator = torch.Generator().manual_seed(0)
    exact = ExpertBank(6, (5, 7, 9), generator)
    skipping = ExpertBank(6, (5, 7, 9), torch.Generator(), min_weight=0.05)
    skipping.load_state_dict(exact.state_dict())
    h = torch.randn(30, 5, generator=generator)
    selection = torch.softmax(torch.randn(30, 6, generator=generator) * 3, dim=1)
    kept = selection * (selection >= 0.05)
    assert 0 < int((selection < 0.05).sum()) < selection.numel()
    torch.testing.assert_close(skipping(h, selection), exact(h, kept))
    # The difference is the dropped terms Σ_{s_m < ε} s_m E_m(h), each weighted by less than ε.
    dropped = exact(h, selection - kept)
    torch.testing.assert_close(exact(h, selection) - skipping(h, selection), dropped, rtol=1e-4, atol=1e-5)


def test_speed_options_are_checked():
    with pytest.raises(ValueError, match="precision"):
        DEConfig(precision="fp16")
    with pytest.raises(ValueError, match="min_weight"):
        DEConfig(min_weight=1.0)
    with pytest.raises(ValueError, match="precision"):
        HTDConfig(precision="half")


def test_negligible_weights_change_nothing_and_never_reach_the_products():
    # Weights from 1e-45 (subnormal) to 1e-20 beside weights near 1: the bank drops those below 2^-64,
    # and its output and gradients equal the plain mixture that keeps them. Subnormals exist only without
    # flush-to-zero, which an earlier fit in this process may have turned on (train.fit does).
    torch.set_flush_denormal(False)
    generator = torch.Generator().manual_seed(0)
    bank = ExpertBank(6, (5, 7, 9), generator)
    h = torch.randn(30, 5, generator=generator, requires_grad=True)
    logits = torch.randn(30, 6, generator=generator) * 2
    logits[:, 3:] = torch.tensor([-46.0, -62.0, -100.0])  # weights ~1e-20, ~1e-27 and ~1e-44 (subnormal)
    logits.requires_grad_()
    target = torch.randn(30, 9, generator=generator)
    selection = torch.softmax(logits, dim=1)
    assert ((selection > 0) & (selection < NEGLIGIBLE_WEIGHT)).any()
    assert ((selection > 0) & (selection < torch.finfo(torch.float32).tiny)).any()  # subnormal weights
    products = []
    original = kernels.dense_mixture

    def recording(h, selection, *rest):
        products.append(selection.detach().clone())
        return original(h, selection, *rest)

    kernels_in_de = de_module.dense_mixture
    de_module.dense_mixture = recording
    try:
        ours = output_and_gradients(lambda h, s, *w: bank(h, s), bank, logits, h, target)
    finally:
        de_module.dense_mixture = kernels_in_de
    reference = output_and_gradients(expert_mixture_reference, bank, logits, h, target)
    assert products and not ((products[0] > 0) & (products[0] < NEGLIGIBLE_WEIGHT)).any()
    for name, mine, theirs in zip(NAMES, ours, reference, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6, msg=name)
