"""Swapping convolutions for ``Dcls2d`` following a recipe, and freezing them back into dense convs.

A live ``Dcls2d`` rebuilds its dense kernel from weights and positions on every forward: slow, and
gigabytes of temporaries on ResNet50. After the weights are loaded nothing changes any more, so
``freeze`` computes each kernel once and puts an ordinary ``nn.Conv2d`` holding it in place; the
convolution itself is the same ``F.conv2d`` call, so outputs are identical.
"""

from __future__ import annotations

import functools
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


@functools.cache
def _dcls2d_class(init: bool) -> type:
    from DCLS.construct.modules import Dcls2d

    if init:
        return Dcls2d

    class Dcls2dUninitialised(Dcls2d):
        # DCLS draws its random weights and positions in __init__ (most of a ResNet50 build); a checkpoint
        # overwrites them all, so this construction leaves the memory as allocated
        def reset_parameters(self) -> None:
            pass

    return Dcls2dUninitialised


def apply_recipe(model: nn.Module, recipe: DclsRecipe, init: bool = True) -> list[str]:
    """Replace every conv the recipe's rule selects by a ``Dcls2d``; return the replaced names.

    Consecutive replaced layers with the same position shape share one ``P`` parameter, as the
    paper's helpers do (one P per stage; a new one whenever the channel count changes).
    ``init=False`` skips DCLS's random initialisation: weights, positions and biases are then
    uninitialised memory, for a caller that loads every one of them strictly right after.
    """
    from DCLS.construct.modules import Dcls2d

    make = _dcls2d_class(init)
    rule = RULES[recipe.rule]
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and rule(m)]
    if not targets:
        raise ValueError(f"DCLS rule {recipe.rule!r} selects no convolution in {type(model).__name__}")
    dks = recipe.dilated_kernel_size
    shared_p = None
    with _quiet_dcls():
        for name, conv in targets:
            layer = make(conv.in_channels, conv.out_channels, kernel_count=recipe.kernel_count,
                         stride=conv.stride, padding=dks // 2, dilated_kernel_size=dks,
                         groups=conv.groups, bias=conv.bias is not None, version=recipe.version,
                         use_implicit_gemm=False)
            layer.__class__ = Dcls2d  # the very class the checkpoint's layers were, whichever way it was built
            if shared_p is not None and shared_p.shape == layer.P.shape:
                layer.P = shared_p
            shared_p = layer.P
            _set_module(model, name, layer)
    return [n for n, _ in targets]


def dcls_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from DCLS.construct.modules import Dcls2d

    return [(n, m) for n, m in model.named_modules() if isinstance(m, Dcls2d)]


def _axis(pos: torch.Tensor, size: int):
    """The two cells a coordinate can touch (``floor(p)`` and ``floor(p) + 1``) and whether each is in the window.

    NaN compares False, so a NaN position is never inside (``_poison`` accounts for it).
    """
    low = pos.floor()
    return (low, low + 1), ((low >= 0) & (low < size), (low >= -1) & (low < size - 1))


def _v0_corners(P: torch.Tensor, dks: tuple[int, int]):
    """Bilinear weights of each tap on its 4 cells, evaluated exactly as ``ConstructKernel2d.forward_v0``.

    v0 reads ``P[0]`` as the row offset and ``P[1]`` as the column offset. Each coefficient is the same
    float expression DCLS evaluates for that cell (``1 + r1*r2 - r1 - r2`` rather than ``(1-r1)(1-r2)``),
    so every tap's contribution is bit-identical; only the order of summing taps may differ.
    """
    row, col = P[0] + dks[0] // 2, P[1] + dks[1] // 2
    (r0, _), (r_in0, r_in1) = _axis(row, dks[0])
    (c0, _), (c_in0, c_in1) = _axis(col, dks[1])
    r1, r2 = row - r0, col - c0
    r12 = r1 * r2
    coefs = (((1 + r12) - r1) - r2, r2 - r12, r1 - r12, r12)
    inside = (r_in0 & c_in0, r_in0 & c_in1, r_in1 & c_in0, r_in1 & c_in1)
    return r0 * dks[1] + c0, coefs, inside


def _v1_corners(P: torch.Tensor, dks: tuple[int, int]):
    """Normalised triangle weights of each tap on its 4 cells, as ``ConstructKernel2d.forward_v1``.

    v1 reads ``P[0]`` as the column offset and ``P[1]`` as the row offset (the opposite of v0), and
    divides by the sum of the tap's weights inside the window plus 1e-7: a tap partly beyond the border
    keeps its full mass on the cells left, a tap wholly beyond it vanishes.
    """
    col, row = P[0] + dks[0] // 2, P[1] + dks[1] // 2
    rows, r_in = _axis(row, dks[0])
    cols, c_in = _axis(col, dks[1])
    # DCLS computes (cell - p) as here; beyond floor(p) and floor(p) + 1 the triangle is exactly 0
    wr = [torch.where(i, (1 - (r - row).abs()).relu(), 0.0) for r, i in zip(rows, r_in)]
    wc = [torch.where(i, (1 - (c - col).abs()).relu(), 0.0) for c, i in zip(cols, c_in)]
    tri = (wc[0] * wr[0], wc[1] * wr[0], wc[0] * wr[1], wc[1] * wr[1])
    total = tri[0] + tri[1] + tri[2] + tri[3] + 1e-7
    inside = (r_in[0] & c_in[0], r_in[0] & c_in[1], r_in[1] & c_in[0], r_in[1] & c_in[1])
    return rows[0] * dks[1] + cols[0], tuple(t / total for t in tri), inside


def _poison(weight: torch.Tensor, P: torch.Tensor, version: str) -> torch.Tensor:
    """0 per (out, in) pair, NaN where DCLS's dense construction makes that pair's whole kernel non-finite.

    DCLS multiplies every tap by every cell, so one non-finite weight (and, in v0, one non-finite
    position; in v1 a NaN one, an infinite one just lies beyond the border) spoils the pair's kernel.
    """
    bad_p = (P * 0) if version == "v0" else torch.where(P.isnan(), P, 0.0)
    return (weight * 0 + bad_p.sum(0)).sum(-1)


@torch.no_grad()
def construct_kernel(weight: torch.Tensor, P: torch.Tensor, version: str,
                     dilated_kernel_size: tuple[int, int]) -> torch.Tensor:
    """The dense ``(out, in/groups, *dks)`` kernel DCLS builds from ``weight`` and positions ``P``.

    Each of a pair's ``count`` taps lands on at most 4 neighbouring cells, so a scatter of 4 weighted
    values per tap gives DCLS's result in O(out*in*count) work and memory, on the tensors' device.
    Positions are not clamped (DCLS's construction does not clamp either); cells beyond the window are
    dropped. Equal to ``ConstructKernel2d`` within float32 rounding of the per-cell sums.
    """
    if version not in ("v0", "v1"):
        raise ValueError(f"DCLS version {version!r} cannot be frozen (only v0 and v1)")
    dks = tuple(dilated_kernel_size)
    out, in_g, _ = weight.shape
    first, coefs, inside = (_v0_corners if version == "v0" else _v1_corners)(P, dks)
    inside = torch.stack(inside, -1)
    offsets = torch.tensor([0, 1, dks[1], dks[1] + 1], dtype=first.dtype, device=first.device)
    cell = torch.where(inside, first.unsqueeze(-1) + offsets, 0.0).long()
    value = torch.where(inside, weight.unsqueeze(-1) * torch.stack(coefs, -1), 0.0)
    area = dks[0] * dks[1]
    pair = torch.arange(0, out * in_g * area, area, device=weight.device).view(out, in_g, 1, 1)
    kernel = torch.zeros(out * in_g * area, dtype=weight.dtype, device=weight.device)
    # index and values in tap order, so each cell sums its taps in DCLS's order where the scatter is serial
    # (often bit-identical on CPU); any other order stays within float32 rounding of the few terms a cell gets
    kernel.scatter_add_(0, (pair + cell).view(-1), value.view(-1))
    kernel = kernel.view(out, in_g, *dks)
    poison = _poison(weight, P, version)
    # the add is a full pass over the kernel (50 MB on ResNet50's last stage): only when there is NaN to add
    return kernel.add_(poison[..., None, None]) if poison.isnan().any() else kernel


@torch.no_grad()
def dense_kernel(layer: nn.Module) -> torch.Tensor:
    """The kernel a live ``Dcls2d`` convolves with, computed directly (see ``construct_kernel``)."""
    return construct_kernel(layer.weight, layer.P, layer.version, layer.dilated_kernel_size)


@torch.no_grad()
def reference_kernel(layer: nn.Module) -> torch.Tensor:
    """The kernel as DCLS's own ``ConstructKernel2d`` builds it: slow, the reference ``dense_kernel`` is held to."""
    return layer.DCK(layer.weight, layer.P, layer.SIG).detach().clone()


@torch.no_grad()
def freeze(model: nn.Module) -> int:
    """Replace each ``Dcls2d`` by an ``nn.Conv2d`` with its precomputed kernel; return how many.

    Each kernel is computed on its layer's device: move the model first to freeze on the GPU.
    """
    layers = dcls_layers(model)
    for name, layer in layers:
        if layer.padding_mode != "zeros":
            raise ValueError(f"{name}: only zero padding can be frozen")
        kernel = dense_kernel(layer)
        # skip_init: no random init of a weight that the kernel replaces at once
        conv = nn.utils.skip_init(nn.Conv2d, layer.in_channels, layer.out_channels, tuple(kernel.shape[-2:]),
                                  stride=layer.stride, padding=layer.padding, groups=layer.groups,
                                  bias=layer.bias is not None, device=kernel.device, dtype=kernel.dtype)
        conv.weight = nn.Parameter(kernel, requires_grad=layer.weight.requires_grad)
        if layer.bias is not None:
            conv.bias = nn.Parameter(layer.bias.detach().clone(), requires_grad=layer.bias.requires_grad)
        _set_module(model, name, conv)
    return len(layers)
