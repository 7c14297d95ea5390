"""Speed kernels of DE's expert mixture (HTD's group regression reuses it), each beside the plain reference
implementation that the tests compare it against (``tests/test_kernels.py``).

The mixture of M two-layer experts over n rows,

    Σ_m s_m E_m(h),   E_m(h) = W2_mᵀ ReLU(W1_mᵀ h + b1_m) + b2_m,   h (n, d_in), s (n, M) ≥ 0,

is :func:`expert_mixture_reference` written as its definition (one expert at a time, plain autograd), and
two fast forms:

- :func:`dense_mixture`: every expert on every row (τ near 1). A hand-written forward and backward in a
  layout where the three large products (n × M·hidden × d_out) are plain matrix products and no temporary
  of the dense mixture's size is made twice. It uses s_m ReLU(x) = ReLU(s_m x) for s_m ≥ 0: each expert's
  input row is scaled by its weight first ([h, 1] s_m: n × M × (d_in + 1), small), so the hidden layer
  comes out already weighted and the weighting costs no pass over the (M·hidden × n) activations, and the
  weights' gradient comes from the small input side. ``compute_dtype=torch.bfloat16`` runs the products in
  bfloat16 with fp32 accumulation (oneDNN/AMX on CPUs that have it, tensor cores on GPUs): an
  approximation, about 3 significant digits per stored activation (measured against the reference in the
  tests); float32 (the default) matches the reference to float rounding.
- :func:`sparse_mixture`: only the (row, expert) pairs with a non-zero weight (τ small, or weights under a
  bound dropped), laid out in per-expert chunks served by two batched products.

The gradient with respect to a weight that is exactly 0 is returned as 0 by both fast forms (the true
partial derivative there is g · E_m(h)). The weights always come from a softmax here, whose backward
multiplies each entry's gradient by the entry's own weight, so every parameter's gradient is exact.
"""

from __future__ import annotations

import torch

ROW_MULTIPLE = 64  # bfloat16 products pad the rows to a multiple of this (see _DenseMixture.forward)
# Share of non-zero (row, expert) weights from which the dense mixture costs less than the sparse one, per
# compute dtype (CiteULike, DE's shapes: the sparse form costs ~2.2x the dense one per pair in float32, ~4.5x
# against bfloat16's products; measured at 11 of 30 experts per row).
DENSE_FROM = {torch.float32: 0.5, torch.bfloat16: 0.2}
# Selection weights below this are treated as 0 by the expert bank. The weights sum to 1, so the largest is
# ≥ 1/M; a term weighted < 2^-64 is > 50 bits below it, where float32 (24 bits) changes no sum. What it
# prevents: as τ falls, softmax weights pass through the subnormal range (< 1.2e-38) before reaching 0, and x86
# CPUs take ~100x longer per operation on subnormal operands (CiteULike, 1000-epoch schedule, epoch 140: a DE
# epoch took 112 s before the kernels, 311 s with them, instead of ~15 s).
NEGLIGIBLE_WEIGHT = 2.0**-64


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` has native bfloat16 matrix products (CUDA: Ampere or later; CPU: oneDNN's check)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        return bool(torch.backends.mkldnn.is_available() and check is not None and check())
    return False


def expert_mixture_reference(
    h: torch.Tensor,
    selection: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
) -> torch.Tensor:
    """Σ_m s_m E_m(h) by definition: ``h`` (n, d_in), ``selection`` (n, M), ``w1`` (M, d_in, hidden),
    ``b1`` (M, hidden), ``w2`` (M, hidden, d_out), ``b2`` (M, d_out) → (n, d_out)."""
    mixed = h.new_zeros(len(h), w2.shape[2])
    for m in range(w1.shape[0]):
        expert = torch.relu(h @ w1[m] + b1[m]) @ w2[m] + b2[m]
        mixed = mixed + selection[:, m : m + 1] * expert
    return mixed


def dense_mixture(
    h: torch.Tensor,
    selection: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Σ_m s_m E_m(h) with every expert on every row (shapes as :func:`expert_mixture_reference`; s ≥ 0)."""
    return _DenseMixture.apply(h, selection, w1, b1, w2, b2, compute_dtype)


class _DenseMixture(torch.autograd.Function):
    """Layout: activations are (M, hidden, n), i.e. the transposed (M·hidden, n) matrix, so that

    - forward:  A = ReLU(bmm(W1_augᵀ, X)) with X_m = s_m [h; 1]ᵀ (M, d_in + 1, n), stored as Xᵀ (M, n, d_in + 1);
      out = (W2ᵀ A)ᵀ + s b2;
    - backward: grad W2 = A g; G = W2 gᵀ masked by A > 0; grad W1_aug = (G Xᵀ)ᵀ; grad X = bmm(W1_aug, G),
      from which grad h = Σ_m s_m grad X_m and grad s_m = [h; 1] · grad X_m (+ g · b2_m).
    """

    @staticmethod
    def forward(ctx, h, selection, w1, b1, w2, b2, compute_dtype):  # noqa: ANN001, ANN205 (autograd API)
        num_experts, d_in, hidden_dim = w1.shape
        n, d_out = len(h), w2.shape[2]
        h_aug = torch.cat([h, h.new_ones(n, 1)], dim=1)  # the bias as a last input column
        w1_aug = torch.cat([w1, b1.unsqueeze(1)], dim=1).to(compute_dtype)  # (M, d_in + 1, hidden)
        inputs = (selection.t().unsqueeze(2) * h_aug).to(compute_dtype)  # Xᵀ (M, n, d_in + 1): s_m [h, 1]
        if compute_dtype != torch.float32:
            # oneDNN compiles a kernel per new shape (~20 ms on CPU) and n changes every batch: zero rows
            # (weight 0, so output 0) pad n to a multiple of ROW_MULTIPLE, so that a few shapes recur.
            inputs = torch.nn.functional.pad(inputs, (0, 0, 0, -n % ROW_MULTIPLE))
        activations = torch.bmm(w1_aug.transpose(1, 2).contiguous(), inputs.transpose(1, 2))
        # A (M, hidden, n) = s_m ReLU(W1_aug_mᵀ [h; 1]). In bfloat16 through the bit pattern: a value is
        # negative iff its int16 view is, so clamping that view at 0 is ReLU, exactly (4x faster on CPU).
        if compute_dtype == torch.bfloat16:
            activations.view(torch.int16).clamp_min_(0)
        else:
            activations.relu_()
        w2_flat = w2.reshape(num_experts * hidden_dim, d_out).to(compute_dtype)
        # (W2ᵀ A)ᵀ with W2ᵀ contiguous: the fast operand order for oneDNN's bfloat16 products.
        out = (w2_flat.t().contiguous() @ activations.flatten(0, 1)).t()[:n]
        ctx.save_for_backward(h_aug, selection, inputs, w1_aug, w2_flat, activations, b2)
        return torch.addmm(out.to(h.dtype), selection, b2)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        h_aug, selection, inputs, w1_aug, w2_flat, activations, b2 = ctx.saved_tensors
        num_experts, d_aug, hidden_dim = w1_aug.shape
        n, padded, dtype = len(h_aug), inputs.shape[1], grad.dtype
        grad_c = torch.nn.functional.pad(grad.to(w2_flat.dtype), (0, 0, 0, padded - n))
        grad_w2 = (activations.flatten(0, 1) @ grad_c).to(dtype).view(num_experts, hidden_dim, -1)
        # G = W2 gᵀ where A > 0 (ReLU's gradient), in the activations' layout (M, hidden, n).
        grad_act = (w2_flat @ grad_c.t()).view(num_experts, hidden_dim, padded)
        grad_pre = torch.ops.aten.threshold_backward(grad_act, activations, 0)
        # (G X)ᵀ: the large operand G untransposed (a transposed one would be copied first).
        grad_w1_aug = torch.bmm(grad_pre, inputs).transpose(1, 2).to(dtype)  # (M, d_in + 1, hidden)
        grad_inputs = torch.bmm(w1_aug, grad_pre)[..., :n].to(dtype)  # (M, d_in + 1, n)
        grad_selection = (grad_inputs * h_aug.t().unsqueeze(0)).sum(1).t() + grad @ b2.t()
        grad_h = (grad_inputs[:, :-1] * selection.t().unsqueeze(1)).sum(0).t()
        return (grad_h, grad_selection, grad_w1_aug[:, :-1], grad_w1_aug[:, -1], grad_w2,
                selection.t() @ grad, None)


def sparse_mixture(
    h: torch.Tensor,
    selection: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
) -> torch.Tensor:
    """Σ_m s_m E_m(h) over the non-zero (row, expert) pairs of ``selection`` only (shapes as the reference).

    The pairs are laid out in padded chunks, each chunk belonging to one expert, so that two batched matrix
    products serve every expert at once. Balanced groups get one chunk per expert; when an expert takes
    more than twice the mean, groups are cut into chunks of the mean size (each gathering its expert's
    weights), so the work stays within twice the number of pairs.
    """
    expert, row = selection.detach().t().nonzero(as_tuple=True)  # sorted by expert
    num_rows, num_experts = selection.shape
    sizes = torch.bincount(expert, minlength=num_experts)
    mean_size, largest = -(-len(row) // num_experts), int(sizes.max())
    balanced = largest <= 2 * mean_size
    chunk_size = largest if balanced else mean_size
    chunks_per_expert = torch.ones_like(sizes) if balanced else -(-sizes // chunk_size)
    first_chunk = chunks_per_expert.cumsum(0) - chunks_per_expert
    rank = torch.arange(len(row), device=row.device) - (sizes.cumsum(0) - sizes)[expert]
    chunk, slot = first_chunk[expert] + rank // chunk_size, rank % chunk_size
    shape = (int(chunks_per_expert.sum()), chunk_size)
    if not balanced:
        chunk_expert = torch.arange(num_experts, device=row.device).repeat_interleave(chunks_per_expert)
        w1, b1, w2, b2 = w1[chunk_expert], b1[chunk_expert], w2[chunk_expert], b2[chunk_expert]
    # Pair p sits at [chunk_p, slot_p]; empty slots hold zeros and point at a spare output row.
    inputs = h.new_zeros(*shape, h.shape[1]).index_put((chunk, slot), h[row])
    weights = selection.new_zeros(shape).index_put((chunk, slot), selection[row, expert])
    target = torch.full(shape, num_rows, device=row.device).index_put((chunk, slot), row)
    hidden = torch.relu(torch.baddbmm(b1.unsqueeze(1), inputs, w1))
    # s_m E_m(h) with the output bias inside the chunk (not a dense selection @ b2 over all experts).
    outputs = torch.baddbmm(b2.unsqueeze(1), hidden, w2) * weights.unsqueeze(-1)
    mixed = h.new_zeros(num_rows + 1, outputs.shape[-1])
    mixed = mixed.index_add(0, target.reshape(-1), outputs.flatten(0, 1))
    return mixed[:num_rows]
