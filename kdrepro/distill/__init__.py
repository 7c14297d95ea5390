"""Knowledge-distillation methods: the registry and ``build``.

``METHODS`` is the one place a method name is spelled. ``build("de+rrd", teacher, split, 20)`` gives a
:class:`Combined` sum of registered methods (DE-RRD = L_base + λ_DE L_DE + λ_RRD L_RRD), never a separate
implementation. Configs are given per method name, as a config object or a dict of overrides::

    distill = build("de+rrd", teacher_outputs, split, student_repr_dim=20,
                    de={"num_experts": 10}, rrd=CONFIGS["rrd"](sampling="none"))
    fit(ModelConfig("bpr", 20), split, TrainConfig(), distill=distill, seed=0)
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
from torch import nn

from kdrepro.distill.base import DistillLoss
from kdrepro.distill.cd import CD, CDConfig
from kdrepro.distill.dcd import DCD, DCDConfig
from kdrepro.distill.de import DE, DEConfig
from kdrepro.distill.fitnet import FitNet, FitNetConfig
from kdrepro.distill.ftd import FTD, FTDConfig
from kdrepro.distill.hetcomp import HetComp, HetCompConfig
from kdrepro.distill.htd import HTD, HTDConfig
from kdrepro.distill.ir import IR, IRConfig
from kdrepro.distill.phr import PHR, PHRConfig
from kdrepro.distill.rd import RD, RDConfig
from kdrepro.distill.rrd import RRD, RRDConfig

if TYPE_CHECKING:
    from kdrepro.models import Recommender
    from kdrepro.splits import Split
    from kdrepro.types import Batch, TeacherOutputs

# "de+rrd" is DE-RRD, "rrd+ir" is IR-RRD and "ftd+de" is TD's FTD+DE ablation: combinations, not
# separate implementations.
METHODS: dict[str, type[DistillLoss]] = {
    "de": DE, "rrd": RRD, "rd": RD, "cd": CD, "phr": PHR, "ir": IR, "fitnet": FitNet, "ftd": FTD, "htd": HTD,
    "dcd": DCD, "hetcomp": HetComp,
}
CONFIGS = {name: method.Config for name, method in METHODS.items()}


class Combined(nn.ModuleList):
    """The sum of several methods: their named terms merged into one dict, epoch starts forwarded."""

    def forward(self, student: Recommender, batch: Batch) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        for method in self:
            new = method(student, batch)
            clash = terms.keys() & new.keys()
            if clash:
                raise ValueError(f"two combined methods return the same term(s) {sorted(clash)}")
            terms.update(new)
        return terms

    def on_epoch_start(self, epoch: int, generator: torch.Generator) -> None:
        for method in self:
            method.on_epoch_start(epoch, generator)


def parse(spec: str) -> list[str]:
    """The method names of a spec such as ``"de+rrd"``, each checked against the registry."""
    names = [name.strip().lower() for name in spec.split("+")]
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown} in {spec!r}; join names of {sorted(METHODS)} by '+'")
    if len(set(names)) != len(names):
        raise ValueError(f"{spec!r} names a method twice")
    return names


def make_config(name: str, config: object = None) -> object:
    """The config of method ``name``: its defaults, a dict of overrides of them, or a config object."""
    cls = CONFIGS[name]
    if config is None:
        return cls()
    if isinstance(config, dict):
        return dataclasses.replace(cls(), **config)
    if not isinstance(config, cls):
        raise TypeError(f"config for {name!r} must be a {cls.__name__} or a dict of overrides")
    return config


def build(
    spec: str,
    teacher: TeacherOutputs,
    split: Split,
    student_repr_dim: int,
    *,
    seed: int = 0,
    **configs: object,
) -> nn.Module:
    """The distillation module for ``spec`` ("rrd", "de+rrd", …), ready to pass to ``fit(distill=...)``.

    ``configs`` maps a method name of the spec to its config object or a dict of overrides; ``seed``
    fixes the initialisation of the methods' own parameters (DE's experts and selection networks).
    """
    names = parse(spec)
    stray = sorted(set(configs) - set(names))
    if stray:
        raise ValueError(f"configs given for {stray}, which {spec!r} does not include")
    methods = [
        METHODS[name](make_config(name, configs.get(name)), teacher, split, student_repr_dim, seed)
        for name in names
    ]
    by_name = dict(zip(names, methods, strict=True))
    if "rrd" in by_name and "ir" in by_name:  # IR-RRD: IR covers the items of RRD's own per-user draw
        by_name["ir"].share_user_side(by_name["rrd"])
    return methods[0] if len(methods) == 1 else Combined(methods)


__all__ = [
    "CONFIGS", "METHODS", "CD", "CDConfig", "Combined", "DE", "DEConfig", "DistillLoss", "FTD", "FTDConfig",
    "DCD", "DCDConfig", "HetComp", "HetCompConfig",
    "FitNet", "FitNetConfig", "HTD", "HTDConfig", "IR", "IRConfig", "PHR", "PHRConfig", "RD", "RDConfig",
    "RRD", "RRDConfig", "build", "make_config", "parse",
]
