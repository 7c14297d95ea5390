"""Base recommenders behind one contract (:class:`Recommender`) and the ``build`` factory."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from kdrepro.models.base import Recommender
from kdrepro.models.cml import CML
from kdrepro.models.item_ae import ItemAE
from kdrepro.models.lightgcn import LightGCN
from kdrepro.models.mf import MF
from kdrepro.models.neumf import NeuMF
from kdrepro.models.vae import MultVAE
from kdrepro.splits import Split

MODELS = {"bpr": MF, "mf": MF, "neumf": NeuMF, "lightgcn": LightGCN, "cml": CML, "vae": MultVAE, "item_ae": ItemAE}


@dataclass(frozen=True)
class ModelConfig:
    name: str = "bpr"  # one of MODELS
    dim: int = 200  # embedding width (NeuMF: per branch)
    num_layers: int = 3  # LightGCN only

    def to_dict(self) -> dict:
        return asdict(self)


def build(config: ModelConfig, split: Split) -> Recommender:
    """A freshly initialised model for the split's users and items (LightGCN gets its training graph)."""
    if config.name not in MODELS:
        raise ValueError(f"unknown model {config.name!r}; choose one of {sorted(MODELS)}")
    if config.dim < 1:
        raise ValueError(f"dim must be positive, got {config.dim}")
    cls = MODELS[config.name]
    if cls is LightGCN:
        return LightGCN(split.num_users, split.num_items, config.dim, split.train_users, split.train_items,
                        num_layers=config.num_layers)
    if cls in (MultVAE, ItemAE):  # the autoencoders read whole training rows
        return cls(split.num_users, split.num_items, config.dim, split.train_users, split.train_items)
    return cls(split.num_users, split.num_items, config.dim)


__all__ = ["CML", "ItemAE", "MF", "MultVAE", "MODELS", "LightGCN", "ModelConfig", "NeuMF", "Recommender", "build"]
