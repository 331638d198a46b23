"""Swapping convolutions for ``Dcls2d`` following a recipe, and freezing them back into dense convs.

A live ``Dcls2d`` rebuilds its dense kernel from weights and positions on every forward: slow, and
gigabytes of temporaries on ResNet50. After the weights are loaded nothing changes any more, so
``freeze`` computes each kernel once and puts an ordinary ``nn.Conv2d`` holding it in place; the
convolution itself is the same ``F.conv2d`` call. The kernel is not built DCLS's way (a product over
every cell and every tap) but by scattering each tap onto its 4 cells: the same values within float32
rounding, in milliseconds instead of seconds per layer.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

import torch
from torch import nn

from .zoo import CONV_3X3, DEPTHWISE, DEPTHWISE_7X7, DEPTHWISE_SQUARE, NAME_PATTERN, DclsRecipe


def _depthwise(c: nn.Conv2d) -> bool:
    return c.groups == c.in_channels and c.in_channels > 1


RULES: dict[str, Callable[[nn.Conv2d], bool]] = {
    DEPTHWISE: _depthwise,
    DEPTHWISE_SQUARE: lambda c: _depthwise(c) and c.in_channels == c.out_channels,
    DEPTHWISE_7X7: lambda c: _depthwise(c) and c.in_channels == c.out_channels and c.kernel_size == (7, 7),
    CONV_3X3: lambda c: c.kernel_size == (3, 3),
    NAME_PATTERN: lambda c: True,  # the recipe's pattern selects
}


def select(model: nn.Module, recipe: DclsRecipe) -> list[tuple[str, nn.Conv2d]]:
    """The convolutions ``recipe`` replaces, as ``(name, module)`` in module order.

    Raises:
        ValueError: an unknown rule, a pattern that is not a regular expression, or the rule ``pattern``
            without one.
    """
    if recipe.rule not in RULES:
        raise ValueError(f"unknown DCLS rule {recipe.rule!r}; choose one of {', '.join(RULES)}")
    if recipe.rule == NAME_PATTERN and not recipe.pattern:
        raise ValueError(f"the DCLS rule {NAME_PATTERN!r} needs a pattern")
    try:
        name_ok = re.compile(recipe.pattern).fullmatch if recipe.pattern else (lambda n: True)
    except re.error as e:
        raise ValueError(f"the DCLS pattern {recipe.pattern!r} is not a regular expression ({e})") from None
    rule = RULES[recipe.rule]
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and rule(m) and name_ok(n)]


class _FallbackNotice(logging.Filter):
    """Drops the notice ``Dcls2d.__init__`` logs through the root logger on every layer, that it falls back to
    torch's conv2d (expected here, only noise for users). A filter, not ``logging.disable``: that is process-wide
    state, and two threads building models at once could leave every warning switched off."""

    def filter(self, record: logging.LogRecord) -> bool:
        import DCLS

        from_dcls = record.pathname.startswith(os.path.dirname(DCLS.__file__))
        return not (from_dcls and any(w in record.getMessage() for w in ("conv2d", "ImplicitGEMM")))


_FALLBACK_NOTICE = _FallbackNotice()


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
    paper's helpers do (one P per stage; a new one whenever the channel count changes), unless the
    recipe's ``share_positions`` is ``layer``.
    ``init=False`` skips DCLS's random initialisation: weights, positions and biases are then
    uninitialised memory, for a caller that loads every one of them strictly right after.
    """
    from DCLS.construct.modules import Dcls2d

    make = _dcls2d_class(init)
    targets = select(model, recipe)
    if not targets:
        restricted = f" with the pattern {recipe.pattern!r}" if recipe.pattern else ""
        raise ValueError(f"DCLS rule {recipe.rule!r}{restricted} selects no convolution in {type(model).__name__}")
    share = recipe.share_positions == "stage"
    dks = recipe.dilated_kernel_size
    shared_p = None
    logging.root.addFilter(_FALLBACK_NOTICE)  # once: addFilter ignores a filter already there
    for name, conv in targets:
        layer = make(conv.in_channels, conv.out_channels, kernel_count=recipe.kernel_count,
                     stride=conv.stride, padding=dks // 2, dilated_kernel_size=dks,
                     groups=conv.groups, bias=conv.bias is not None, version=recipe.version,
                     use_implicit_gemm=False)
        layer.__class__ = Dcls2d  # the very class the checkpoint's layers were, whichever way it was built
        if share and shared_p is not None and shared_p.shape == layer.P.shape:
            layer.P = shared_p
        shared_p = layer.P
        _set_module(model, name, layer)
    return [n for n, _ in targets]


def dcls_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every live ``Dcls2d`` of ``model``, as ``(name, module)``."""
    from DCLS.construct.modules import Dcls2d

    return [(n, m) for n, m in model.named_modules() if isinstance(m, Dcls2d)]


def kernel_shapes(model: nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``name -> (shape, dtype)`` of the dense kernel each live ``Dcls2d`` of ``model`` freezes into."""
    return {n: ((m.out_channels, m.in_channels // m.groups, *m.dilated_kernel_size), m.weight.dtype)
            for n, m in dcls_layers(model)}


def _axis(pos: torch.Tensor, size: int):
    """``floor(p)`` (a coordinate touches it and the cell after) and whether each of the two is in the window.

    NaN compares False, so a NaN position is never inside (``taps`` marks its pair as spoiled).
    """
    low = pos.floor()
    return low, ((low >= 0) & (low < size), (low >= -1) & (low < size - 1))


def _v0_corners(P: torch.Tensor, dks: tuple[int, int]):
    """Bilinear weights of each tap on its 4 cells, evaluated exactly as ``ConstructKernel2d.forward_v0``.

    v0 reads ``P[0]`` as the row offset and ``P[1]`` as the column offset. Each coefficient is the same
    float expression DCLS evaluates for that cell (``1 + r1*r2 - r1 - r2`` rather than ``(1-r1)(1-r2)``),
    so every tap's contribution is bit-identical; only the order of summing taps may differ. A cell
    beyond the window gets 0 (a product with 1.0 leaves the others exact).
    """
    row, col = P[0] + dks[0] // 2, P[1] + dks[1] // 2
    row_low, r_in = _axis(row, dks[0])
    col_low, c_in = _axis(col, dks[1])
    (m_r0, m_r1), (m_c0, m_c1) = [m.to(P.dtype) for m in r_in], [m.to(P.dtype) for m in c_in]
    r1, r2 = row - row_low, col - col_low
    r12 = r1 * r2
    coefs = ((((1 + r12) - r1) - r2) * (m_r0 * m_c0), (r2 - r12) * (m_r0 * m_c1),
             (r1 - r12) * (m_r1 * m_c0), r12 * (m_r1 * m_c1))
    return row_low, col_low, coefs


def _v1_corners(P: torch.Tensor, dks: tuple[int, int]):
    """Normalised triangle weights of each tap on its 4 cells, as ``ConstructKernel2d.forward_v1``.

    v1 reads ``P[0]`` as the column offset and ``P[1]`` as the row offset (the opposite of v0), and
    divides by the sum of the tap's weights inside the window plus 1e-7: a tap partly beyond the border
    keeps its full mass on the cells left, a tap wholly beyond it vanishes.
    """
    col, row = P[0] + dks[0] // 2, P[1] + dks[1] // 2
    row_low, r_in = _axis(row, dks[0])
    col_low, c_in = _axis(col, dks[1])
    # DCLS computes (cell - p) as here; beyond floor(p) and floor(p) + 1 the triangle is exactly 0, and
    # an infinite position (inf - inf is NaN here) lies beyond the window, as in DCLS
    wr = [torch.where(i, (1 - (r - row).abs()).relu(), 0.0) for r, i in zip((row_low, row_low + 1), r_in)]
    wc = [torch.where(i, (1 - (c - col).abs()).relu(), 0.0) for c, i in zip((col_low, col_low + 1), c_in)]
    tri = (wc[0] * wr[0], wc[1] * wr[0], wc[0] * wr[1], wc[1] * wr[1])
    total = tri[0] + tri[1] + tri[2] + tri[3] + 1e-7
    return row_low, col_low, tuple(t / total for t in tri)


def _cells(low: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    """(..., 2): flat offsets of the cells ``floor(p)`` and ``floor(p) + 1`` along one axis.

    A cell beyond the window carries a 0 weight: any cell inside does as its target, NaN included.
    """
    return torch.stack((low, low + 1), -1).clamp_(0, size - 1).nan_to_num_(0.0).long().mul_(stride)


class Taps(NamedTuple):
    """Where a layer's taps land and with which weight-free coefficients: everything that depends on positions.

    Layers sharing one ``P`` (a stage of the study's models) share one ``Taps``.
    """

    index: torch.Tensor  # (out, in/groups, count, 4): flat offsets of each tap's 4 cells in the kernel
    coefs: torch.Tensor  # (out, in/groups, count, 4): their coefficients, 0 for a cell beyond the window
    spoiled: Optional[torch.Tensor]  # (out, in/groups): NaN where a position spoils the pair; None if none does
    shape: tuple[int, int, int, int]  # (out, in/groups, *dks)
    channels_last: bool


@torch.no_grad()
def taps(P: torch.Tensor, version: str, dilated_kernel_size: tuple[int, int], channels_last: bool = False) -> Taps:
    """The positions' part of ``construct_kernel``: cells and coefficients of every tap, as DCLS computes them."""
    if version not in ("v0", "v1"):
        raise ValueError(f"DCLS version {version!r} cannot be frozen (only v0 and v1)")
    (d0, d1), (_, out, in_g, count) = tuple(dilated_kernel_size), P.shape
    row_low, col_low, coefs = (_v0_corners if version == "v0" else _v1_corners)(P, (d0, d1))
    # flat offsets of (out, in, row, col) in the (out, in, d0, d1) or (out, d0, d1, in) layout
    so, si, sr, sc = (d0 * d1 * in_g, 1, d1 * in_g, in_g) if channels_last else (d0 * d1 * in_g, d0 * d1, d1, 1)
    pair = (torch.arange(out, device=P.device).view(out, 1, 1, 1) * so
            + torch.arange(in_g, device=P.device).view(1, in_g, 1, 1) * si)
    # (r0 c0, r0 c1, r1 c0, r1 c1), the coefficients' order, written at once by broadcasting: the index is
    # the largest temporary of a freeze, and a layer's scatter then walks the kernel once, not once per corner
    index = ((pair + _cells(row_low, d0, sr)).unsqueeze(-1) + _cells(col_low, d1, sc).unsqueeze(-2))
    # DCLS's dense product spreads a non-finite position over the pair's whole kernel (v1: NaN only; an
    # infinite position lies beyond the window there)
    bad = (P * 0) if version == "v0" else torch.where(P.isnan(), P, 0.0)
    spoiled = bad.sum((0, -1)) if bool(bad.isnan().any()) else None
    return Taps(index.view(out, in_g, count, 4), torch.stack(coefs, -1), spoiled, (out, in_g, d0, d1),
                channels_last)


@torch.no_grad()
def kernel_from_taps(weight: torch.Tensor, t: Taps, out: Optional[torch.Tensor] = None,
                     weight_finite: Optional[bool] = None) -> torch.Tensor:
    """The dense kernel of ``weight`` on the taps ``t``: one product and one scatter.

    ``out``: a zeroed flat buffer of the kernel's size to scatter into (a block of a larger kernel).
    ``weight_finite``: whether every weight is finite, when the caller knows (else it is computed).
    """
    n, in_g, d0, d1 = t.shape
    value = weight.unsqueeze(-1) * t.coefs  # the very product W * K that DCLS takes, cell by cell
    kernel = torch.zeros(n * in_g * d0 * d1, dtype=value.dtype, device=value.device) if out is None else out
    # each tap's contribution is DCLS's to the bit; a cell sums them in another order than DCLS's dense
    # sum, which stays within float32 rounding of the few terms a cell gets
    kernel.scatter_add_(0, t.index.view(-1), value.view(-1))
    kernel = kernel.view(n, d0, d1, in_g).permute(0, 3, 1, 2) if t.channels_last else kernel.view(t.shape)
    # DCLS multiplies every tap by every cell: a non-finite weight spoils its pair's whole kernel
    if weight_finite is None:
        weight_finite = _all_finite(weight)
    if t.spoiled is not None or not weight_finite:
        spoiled = (weight * 0).sum(-1) + (t.spoiled if t.spoiled is not None else 0)
        kernel.add_(spoiled[..., None, None])  # a full pass over the kernel: only when something is spoiled
    return kernel


def _all_finite(x: torch.Tensor) -> bool:
    # NaN and ±inf reach the min or the max: one reduction pass, where isfinite() makes three
    return not x.numel() or bool(torch.stack(torch.aminmax(x)).isfinite().all())


# taps per block of output channels: the temporaries (an int64 index and the coefficients, ~12 bytes a tap
# corner) stay under the C allocator's mmap threshold, so each block reuses the last one's memory instead of
# faulting in fresh pages: ResNet50's largest stage alone would need 63 MB of them
_BLOCK_TAPS = 1 << 21


@torch.no_grad()
def construct_kernels(weights: Sequence[torch.Tensor], P: torch.Tensor, version: str,
                      dilated_kernel_size: tuple[int, int], channels_last: bool = False) -> list[torch.Tensor]:
    """The dense ``(out, in/groups, *dks)`` kernels DCLS builds from each of ``weights`` and shared positions ``P``.

    Each of a pair's ``count`` taps lands on at most 4 neighbouring cells, so a scatter of 4 weighted
    values per tap gives DCLS's result in O(out*in*count) work and memory, on the tensors' device.
    Positions are not clamped (DCLS's construction does not clamp either); cells beyond the window are
    dropped. Equal to ``ConstructKernel2d`` within float32 rounding of the per-cell sums.
    The layers of a stage share one ``P``: its taps are computed once for all of them, block by block of
    output channels. ``channels_last`` lays the results out in that memory format, so that no copy converts
    them later.
    """
    (d0, d1), (_, out, in_g, count) = tuple(dilated_kernel_size), P.shape
    cells = in_g * d0 * d1  # an output channel's block of the kernel is contiguous in either layout
    flats = [torch.zeros(out * cells, dtype=w.dtype, device=w.device) for w in weights]
    finite = [_all_finite(w) for w in weights]
    step = max(1, _BLOCK_TAPS // (in_g * count * 4))
    for start in range(0, out, step):
        stop = min(out, start + step)
        t = taps(P[:, start:stop], version, (d0, d1), channels_last)
        for w, flat, w_finite in zip(weights, flats, finite):
            kernel_from_taps(w[start:stop], t, flat[start * cells:stop * cells], w_finite)
    shape = (out, d0, d1, in_g) if channels_last else (out, in_g, d0, d1)
    return [f.view(shape).permute(0, 3, 1, 2) if channels_last else f.view(shape) for f in flats]


@torch.no_grad()
def construct_kernel(weight: torch.Tensor, P: torch.Tensor, version: str, dilated_kernel_size: tuple[int, int],
                     channels_last: bool = False) -> torch.Tensor:
    """The dense kernel of one layer: ``construct_kernels`` of ``[weight]``."""
    return construct_kernels([weight], P, version, dilated_kernel_size, channels_last)[0]


@torch.no_grad()
def dense_kernel(layer: nn.Module, channels_last: bool = False) -> torch.Tensor:
    """The kernel a live ``Dcls2d`` convolves with, computed directly (see ``construct_kernel``)."""
    return construct_kernel(layer.weight, layer.P, layer.version, layer.dilated_kernel_size, channels_last)


@torch.no_grad()
def reference_kernel(layer: nn.Module) -> torch.Tensor:
    """The kernel as DCLS's own ``ConstructKernel2d`` builds it: slow, the reference ``dense_kernel`` is held to."""
    return layer.DCK(layer.weight, layer.P, layer.SIG).detach().clone()


def _finite_by_bound(weight: torch.Tensor, P: torch.Tensor) -> bool:
    """Whether the kernel of ``weight`` on positions ``P`` is finite, known without reading it.

    Every coefficient lies in [0, 1] (v0: products of fractions, v1: a share of a sum), and a cell takes at
    most one corner of each of the ``count`` taps, so |cell| <= count * max|w|: finite weights and positions
    with that bound below float's maximum (halved, for the rounding of the sums) give a finite kernel. NaN
    fails the comparison.
    """
    if not weight.numel():
        return True
    bound = float(weight.detach().abs().amax()) * weight.shape[-1]
    return bound < torch.finfo(weight.dtype).max / 2 and _all_finite(P)


@torch.no_grad()
def freeze(model: nn.Module, channels_last: bool = False,
           kernels: Optional[Mapping[str, torch.Tensor]] = None) -> list[tuple[str, torch.Tensor, bool]]:
    """Replace each ``Dcls2d`` by an ``nn.Conv2d`` with its precomputed kernel.

    Each kernel is computed on its layer's device: move the model first to freeze on the GPU.
    ``channels_last`` builds the kernels in that memory format (for a model that runs in it).
    ``kernels``: every layer's kernel by name, computed earlier from these very weights and positions (the
    frozen-kernel cache's), used as they are instead of being constructed.

    Returns:
        ``(name, kernel, proven)`` of every frozen layer; ``proven``: its kernel is finite by
        ``_finite_by_bound``. A caller that has checked the weights and positions needs to read only the
        unproven kernels (a dense read of ResNet50's 246 MB of kernels costs more than the rest of a load).
    """
    layers = dcls_layers(model)
    for name, layer in layers:
        if layer.padding_mode != "zeros":
            raise ValueError(f"{name}: only zero padding can be frozen")
    stages: dict[tuple, list] = {}  # a stage's layers share one P, so their taps: computed once per stage
    for name, layer in layers:
        stages.setdefault((id(layer.P), layer.version, tuple(layer.dilated_kernel_size)), []).append((name, layer))
    frozen = []
    for stage in stages.values():
        first = stage[0][1]
        if kernels is not None:
            built = [kernels[name] for name, _ in stage]
        else:
            built = construct_kernels([layer.weight for _, layer in stage], first.P, first.version,
                                      first.dilated_kernel_size, channels_last)
        for (name, layer), kernel in zip(stage, built):
            frozen.append((name, kernel, _finite_by_bound(layer.weight, layer.P)))
            _set_module(model, name, _dense_conv(layer, kernel))
    return frozen


def _dense_conv(layer: nn.Module, kernel: torch.Tensor) -> nn.Conv2d:
    # skip_init: no random init of a weight that the kernel replaces at once
    conv = nn.utils.skip_init(nn.Conv2d, layer.in_channels, layer.out_channels, tuple(kernel.shape[-2:]),
                              stride=layer.stride, padding=layer.padding, groups=layer.groups,
                              bias=layer.bias is not None, device=kernel.device, dtype=kernel.dtype)
    conv.weight = nn.Parameter(kernel, requires_grad=layer.weight.requires_grad)
    if layer.bias is not None:
        conv.bias = nn.Parameter(layer.bias.detach().clone(), requires_grad=layer.bias.requires_grad)
    return conv
