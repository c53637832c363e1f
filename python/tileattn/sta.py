"""`sta_attention`: a drop-in for F.scaled_dot_product_attention on video tokens, backed by the STA kernel; `tile` and
`untile` convert between the natural and the tile-major token order."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch

from . import ops

Triple = Tuple[int, int, int]


def _triple(value, name: str) -> Triple:
    try:
        t = tuple(int(v) for v in value)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of three ints, got {value!r}") from None
    if len(t) != 3 or min(t) < 1:
        raise ValueError(f"{name} must be three positive ints, got {value!r}")
    return t  # type: ignore[return-value]


@dataclass(frozen=True)
class STAConfig:
    """Shape, tile, windows and text length of one attention call site, carried once."""
    video_shape: Triple
    window: Union[Triple, Sequence[Triple]] = (3, 3, 3)
    tile: Triple = (6, 8, 8)
    text_len: int = 0
    layout: str = "natural"

    @property
    def grid(self) -> Triple:
        return _grid(self.video_shape, self.tile)

    def __call__(self, q, k, v, text_valid=None, scale=None, return_lse: bool = False):
        """sta_attention with this configuration."""
        return sta_attention(q, k, v, self.video_shape, self.window, self.tile, self.text_len, text_valid,
                             self.layout, scale, return_lse)


def _grid(video_shape: Triple, tile_shape: Triple) -> Triple:
    return tuple(-(-v // t) for v, t in zip(video_shape, tile_shape))  # type: ignore[return-value]


def _tile_major_order(video_shape: Triple, tile_shape: Triple, text_len: int, device) -> torch.Tensor:
    """order[i] = natural index of the token at tile-major position i (video tokens, then text unchanged)."""
    T, H, W = video_shape
    tt, th, tw = tile_shape
    idx = torch.arange(T * H * W, device=device).view(T, H, W)
    gt, gh, gw = _grid(video_shape, tile_shape)
    pieces = []
    for a in range(gt):
        for b in range(gh):
            for c in range(gw):
                pieces.append(idx[a * tt:(a + 1) * tt, b * th:(b + 1) * th, c * tw:(c + 1) * tw].reshape(-1))
    pieces.append(torch.arange(T * H * W, T * H * W + text_len, device=device))
    return torch.cat(pieces)


def tile(x: torch.Tensor, video_shape, tile_shape=(6, 8, 8), text_len: int = 0) -> torch.Tensor:
    """[..., S, D] natural token order -> tile-major (tokens of a tile contiguous; text stays last)."""
    order = _tile_major_order(_triple(video_shape, "video_shape"), _triple(tile_shape, "tile"), text_len, x.device)
    if x.shape[-2] != order.numel():
        raise ValueError(f"x has {x.shape[-2]} tokens, video_shape/text_len give {order.numel()}")
    return x.index_select(-2, order)


def untile(x: torch.Tensor, video_shape, tile_shape=(6, 8, 8), text_len: int = 0) -> torch.Tensor:
    """Inverse of `tile`."""
    order = _tile_major_order(_triple(video_shape, "video_shape"), _triple(tile_shape, "tile"), text_len, x.device)
    if x.shape[-2] != order.numel():
        raise ValueError(f"x has {x.shape[-2]} tokens, video_shape/text_len give {order.numel()}")
    out = torch.empty_like(x)
    out.index_copy_(-2, order, x)
    return out


def _flat_windows(window):
    """Flattened window table: [] for dense, one triple for all heads, or one per head. The library checks the
    windows against the tile grid and the head count (errors name windows[h])."""
    if window is None:
        return []
    if len(window) == 3 and all(isinstance(x, int) for x in window):
        return list(_triple(window, "window"))
    return [x for i, w in enumerate(window) for x in _triple(w, f"window[{i}]")]


def sta_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, video_shape, window=(3, 3, 3),
                  tile=(6, 8, 8), text_len: int = 0, text_valid: Optional[torch.Tensor] = None,
                  layout: str = "natural", scale: Optional[float] = None, return_lse: bool = False):
    """Sliding Tile Attention, a drop-in for F.scaled_dot_product_attention on video tokens.

    q/k/v: [B, heads, S, D] (SDPA's layout, any strides with D contiguous; k/v may have fewer heads: GQA), S = T*H*W
    video tokens (row-major (t, h, w), or tile-major with layout="tile_major") followed by text_len text tokens.
    window: (wt, wh, ww) in tiles for every head, one triple per query head, or None for dense attention.
    text_valid: optional int32 [B] on q's device: valid text tokens per sample (the rest get no weight).
    Returns O [B, heads, S, D] (and the fp32 log-sum-exp [B, heads, S] if return_lse).

    CUDA tensors (bf16/fp16) run the sm_90a kernels. CPU tensors (fp32, fp64, bf16, fp16) run the C++ reference with
    the same semantics, forward and backward: fp32 arithmetic (fp64 sums for fp64 inputs), output in q's dtype.
    """
    video_shape = _triple(video_shape, "video_shape")
    tile_shape = _triple(tile, "tile")
    ops.check_qkv(q, k, v, allow_cpu=True)
    n_tokens = math.prod(video_shape) + int(text_len)
    if q.shape[2] != n_tokens:
        raise ValueError(f"q has {q.shape[2]} tokens but video_shape {video_shape} + text_len {text_len} = {n_tokens}")
    if layout not in ("natural", "tile_major"):
        raise ValueError(f"layout must be 'natural' or 'tile_major', got {layout!r}")
    if text_valid is not None:
        if (not isinstance(text_valid, torch.Tensor) or text_valid.dtype != torch.int32
                or text_valid.device != q.device or tuple(text_valid.shape) != (q.shape[0],)):
            raise ValueError("text_valid must be an int32 tensor of shape [batch] on q's device")
        text_valid = text_valid.contiguous()
    out, lse = ops.sta_forward(q, k, v, text_valid, list(video_shape), list(tile_shape), _flat_windows(window),
                               int(text_len),
                               layout, float(scale or 0.0))
    return (out, lse) if return_lse else out
