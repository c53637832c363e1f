"""`sta_attention`: a drop-in for F.scaled_dot_product_attention on video tokens, backed by the STA kernel."""
from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Tuple, Union

import torch

from . import _ffi

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
        return tuple(-(-v // t) for v, t in zip(self.video_shape, self.tile))  # type: ignore[return-value]


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


_DTYPES = {torch.bfloat16: _ffi.DTYPE_BF16, torch.float16: _ffi.DTYPE_FP16}


def _tensor_desc(t: torch.Tensor) -> _ffi.Tensor:
    return _ffi.Tensor(t.data_ptr(), t.stride(0), t.stride(1), t.stride(2))


def sta_forward_raw(q, k, v, out, lse, video_shape: Triple, windows, tile_shape: Triple, text_len: int,
                    text_valid: Optional[torch.Tensor], layout: str, scale: float, stream: int) -> None:
    """Launches the kernel on already-validated tensors (see sta_attention)."""
    B, Hq, S, D = q.shape
    flat = [int(x) for w in windows for x in w]
    win_array = (ctypes.c_int64 * max(1, len(flat)))(*flat)
    args = _ffi.StaForwardArgs()
    args.abi_version = _ffi.ABI_VERSION
    args.dtype = _DTYPES[q.dtype]
    args.layout = _ffi.LAYOUT_NATURAL if layout == "natural" else _ffi.LAYOUT_TILE_MAJOR
    args.batch, args.q_heads, args.kv_heads, args.head_dim = B, Hq, k.shape[1], D
    args.video[:] = list(video_shape)
    args.tile[:] = list(tile_shape)
    args.text_len = text_len
    args.q, args.k, args.v, args.out = (_tensor_desc(t) for t in (q, k, v, out))
    args.lse = lse.data_ptr() if lse is not None else None
    args.text_valid = text_valid.data_ptr() if text_valid is not None else None
    args.windows = ctypes.cast(win_array, ctypes.POINTER(ctypes.c_int64))
    args.num_windows = len(windows)
    args.scale = scale
    _ffi.check(_ffi.library().tileattn_sta_forward(ctypes.byref(args), ctypes.c_void_p(stream)))


def sta_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, video_shape, window=(3, 3, 3),
                  tile=(6, 8, 8), text_len: int = 0, text_valid: Optional[torch.Tensor] = None,
                  layout: str = "natural", scale: Optional[float] = None, return_lse: bool = False):
    """Sliding Tile Attention. q/k/v: [B, heads, S, D] (SDPA's layout, any strides with D contiguous), S = T*H*W video
    tokens followed by text_len text tokens. `window`: one (wt, wh, ww) in tiles, or one per query head; None = dense.
    Returns O (and the fp32 log-sum-exp [B, heads, S] if return_lse)."""
    video_shape = _triple(video_shape, "video_shape")
    tile_shape = _triple(tile, "tile")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor")
        if t.dim() != 4:
            raise ValueError(f"{name} must be [batch, heads, tokens, head_dim], got shape {tuple(t.shape)}")
        if not t.is_cuda:
            raise ValueError(f"{name} must be on a CUDA device, got {t.device}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name} must be bfloat16 or float16, got {t.dtype}")
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must have a contiguous last (head_dim) dimension, got strides {t.stride()}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[2:] != q.shape[2:]:
        raise ValueError(f"shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    n_tokens = math.prod(video_shape) + int(text_len)
    if q.shape[2] != n_tokens:
        raise ValueError(f"q has {q.shape[2]} tokens but video_shape {video_shape} + text_len {text_len} = {n_tokens}")
    if layout not in ("natural", "tile_major"):
        raise ValueError(f"layout must be 'natural' or 'tile_major', got {layout!r}")
    if window is None:
        windows = []
    elif len(window) == 3 and all(isinstance(x, int) for x in window):
        windows = [_triple(window, "window")]
    else:
        windows = [_triple(w, f"window[{i}]") for i, w in enumerate(window)]
    if text_valid is not None:
        if text_valid.dtype != torch.int32 or text_valid.device != q.device or text_valid.shape != (q.shape[0],):
            raise ValueError("text_valid must be an int32 tensor of shape [batch] on q's device")
        text_valid = text_valid.contiguous()
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device) if return_lse else None
    stream = torch.cuda.current_stream(q.device).cuda_stream
    with torch.cuda.device(q.device):
        sta_forward_raw(q, k, v, out, lse, video_shape, windows, tile_shape, int(text_len), text_valid, layout,
                        float(scale or 0.0), stream)
    return (out, lse) if return_lse else out
