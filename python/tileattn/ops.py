"""The STA forward as a PyTorch custom operator (torch.library): torch.compile(fullgraph=True) traces through it via
its fake implementation, it runs on the current CUDA stream and allocates only through PyTorch, so it can be captured
in a CUDA graph. Backward raises until the backward kernel exists."""
from __future__ import annotations

import ctypes
from typing import List, Optional, Tuple

import torch

from . import _ffi

_DTYPES = {torch.bfloat16: _ffi.DTYPE_BF16, torch.float16: _ffi.DTYPE_FP16}
_LAYOUTS = {"natural": _ffi.LAYOUT_NATURAL, "tile_major": _ffi.LAYOUT_TILE_MAJOR}


def _tensor_desc(t: torch.Tensor) -> _ffi.Tensor:
    return _ffi.Tensor(t.data_ptr(), t.stride(0), t.stride(1), t.stride(2))


@torch.library.custom_op("tileattn::sta_forward", mutates_args=(), device_types="cuda")
def sta_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text_valid: Optional[torch.Tensor],
                video_shape: List[int], tile: List[int], windows: List[int], text_len: int, layout: str,
                scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """O [B, Hq, S, D] and the fp32 log-sum-exp [B, Hq, S]. `windows`: flattened (wt, wh, ww) triples, one per query
    head or a single one; empty = dense."""
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    win = (ctypes.c_int64 * max(1, len(windows)))(*windows)
    a = _ffi.StaForwardArgs()
    a.abi_version = _ffi.ABI_VERSION
    a.dtype = _DTYPES[q.dtype]
    a.layout = _LAYOUTS[layout]
    a.batch, a.q_heads, a.kv_heads, a.head_dim = q.shape[0], q.shape[1], k.shape[1], q.shape[3]
    a.video[:] = list(video_shape)
    a.tile[:] = list(tile)
    a.text_len = text_len
    a.q, a.k, a.v, a.out = (_tensor_desc(t) for t in (q, k, v, out))
    a.lse = lse.data_ptr()
    a.text_valid = text_valid.data_ptr() if text_valid is not None else None
    a.windows = ctypes.cast(win, ctypes.POINTER(ctypes.c_int64))
    a.num_windows = len(windows) // 3
    a.scale = scale
    stream = torch.cuda.current_stream(q.device).cuda_stream
    with torch.cuda.device(q.device):
        _ffi.check(_ffi.library().tileattn_sta_forward(ctypes.byref(a), ctypes.c_void_p(stream)))
    return out, lse


@sta_forward.register_fake
def _sta_forward_fake(q, k, v, text_valid, video_shape, tile, windows, text_len, layout, scale):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device), q.new_empty(q.shape[:3], dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    pass


def _backward(ctx, grad_out, grad_lse):
    raise NotImplementedError(
        "tileattn.sta_attention: the STA backward pass is not supported yet (the backward kernel is tracked as "
        "issue #6). For training use F.scaled_dot_product_attention with an explicit mask, or run tileattn under "
        "torch.no_grad() for inference.")


sta_forward.register_autograd(_backward, setup_context=_setup_context)
