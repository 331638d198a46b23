"""Swapping convolutions for ``Dcls2d`` following a recipe, and freezing them back into dense convs.

A live ``Dcls2d`` rebuilds its dense kernel from weights and positions on every forward: slow, and
gigabytes of temporaries on ResNet50. After the weights are loaded nothing changes any more, so
``freeze`` computes each kernel once and puts an ordinary ``nn.Conv2d`` holding it in place; the
convolution itself is the same ``F.conv2d`` call, so outputs are identical.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn

from .zoo import CONV_3X3, DEPTHWISE, DEPTHWISE_7X7, DEPTHWISE_SQUARE, DclsRecipe


def _depthwise(c: nn.Conv2d) -> bool:
    return c.groups == c.in_channels and c.in_channels > 1


RULES: dict[str, Callable[[nn.Conv2d], bool]] = {
    DEPTHWISE: _depthwise,
    DEPTHWISE_SQUARE: lambda c: _depthwise(c) and c.in_channels == c.out_channels,
    DEPTHWISE_7X7: lambda c: _depthwise(c) and c.in_channels == c.out_channels and c.kernel_size == (7, 7),
    CONV_3X3: lambda c: c.kernel_size == (3, 3),
}


@contextmanager
def _quiet_dcls():
    # Dcls2d.__init__ logs through the root logger, on every layer, that it falls back to
    # torch's conv2d on CPU: that is expected here and only noise for users.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def apply_recipe(model: nn.Module, recipe: DclsRecipe) -> list[str]:
    """Replace every conv the recipe's rule selects by a ``Dcls2d``; return the replaced names.

    Consecutive replaced layers with the same position shape share one ``P`` parameter, as the
    paper's helpers do (one P per stage; a new one whenever the channel count changes).
    """
    from DCLS.construct.modules import Dcls2d

    rule = RULES[recipe.rule]
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and rule(m)]
    if not targets:
        raise ValueError(f"DCLS rule {recipe.rule!r} selects no convolution in {type(model).__name__}")
    dks = recipe.dilated_kernel_size
    shared_p = None
    with _quiet_dcls():
        for name, conv in targets:
            layer = Dcls2d(conv.in_channels, conv.out_channels, kernel_count=recipe.kernel_count,
                           stride=conv.stride, padding=dks // 2, dilated_kernel_size=dks,
                           groups=conv.groups, bias=conv.bias is not None, version=recipe.version,
                           use_implicit_gemm=False)
            if shared_p is not None and shared_p.shape == layer.P.shape:
                layer.P = shared_p
            shared_p = layer.P
            _set_module(model, name, layer)
    return [n for n, _ in targets]


def dcls_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from DCLS.construct.modules import Dcls2d

    return [(n, m) for n, m in model.named_modules() if isinstance(m, Dcls2d)]


@torch.no_grad()
def dense_kernel(layer: nn.Module) -> torch.Tensor:
    """The kernel a live ``Dcls2d`` convolves with, built exactly as its forward builds it."""
    return layer.DCK(layer.weight, layer.P, layer.SIG).detach().clone()


@torch.no_grad()
def freeze(model: nn.Module) -> int:
    """Replace each ``Dcls2d`` by an ``nn.Conv2d`` with its precomputed kernel; return how many."""
    layers = dcls_layers(model)
    for name, layer in layers:
        if layer.padding_mode != "zeros":
            raise ValueError(f"{name}: only zero padding can be frozen")
        kernel = dense_kernel(layer)
        conv = nn.Conv2d(layer.in_channels, layer.out_channels, tuple(kernel.shape[-2:]), stride=layer.stride,
                         padding=layer.padding, groups=layer.groups, bias=layer.bias is not None,
                         device=kernel.device, dtype=kernel.dtype)
        conv.weight.copy_(kernel)
        if layer.bias is not None:
            conv.bias.copy_(layer.bias)
        conv.requires_grad_(layer.weight.requires_grad)
        _set_module(model, name, conv)
    return len(layers)
