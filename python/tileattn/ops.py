"""The STA forward and backward, and the FG-Attn forward, as PyTorch custom operators (torch.library):
torch.compile(fullgraph=True) traces through them via their fake implementations, they run on the current CUDA stream
and allocate only through PyTorch (workspaces included), so they can be captured in a CUDA graph. Autograd (STA): the
forward saves q, k, v, O and LSE; the backward runs tileattn's STA backward kernels (deterministic dQ when
torch.use_deterministic_algorithms(True) is on). The STA forward's precision="fp8" (8-bit operands, see
tileattn.fp8_reference) has no backward, nor has FG-Attn: differentiating through either raises NotImplementedError."""
from __future__ import annotations

import ctypes
from typing import List, Optional, Tuple

import torch

from . import _ffi

_DTYPES = {torch.bfloat16: _ffi.DTYPE_BF16, torch.float16: _ffi.DTYPE_FP16}
# The CPU path runs the C++ reference in fp32 (fp64 sums for fp64 inputs), whatever the input's float dtype.
_CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_LAYOUTS = {"natural": _ffi.LAYOUT_NATURAL, "tile_major": _ffi.LAYOUT_TILE_MAJOR}
PRECISIONS = {"native": _ffi.PRECISION_NATIVE, "fp8": _ffi.PRECISION_FP8}


def check_precision(precision) -> str:
    """precision as the ops take it ("native" or "fp8"); ValueError naming precision otherwise."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be 'native' or 'fp8', got {precision!r}")
    return precision


def check_half_tensor(name: str, t, allow_cpu: bool = False) -> None:
    """A [B, heads, S, D] CUDA bf16/fp16 tensor with D contiguous (with allow_cpu, also a CPU tensor of a float
    dtype: the reference path); TypeError/ValueError naming it."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name} must be [batch, heads, tokens, head_dim], got shape {tuple(t.shape)}")
    if allow_cpu and t.device.type == "cpu":
        if t.dtype not in _CPU_DTYPES:
            raise TypeError(f"{name} on the CPU must be float32, float64, bfloat16 or float16, got {t.dtype}")
        return
    if t.device.type != "cuda":
        raise ValueError(f"{name} must be on a CUDA device{' or the CPU' if allow_cpu else ''}, got {t.device}")
    if t.dtype not in _DTYPES:
        raise TypeError(f"{name} must be bfloat16 or float16, got {t.dtype}")
    if t.stride(-1) != 1:
        raise ValueError(f"{name} must have a contiguous last (head_dim) dimension, got strides {t.stride()}")


def check_qkv(q, k, v, allow_cpu: bool = False) -> None:
    """What every attention kernel needs of q/k/v [B, heads, S, D]: CUDA tensors of one half dtype and device, D
    contiguous (allow_cpu: or CPU tensors of one float dtype), k and v alike with q's batch, tokens and head_dim
    (their head count may differ: GQA). Raises TypeError/ValueError naming the tensor."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_half_tensor(name, t, allow_cpu)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[2:] != q.shape[2:]:
        raise ValueError(f"shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")


def _tensor_desc(t: torch.Tensor) -> _ffi.Tensor:
    return _ffi.Tensor(t.data_ptr(), t.stride(0), t.stride(1), t.stride(2))


def _forward_struct(q, k, v, out, lse, text_valid, video_shape, tile, windows, text_len, layout, scale,
                    precision="native"):
    """The C ABI's forward description (no workspace yet); returns it with the window array it points into (keep
    both alive)."""
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
    a.precision = PRECISIONS[precision]
    return a, win


@torch.library.custom_op("tileattn::sta_forward", mutates_args=(), device_types="cuda")
def sta_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, text_valid: Optional[torch.Tensor],
                video_shape: List[int], tile: List[int], windows: List[int], text_len: int, layout: str,
                scale: float, precision: str = "native") -> Tuple[torch.Tensor, torch.Tensor]:
    """O [B, Hq, S, D] and the fp32 log-sum-exp [B, Hq, S]. `windows`: flattened (wt, wh, ww) triples, one per query
    head or a single one; empty = dense. precision "fp8": 8-bit operands quantized into a workspace allocated here
    (tileattn_sta_forward_workspace_bytes), output still in q's dtype; forward only."""
    check_precision(precision)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    a, _win = _forward_struct(q, k, v, out, lse, text_valid, video_shape, tile, windows, text_len, layout, scale,
                              precision)
    lib = _ffi.library()
    stream = torch.cuda.current_stream(q.device).cuda_stream
    with torch.cuda.device(q.device):
        workspace = None
        if precision != "native":  # native needs none (its size is 0)
            needed = ctypes.c_int64(0)
            _ffi.check(lib.tileattn_sta_forward_workspace_bytes(ctypes.byref(a), ctypes.byref(needed)))
            # PyTorch's caching allocator aligns blocks to 512 bytes (the library needs 256).
            workspace = torch.empty(max(needed.value, 1), dtype=torch.uint8, device=q.device)
            a.workspace, a.workspace_bytes = workspace.data_ptr(), needed.value
        _ffi.check(lib.tileattn_sta_forward(ctypes.byref(a), ctypes.c_void_p(stream)))
    return out, lse


@sta_forward.register_fake
def _sta_forward_fake(q, k, v, text_valid, video_shape, tile, windows, text_len, layout, scale, precision="native"):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device), q.new_empty(q.shape[:3], dtype=torch.float32)


def _kernel_ready(t: torch.Tensor) -> torch.Tensor:
    """grad_out as the kernels take it: head_dim contiguous, strides multiples of 8 elements (16-byte TMA rows).
    Autograd may hand over expanded or oddly strided gradients; those are copied."""
    if t.stride(-1) == 1 and all(s % 8 == 0 for s in t.stride()[:3]) and t.data_ptr() % 16 == 0:
        return t
    return t.contiguous()


@torch.library.custom_op("tileattn::sta_backward", mutates_args=(), device_types="cuda")
def sta_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                 lse: torch.Tensor, text_valid: Optional[torch.Tensor], video_shape: List[int], tile: List[int],
                 windows: List[int], text_len: int, layout: str, scale: float,
                 deterministic: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dQ, dK, dV (shapes and strides of q, k, v; dK/dV summed over each GQA group) for upstream gradient grad_out
    of the forward call that produced `out` and `lse`."""
    grad_out = _kernel_ready(grad_out)
    dq, dk, dv = (torch.empty_like(t) for t in (q, k, v))
    fwd, _win = _forward_struct(q, k, v, out, lse, text_valid, video_shape, tile, windows, text_len, layout, scale)
    lib = _ffi.library()
    needed = ctypes.c_int64(0)
    with torch.cuda.device(q.device):
        _ffi.check(lib.tileattn_sta_backward_workspace_bytes(ctypes.byref(fwd), ctypes.byref(needed)))
        workspace = torch.empty(max(needed.value, 1), dtype=torch.uint8, device=q.device)
        a = _ffi.StaBackwardArgs()
        a.forward = fwd
        a.grad_out, a.grad_q, a.grad_k, a.grad_v = (_tensor_desc(t) for t in (grad_out, dq, dk, dv))
        a.workspace, a.workspace_bytes = workspace.data_ptr(), needed.value
        a.deterministic = int(deterministic)
        stream = torch.cuda.current_stream(q.device).cuda_stream
        _ffi.check(lib.tileattn_sta_backward(ctypes.byref(a), ctypes.c_void_p(stream)))
    return dq, dk, dv


@sta_backward.register_fake
def _sta_backward_fake(grad_out, q, k, v, out, lse, text_valid, video_shape, tile, windows, text_len, layout, scale,
                       deterministic):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, text_valid, video_shape, tile, windows, text_len, layout, scale = inputs[:10]
    out, lse = output
    ctx.precision = inputs[10] if len(inputs) > 10 else "native"
    ctx.save_for_backward(q, k, v, out, lse, text_valid)  # O and LSE: all the backward needs besides the inputs
    ctx.config = (list(video_shape), list(tile), list(windows), int(text_len), layout, float(scale))
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, grad_lse):
    # lse is marked non-differentiable, so grad_lse carries nothing.
    q, k, v, out, lse, text_valid = ctx.saved_tensors
    if grad_out is None:
        return (None,) * 11
    if ctx.precision != "native":  # sta_attention refuses this before the forward; the op itself may be called
        raise NotImplementedError(f"tileattn STA: precision={ctx.precision!r} has no backward (the backward "
                                  "differentiates the native forward); use precision='native' or torch.no_grad()")
    # torch.use_deterministic_algorithms(True) selects the bitwise-reproducible dQ accumulation.
    deterministic = torch.are_deterministic_algorithms_enabled()
    dq, dk, dv = sta_backward(grad_out, q, k, v, out, lse, text_valid, *ctx.config, deterministic)
    return (dq, dk, dv) + (None,) * 8


sta_forward.register_autograd(_backward, setup_context=_setup_context)


# ---- The CPU path: the same two ops on CPU tensors, computed by the C++ reference (tileattn_sta_reference_*) ----

def _reference_call(q, k, v, text_valid, video_shape, tile, windows, text_len, layout, scale):
    """fp32 contiguous natural-order copies of q/k/v and the C ABI's reference description (keep all alive)."""
    from .sta import tile as to_tile_major, untile  # sta imports this module
    def host(t):
        t = t.detach().to(torch.float32)
        if layout == "tile_major":
            t = untile(t, video_shape, tile, text_len)
        return t.contiguous()
    qf, kf, vf = host(q), host(k), host(v)
    win = (ctypes.c_int64 * max(1, len(windows)))(*windows)
    tv = text_valid.to(torch.int32).contiguous() if text_valid is not None else None
    a = _ffi.StaReferenceArgs()
    a.abi_version = _ffi.ABI_VERSION
    a.accumulation = 1 if q.dtype == torch.float64 else 0
    a.batch, a.q_heads, a.kv_heads, a.head_dim = q.shape[0], q.shape[1], k.shape[1], q.shape[3]
    a.video[:] = list(video_shape)
    a.tile[:] = list(tile)
    a.text_len = text_len
    a.q, a.k, a.v = qf.data_ptr(), kf.data_ptr(), vf.data_ptr()
    a.text_valid = tv.data_ptr() if tv is not None else None
    a.windows = ctypes.cast(win, ctypes.POINTER(ctypes.c_int64))
    a.num_windows = len(windows) // 3
    a.scale = scale
    a.threads = torch.get_num_threads()
    restore = (lambda t: to_tile_major(t, video_shape, tile, text_len)) if layout == "tile_major" else (lambda t: t)
    return a, (qf, kf, vf, tv, win), restore


def _sta_forward_fp8_cpu(q, k, v, text_valid, video_shape, tile, windows, text_len, layout, scale):
    """precision="fp8" on the CPU: the FP8 numerics emulated in torch (tileattn.fp8_reference)."""
    from .fp8_reference import sta_attention_fp8_reference
    from .sta import StaPlan, tile as to_tile_major, untile
    triples = [tuple(windows[i:i + 3]) for i in range(0, len(windows), 3)]
    plan = StaPlan(video_shape, triples[0] if len(triples) == 1 else (triples or None), tile, text_len)
    if layout == "tile_major":
        q, k, v = (untile(t, video_shape, tile, text_len) for t in (q, k, v))
    out, lse = sta_attention_fp8_reference(q, k, v, plan, text_valid, return_lse=True, scale=scale or None)
    if layout == "tile_major":
        out = to_tile_major(out, video_shape, tile, text_len)
        lse = to_tile_major(lse.unsqueeze(-1), video_shape, tile, text_len).squeeze(-1)
    return out.contiguous(), lse.contiguous()


@sta_forward.register_kernel("cpu")
def _sta_forward_cpu(q, k, v, text_valid, video_shape, tile, windows, text_len, layout, scale, precision="native"):
    if check_precision(precision) == "fp8":
        return _sta_forward_fp8_cpu(q, k, v, text_valid, video_shape, tile, windows, text_len, layout, scale)
    a, keep, restore = _reference_call(q, k, v, text_valid, video_shape, tile, windows, text_len, layout, scale)
    out = torch.empty(keep[0].shape, dtype=torch.float32)
    lse = torch.empty(keep[0].shape[:3], dtype=torch.float32)
    _ffi.check(_ffi.reference_library().tileattn_sta_reference_forward(ctypes.byref(a), out.data_ptr(),
                                                                       lse.data_ptr()))
    if layout == "tile_major":  # lse [B, H, S] as [B, H, S, 1] through the same token permutation
        lse = restore(lse.unsqueeze(-1)).squeeze(-1)
    return restore(out).to(q.dtype), lse


@sta_backward.register_kernel("cpu")
def _sta_backward_cpu(grad_out, q, k, v, out, lse, text_valid, video_shape, tile, windows, text_len, layout, scale,
                      deterministic):
    # The reference recomputes the softmax from q and k (out and lse unused); it is deterministic in every mode.
    a, keep, restore = _reference_call(q, k, v, text_valid, video_shape, tile, windows, text_len, layout, scale)
    go = grad_out.detach().to(torch.float32)
    if layout == "tile_major":
        from .sta import untile
        go = untile(go, video_shape, tile, text_len)
    go = go.contiguous()
    dq, dk, dv = (torch.empty(t.shape, dtype=torch.float32) for t in keep[:3])
    _ffi.check(_ffi.reference_library().tileattn_sta_reference_backward(
        ctypes.byref(a), go.data_ptr(), dq.data_ptr(), dk.data_ptr(), dv.data_ptr()))
    return restore(dq).to(q.dtype), restore(dk).to(k.dtype), restore(dv).to(v.dtype)


# ---- FG-Attn forward (fine-grained column plans; see tileattn.fg) ----

def _fg_struct(q, k, v, out, lse, table, counts, query_block, key_group, scale):
    """The C ABI's FG forward description (no workspace yet)."""
    a = _ffi.FgForwardArgs()
    a.abi_version = _ffi.ABI_VERSION
    a.dtype = _DTYPES[q.dtype]
    a.batch, a.q_heads, a.kv_heads, a.head_dim = q.shape[0], q.shape[1], k.shape[1], q.shape[3]
    a.q, a.k, a.v, a.out = (_tensor_desc(t) for t in (q, k, v, out))
    a.lse = lse.data_ptr()
    a.scale = scale
    a.plan = _ffi.ColumnPlan(q.shape[2], q.shape[1], query_block, key_group, table.shape[1], table.data_ptr(),
                             counts.data_ptr())
    return a


@torch.library.custom_op("tileattn::fg_forward", mutates_args=(), device_types="cuda")
def fg_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor, counts: torch.Tensor,
               query_block: int, key_group: int, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """O [B, Hq, S, D] and the fp32 log-sum-exp [B, Hq, S] (-inf where a query sees no key) of attention restricted
    to a column plan: table int32 [Hq * ceil(S / query_block), capacity] and counts int32 [rows] on q's device."""
    rows = q.shape[1] * -(-q.shape[2] // query_block)
    if table.dim() != 2 or table.shape[0] != rows or tuple(counts.shape) != (rows,):
        raise ValueError(f"plan: expected table [{rows}, capacity] and counts [{rows}] for {q.shape[1]} heads, "
                         f"{q.shape[2]} tokens, query_block {query_block}; got table {tuple(table.shape)}, counts "
                         f"{tuple(counts.shape)}")
    if table.dtype != torch.int32 or counts.dtype != torch.int32 or table.device != q.device \
            or counts.device != q.device:
        raise ValueError(f"plan: table and counts must be int32 on {q.device}, got {table.dtype} on {table.device}, "
                         f"{counts.dtype} on {counts.device}")
    table, counts = table.contiguous(), counts.contiguous()
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:3], dtype=torch.float32, device=q.device)
    a = _fg_struct(q, k, v, out, lse, table, counts, query_block, key_group, scale)
    lib = _ffi.fg_library()
    needed = ctypes.c_int64(0)
    with torch.cuda.device(q.device):
        _ffi.check(lib.tileattn_fg_forward_workspace_bytes(ctypes.byref(a), ctypes.byref(needed)))
        workspace = None
        if needed.value > 0:  # query_block < 128: the merged plan (PyTorch's allocator aligns to 512 bytes)
            workspace = torch.empty(needed.value, dtype=torch.uint8, device=q.device)
            a.workspace, a.workspace_bytes = workspace.data_ptr(), needed.value
        stream = torch.cuda.current_stream(q.device).cuda_stream
        _ffi.check(lib.tileattn_fg_forward(ctypes.byref(a), ctypes.c_void_p(stream)))
    return out, lse


@fg_forward.register_fake
def _fg_forward_fake(q, k, v, table, counts, query_block, key_group, scale):
    return torch.empty(q.shape, dtype=q.dtype, device=q.device), q.new_empty(q.shape[:3], dtype=torch.float32)


def _fg_setup_context(ctx, inputs, output):
    ctx.mark_non_differentiable(output[1])


def _fg_backward(ctx, grad_out, grad_lse):
    raise NotImplementedError("tileattn.fg_attention: the FG backward is not implemented (forward only); use "
                              "tileattn.sta_attention or torch.no_grad()")


fg_forward.register_autograd(_fg_backward, setup_context=_fg_setup_context)
