"""Activation checkpointing for denoisers whose diffusers class has none (ModelScope's UNet3D).

Each matching submodule keeps no activations while training: its forward runs under
``torch.utils.checkpoint`` and is recomputed during backward, the same memory-for-compute trade
that diffusers' ``enable_gradient_checkpointing`` makes for the classes that support it.

The submodule's class is swapped for a subclass whose ``forward`` does this (rather than setting
an instance attribute), so copies of the module behave the same and ``state_dict`` keys do not change.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

_CHECKPOINTED: dict[type, type] = {}


def checkpointed_class(cls: type[nn.Module]) -> type[nn.Module]:
    """``cls`` with a forward that checkpoints itself in training mode (one subclass per class)."""
    if cls in _CHECKPOINTED.values():
        return cls
    if cls not in _CHECKPOINTED:

        def forward(self, *args, **kwargs):
            plain = super(subclass, self).forward
            if self.training and torch.is_grad_enabled():
                return checkpoint(plain, *args, use_reentrant=False, **kwargs)
            return plain(*args, **kwargs)

        subclass = type(f"Checkpointed{cls.__name__}", (cls,), {"forward": forward, "__module__": __name__})
        _CHECKPOINTED[cls] = subclass
    return _CHECKPOINTED[cls]


def checkpoint_submodules(root: nn.Module, classes: tuple[type[nn.Module], ...]) -> int:
    """Checkpoint every submodule of ``root`` that is an instance of ``classes``; returns how many."""
    count = 0
    for module in root.modules():
        if isinstance(module, classes):
            module.__class__ = checkpointed_class(type(module))
            count += 1
    return count


def is_checkpointed(root: nn.Module) -> bool:
    return any(type(module) in _CHECKPOINTED.values() for module in root.modules())
