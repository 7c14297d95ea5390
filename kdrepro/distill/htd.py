"""HTD — Hierarchical Topology Distillation (Kang et al., "Topology Distillation for Recommender System",
KDD'21; the authors' code ``HTD.get_GA_loss`` / ``get_TD_loss2`` and ``run_HTD``).

The batch's entities (its distinct users, and the distinct items of positives ∪ negatives) are split into
groups, and the teacher's topology is transferred at two levels instead of in full (FTD):

1. Group assignment (adaptive, DE-style; this module reuses :class:`kdrepro.distill.de.DE`): per side a
   selection network reads h_t(x) and gives α^x over K groups; each group k has an expert f_k (MLP
   d_s → (d_s + d_t)/2 → d_t). The selection and experts learn from the DE loss

       L_GA = Σ_x ‖h_t(x) − Σ_k s^x_k f_k(h_s(x))‖²,   s^x = softmax((log(α^x + 1e-10) + g) / τ),

   with τ annealed from 1 to 1e-10 over the run. The group used by the topology is z_x = argmax_k α^x_k
   (no Gumbel noise, no gradient); users' and items' groups are distinct (2K groups in all), so the
   one-hot Z (n, 2K) never puts a user and an item together.
2. Group-level topology: prototypes P = D⁻¹ Zᵀ E (each group's mean representation, D = group sizes;
   "column-normalised Zᵀ E") for the teacher (P^t from T) and the student (P^s from S), without
   gradient; the prototype-to-entity similarities H = cos(P, E) (2K × n) are matched:

       L_G = ‖H^t − H^s‖²_F,   H^t = cos(P^t, T),   H^s = cos(P^s, S).

   ``variant="group_pp"`` ("Group (P,P)" of Table 2) matches prototype-to-prototype similarities
   ‖cos(P^t, P^t) − cos(P^s, P^s)‖²_F instead.
3. Entity-level topology inside groups: only pairs in the same group (mask M = Z Zᵀ) whose teacher
   cosine is positive (authors' code) are matched:

       L_E = Σ_ij M_ij [A^t_ij > 0] (A^t_ij − A^s_ij)²,   A = cos(E, E).

Total (authors' code, ``weighting="code"``): L_base + λ_TD (γ (L_G + L_E) + (1 − γ) L_GA), λ_TD = 1e-3,
γ = 0.5, K = 30 per side. Ablations (Table 2) are options of this module: ``variant="group_only"``
(L_E dropped), ``"entity_only"`` (L_G dropped), ``"group_pp"``; "FTD+DE" is no code of its own but the
registry sum ``"ftd+de"``. Table 4's K-means assignment (``assignment="kmeans"``) fixes the groups to a
K-means clustering (Euclidean, k-means++ seeding, Lloyd iterations; explicit generator) of the teacher's
representations computed once at construction; L_GA then regresses through the group's own expert
(one-hot selection, no selection network).

Choices where paper and code leave room (each stated so that the chapter can discuss it):

- Weighting: the code weights the topology terms jointly by γ and the regression by 1 − γ (METHODS.md);
  ``weighting="balanced"`` gives γ L_G + (1 − γ) L_E + L_GA, the other reading of the paper's text.
- The student prototypes carry no gradient for L_G (code: ``torch.no_grad()``; ``prototype_grad`` turns
  it on). For ``group_pp`` they always do: with both prototypes detached, as in the authors' code, the
  (P,P) term has no gradient at all and the variant would silently equal ``entity_only``.
- Prototypes of groups absent from the batch are zero vectors, whose cosine with anything is 0 for
  teacher and student alike: they add nothing, as if only the present groups were kept (code: G_set).
- τ_e = τ_end^(e / anneal_epochs), e counted from 1 (the code counts from 0: one epoch earlier).
- Observed, kept as in the code: once τ is tiny the Gumbel-softmax is exactly one-hot and the selection
  network gets no gradient, so Adam's L2 (``weight_decay`` on all parameters) shrinks it towards zero and
  the argmax groups drift, often into one large group per side (seen on CiteULike within an epoch when
  τ starts annealed). The entity level then approaches the full topology of that side.

Speed: L_E is computed block-diagonally: entities are sorted by group and each group is cut into tiles
(32 to 512 slots, about a quarter of the group), and only tile pairs of the same group (upper triangle,
off-diagonal pairs counted twice) are multiplied, so the cost is ~Σ_k n_k² (d_t + 3 d_s) / 2 instead of
n² (d_t + 3 d_s): cheap while groups are balanced, close to FTD's explicit cost when one group takes most
of the batch. L_G costs 2K·n·d. L_GA is DE's expert mixture (dense while τ is large, one expert per
entity once the Gumbel-softmax is one-hot), usually the largest cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from kdrepro.distill.base import DistillLoss, check_choice, check_positive
from kdrepro.distill.de import DE, ENTITIES, PRECISIONS, DEConfig, ExpertBank, de_loss
from kdrepro.distill.ftd import cosine_matrix, topology_loss

if TYPE_CHECKING:
    from kdrepro.models import Recommender
    from kdrepro.splits import Split
    from kdrepro.types import Batch, TeacherOutputs

VARIANTS = ("full", "group_only", "entity_only", "group_pp")
ASSIGNMENTS = ("adaptive", "kmeans")
WEIGHTINGS = ("code", "balanced")


@dataclass(frozen=True)
class HTDConfig:
    lambda_td: float = 1e-3  # λ_TD
    gamma: float = 0.5  # γ: weight of the topology terms; the assignment regression L_GA gets 1 − γ
    num_groups: int = 30  # K, per side
    variant: str = "full"  # "full" | "group_only" | "entity_only" | "group_pp" (Table 2)
    assignment: str = "adaptive"  # "adaptive" (DE-style, learnt) | "kmeans" (fixed, Table 4)
    weighting: str = "code"  # "code": γ(L_G + L_E) + (1−γ)L_GA; "balanced": γL_G + (1−γ)L_E + L_GA
    positive_pairs: bool = True  # L_E keeps only pairs with teacher cosine > 0 (authors' code)
    prototype_grad: bool = False  # let L_G's gradient flow through the student prototypes P^s
    tau_end: float = 1e-10  # τ after annealing (Gumbel-softmax of L_GA)
    anneal_epochs: int = 100  # epochs over which τ goes from 1 to tau_end (authors: the 100-epoch run)
    expert_hidden: int | None = None  # hidden width of each f_k; None → (d_s + d_t) // 2
    kmeans_iterations: int = 100  # at most, for assignment="kmeans"
    # Speed options of L_GA's expert mixture (approximations; the defaults are exact, see de.ExpertBank):
    precision: str = "fp32"  # "fp32" (exact) | "bf16" (bfloat16 products where the device has them)
    min_weight: float = 0.0  # ε: experts whose Gumbel-softmax weight is below ε are skipped (0: none)

    def __post_init__(self) -> None:
        check_choice("HTDConfig.variant", self.variant, VARIANTS)
        check_choice("HTDConfig.assignment", self.assignment, ASSIGNMENTS)
        check_choice("HTDConfig.weighting", self.weighting, WEIGHTINGS)
        check_choice("HTDConfig.precision", self.precision, PRECISIONS)
        if not 0.0 <= self.min_weight < 1.0:
            raise ValueError(f"HTDConfig.min_weight must lie in [0, 1), got {self.min_weight}")
        check_positive(self, "lambda_td", "num_groups", "tau_end", "anneal_epochs", "kmeans_iterations")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"HTDConfig.gamma must lie in [0, 1], got {self.gamma}")
        if self.expert_hidden is not None and self.expert_hidden < 1:
            raise ValueError(f"HTDConfig.expert_hidden must be positive or None, got {self.expert_hidden}")


# --------------------------------------------------------------------------------------------------
# Pure losses
# --------------------------------------------------------------------------------------------------


def group_prototypes(representation: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """P = D⁻¹ Zᵀ E: each group's mean row (num_groups, d) of ``representation`` (n, d); zero if empty."""
    sums = representation.new_zeros(num_groups, representation.shape[1]).index_add(0, groups, representation)
    sizes = torch.bincount(groups, minlength=num_groups).clamp_(min=1)
    return sums / sizes.unsqueeze(1).to(representation.dtype)


def group_topology_loss(
    teacher_repr: torch.Tensor,
    student_repr: torch.Tensor,
    groups: torch.Tensor,
    num_groups: int,
    pairs: str = "prototype_entity",
    prototype_grad: bool = False,
) -> torch.Tensor:
    """L_G: the group-level topology of entities (n, d_t) / (n, d_s) with ``groups`` (n,) in [0, num_groups).

    ``pairs="prototype_entity"``: ‖cos(P^t, T) − cos(P^s, S)‖²_F over (num_groups, n);
    ``pairs="prototype_prototype"``: ‖cos(P^t, P^t) − cos(P^s, P^s)‖²_F over (num_groups, num_groups).
    P^s is detached unless ``prototype_grad``.
    """
    check_choice("pairs", pairs, ("prototype_entity", "prototype_prototype"))
    teacher_protos = group_prototypes(teacher_repr.detach(), groups, num_groups)
    student_protos = group_prototypes(student_repr, groups, num_groups)
    if not prototype_grad:
        student_protos = student_protos.detach()
    if pairs == "prototype_prototype":
        return topology_loss(teacher_protos, student_protos)
    teacher_sim = cosine_matrix(teacher_protos, teacher_repr.detach())
    return (teacher_sim - cosine_matrix(student_protos, student_repr)).square().sum()


def within_group_tiles(
    groups: torch.Tensor, num_groups: int, tile: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A block-diagonal layout of the same-group pairs of n entities.

    Entities are sorted by group; each group is cut into tiles of ``tile`` slots. Returns ``index``
    (num_tiles, tile): the entity in each slot, n for an empty slot; and the tile pairs ``a``, ``b`` (P,) of
    the same group with a ≤ b, with ``weight`` (P,) 1 on the diagonal and 2 off it (the pair (b, a) is the
    transpose of (a, b)). Σ over pairs of weight × (tile_a × tile_b block) covers every same-group (i, j)
    exactly once.
    """
    n, device = len(groups), groups.device
    order = torch.argsort(groups, stable=True)
    sizes = torch.bincount(groups, minlength=num_groups)
    ends = sizes.cumsum(0)
    tiles = -(-sizes // tile)  # per group
    group_ids = torch.arange(num_groups, device=device)
    tile_group = torch.repeat_interleave(group_ids, tiles)
    first_tile = tiles.cumsum(0) - tiles
    rank = torch.arange(len(tile_group), device=device) - first_tile[tile_group]
    position = (ends - sizes)[tile_group, None] + rank[:, None] * tile + torch.arange(tile, device=device)
    inside = position < ends[tile_group, None]
    index = torch.where(inside, order[position.clamp(max=n - 1)], n)
    pair_counts = tiles * tiles
    pair_group = torch.repeat_interleave(group_ids, pair_counts)
    first_pair = pair_counts.cumsum(0) - pair_counts
    pair_rank = torch.arange(len(pair_group), device=device) - first_pair[pair_group]
    local_a, local_b = pair_rank // tiles[pair_group], pair_rank % tiles[pair_group]
    upper = local_a <= local_b
    a = (first_tile[pair_group] + local_a)[upper]
    b = (first_tile[pair_group] + local_b)[upper]
    weight = torch.where(a == b, 1.0, 2.0)
    return index, a, b, weight


def tile_sizes(sizes: torch.Tensor, minimum: int = 32, maximum: int = 512) -> torch.Tensor:
    """Per group of ``sizes`` members: the power of two nearest above size / 4, within [minimum, maximum].

    Small groups fit one tile; a large group is cut into about four tiles, so that its (at most 10) tile
    pairs are few large products and copying them costs little next to multiplying them.
    """
    quarter = (-(-sizes // 4)).clamp(min=1).double()
    return torch.exp2(torch.ceil(torch.log2(quarter))).long().clamp(minimum, maximum)


def entity_topology_loss(
    teacher_repr: torch.Tensor,
    student_repr: torch.Tensor,
    groups: torch.Tensor,
    num_groups: int,
    positive_pairs: bool = True,
) -> torch.Tensor:
    """L_E = Σ_ij [z_i = z_j] [A^t_ij > 0 if ``positive_pairs``] (A^t_ij − A^s_ij)², A = cosine similarities.

    ``teacher_repr`` (n, d_t), ``student_repr`` (n, d_s), ``groups`` (n,) in [0, num_groups). Equal to
    ``topology_loss(teacher_repr, student_repr, mask=Z Zᵀ ∧ (A^t > 0))``, computed over same-group tiles only
    (one batched product per tile size, see :func:`tile_sizes`).
    """
    n = len(groups)

    def padded_unit(representation: torch.Tensor) -> torch.Tensor:
        unit = F.normalize(representation, dim=1)  # row n: a zero row for empty slots (cosine 0)
        return torch.cat([unit, unit.new_zeros(1, unit.shape[1])])

    with torch.no_grad():
        teacher_unit = padded_unit(teacher_repr)
    student_unit = padded_unit(student_repr)
    sizes = torch.bincount(groups, minlength=num_groups)
    group_tile = tile_sizes(sizes)
    entity_tile = group_tile[groups]
    loss = student_unit.new_zeros(())
    for tile in torch.unique(group_tile[sizes > 0]).tolist():  # a handful of tile sizes, not entities
        members = torch.nonzero(entity_tile == tile).squeeze(1)
        local, a, b, weight = within_group_tiles(groups[members], num_groups, tile)
        index = torch.cat([members, members.new_full((1,), n)])[local]

        root = weight.to(student_unit.dtype).sqrt()[:, None, None]  # √w: off-diagonal tile pairs count twice

        def tile_pairs(unit: torch.Tensor, index=index, a=a, b=b, tile=tile, root=root) -> tuple[torch.Tensor, ...]:
            """The left tiles of every pair scaled by √w, and the right tiles transposed."""
            # index_select, not advanced indexing: its backward (index_add) is deterministic on CPU.
            tiles = unit.index_select(0, index.reshape(-1)).view(len(index), tile, -1)
            return tiles.index_select(0, a) * root, tiles.index_select(0, b).transpose(1, 2)

        with torch.no_grad():
            teacher_sim = torch.bmm(*tile_pairs(teacher_unit))  # √w A^t
            # [A^t > 0] as 0/1 floats: masking with a bool tensor is ~20× slower on CPU than a product.
            keep = teacher_sim.sign().clamp_(min=0) if positive_pairs else None
        student_sim = torch.bmm(*tile_pairs(student_unit))  # √w A^s
        loss = loss + MaskedSquaredError.apply(student_sim, teacher_sim, keep)
    return loss


class MaskedSquaredError(torch.autograd.Function):
    """Σ keep ⊙ (s − t)² for blocks s, t (P, c, c) and a 0/1 float ``keep`` of the same shape (None keeps all).

    The same value and gradient (2 keep ⊙ (s − t), for s) as the plain expression with one temporary
    (P, c, c) tensor instead of several: these blocks are HTD's largest tensors, and on a CPU each
    temporary costs a pass over memory.
    """

    @staticmethod
    def forward(ctx, student_sim, teacher_sim, keep):  # noqa: ANN001, ANN205 (autograd API)
        kept = torch.sub(student_sim, teacher_sim)
        if keep is not None:
            kept.mul_(keep)
        ctx.save_for_backward(kept)
        return torch.dot(kept.reshape(-1), kept.reshape(-1))

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        (kept,) = ctx.saved_tensors
        return kept * (2 * grad), None, None


def kmeans(
    points: torch.Tensor, k: int, generator: torch.Generator, iterations: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean K-means of ``points`` (n, d): k-means++ seeding then Lloyd iterations until stable.

    Returns the assignments (n,) and centroids (k, d). Every random draw uses ``generator`` (CPU), so the
    result is a function of the points and the generator's state. An emptied cluster keeps its centroid.
    """
    points = points.float()
    n = len(points)
    if k > n:
        raise ValueError(f"k-means with k={k} needs at least k points, got {n}")
    squared = points.square().sum(1)

    def distances(centroids: torch.Tensor) -> torch.Tensor:
        return (squared[:, None] - 2 * points @ centroids.T + centroids.square().sum(1)).clamp_(min=0)

    chosen = [int(torch.randint(n, (1,), generator=generator))]
    closest = distances(points[chosen]).squeeze(1)
    for _ in range(1, k):  # k-means++: the next seed with P ∝ squared distance to the nearest seed
        weights = closest if bool(closest.sum() > 0) else torch.ones_like(closest)
        chosen.append(int(torch.multinomial(weights.cpu(), 1, generator=generator)))
        closest = torch.minimum(closest, distances(points[chosen[-1:]]).squeeze(1))
    centroids = points[chosen]
    assignment = distances(centroids).argmin(1)
    for _ in range(iterations):
        sums = torch.zeros_like(centroids).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=k).unsqueeze(1)
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        updated = distances(centroids).argmin(1)
        if torch.equal(updated, assignment):
            break
        assignment = updated
    return assignment, centroids


# --------------------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------------------


class HTD(DistillLoss):
    Config = HTDConfig

    def __init__(
        self, config: HTDConfig, teacher: TeacherOutputs, split: Split, student_repr_dim: int, seed: int = 0
    ) -> None:
        super().__init__(seed)
        self.config = config
        self.last_terms: dict[str, torch.Tensor] = {}  # the unweighted L_G, L_E, L_GA of the last batch
        d_s, d_t = student_repr_dim, teacher.user_repr.shape[1]
        hidden = config.expert_hidden or (d_s + d_t) // 2  # the authors' f_k, whatever φ
        self.register_buffer("user_repr", teacher.user_repr, persistent=False)
        self.register_buffer("item_repr", teacher.item_repr, persistent=False)
        if config.assignment == "adaptive":
            de_config = DEConfig(num_experts=config.num_groups, expert_hidden=hidden, selection="gumbel",
                                 tau_end=config.tau_end, anneal_epochs=config.anneal_epochs,
                                 precision=config.precision, min_weight=config.min_weight)
            self.de = DE(de_config, teacher, split, student_repr_dim, seed)
        else:
            init = torch.Generator().manual_seed(seed)
            self.experts = nn.ModuleDict(
                {e: ExpertBank(config.num_groups, (d_s, hidden, d_t), init, config.precision) for e in ENTITIES}
            )
            user_groups, _ = kmeans(teacher.user_repr, config.num_groups, init, config.kmeans_iterations)
            item_groups, _ = kmeans(teacher.item_repr, config.num_groups, init, config.kmeans_iterations)
            self.register_buffer("user_groups", user_groups, persistent=False)
            self.register_buffer("item_groups", item_groups, persistent=False)

    @property
    def tau(self) -> float | None:
        """The Gumbel-softmax temperature of L_GA now (None for the fixed K-means groups)."""
        return self.de.tau if self.config.assignment == "adaptive" else None

    def on_epoch_start(self, epoch: int, generator: torch.Generator) -> None:
        super().on_epoch_start(epoch, generator)
        if self.config.assignment == "adaptive":
            self.de.on_epoch_start(epoch, generator)

    @torch.no_grad()
    def groups(self, entity: str, ids: torch.Tensor) -> torch.Tensor:
        """z_x for the entities ``ids``: argmax_k α^x_k (adaptive) or the K-means cluster, in [0, K)."""
        if self.config.assignment == "kmeans":
            return (self.user_groups if entity == "user" else self.item_groups)[ids]
        teacher_repr = (self.user_repr if entity == "user" else self.item_repr)[ids]
        return self.de.alpha(entity, teacher_repr).argmax(dim=1)

    def group_map(self, entity: str = "user") -> torch.Tensor:
        """The group of every user (or item) now, a CPU (U,) or (I,) tensor."""
        check_choice("entity", entity, ENTITIES)
        table = self.user_repr if entity == "user" else self.item_repr
        return self.groups(entity, torch.arange(len(table), device=table.device)).cpu()

    def assign(
        self, entity: str, ids: torch.Tensor, student_repr: torch.Tensor, teacher_repr: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The groups z_x (no gradient) and L_GA over the entities ``ids``.

        Adaptive: z_x = argmax_k α^x_k and L_GA is DE's Gumbel-softmax mixture over the same α^x (computed
        once for both). K-means: the fixed cluster, and L_GA regresses through that group's expert.
        """
        if self.config.assignment == "adaptive":
            alpha = self.de.alpha(entity, teacher_repr)
            groups = alpha.detach().argmax(dim=1)
            return groups, de_loss(teacher_repr, self.de.mix(entity, alpha, student_repr))
        groups = (self.user_groups if entity == "user" else self.item_groups)[ids]
        selection = F.one_hot(groups, self.config.num_groups).to(student_repr.dtype)
        return groups, de_loss(teacher_repr, self.experts[entity](student_repr, selection))

    def forward(self, student: Recommender, batch: Batch) -> dict[str, torch.Tensor]:
        config, num_groups = self.config, 2 * self.config.num_groups
        users = torch.unique(batch.users)
        items = torch.unique(torch.cat([batch.pos, batch.neg.reshape(-1)]))
        student_users, student_items = student.user_repr(users), student.item_repr(items)
        teacher_users, teacher_items = self.user_repr.index_select(0, users), self.item_repr.index_select(0, items)
        user_groups, user_assignment = self.assign("user", users, student_users, teacher_users)
        item_groups, item_assignment = self.assign("item", items, student_items, teacher_items)
        assignment = user_assignment + item_assignment

        teacher_repr = torch.cat([teacher_users, teacher_items])
        student_repr = torch.cat([student_users, student_items])
        groups = torch.cat([user_groups, item_groups + config.num_groups])  # users and items never share
        zero = student_repr.new_zeros(())
        group_level = entity_level = zero
        if config.variant != "entity_only":
            pairs = "prototype_prototype" if config.variant == "group_pp" else "prototype_entity"
            prototype_grad = config.prototype_grad or config.variant == "group_pp"
            group_level = group_topology_loss(
                teacher_repr, student_repr, groups, num_groups, pairs, prototype_grad
            )
        if config.variant != "group_only":
            entity_level = entity_topology_loss(
                teacher_repr, student_repr, groups, num_groups, config.positive_pairs
            )

        if config.weighting == "code":
            total = config.gamma * (group_level + entity_level) + (1 - config.gamma) * assignment
        else:
            total = config.gamma * group_level + (1 - config.gamma) * entity_level + assignment
        self.last_terms = {"group": group_level.detach(), "entity": entity_level.detach(),
                           "assignment": assignment.detach()}
        return {"htd": config.lambda_td * total}
