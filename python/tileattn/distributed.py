"""Sliding Tile Attention under Ulysses sequence parallelism (torch.distributed): a standalone op and the piece of
tileattn.diffusers that runs inside diffusers' context parallelism.

Ulysses: every rank holds 1/N of the tokens and all heads; an all-to-all gives every rank all tokens of 1/N of the
heads (rank r: heads [r*H/N, (r+1)*H/N)), attention runs unchanged on those heads, and a second all-to-all returns
the output to the token shards. STA is local per head, so it runs per rank with that rank's slice of the per-head
windows; only the token order (video first, then text) and the text padding have to be rebuilt on the gathered side.

    from tileattn.distributed import sta_attention_ulysses
    out = sta_attention_ulysses(q, k, v, group=None, video_shape=(30, 48, 80), window=(3, 3, 3), text_len=256)
    # q/k/v: this rank's [B, S_r, H, D] (rank r: tokens r*S/N .. of the natural order, video then text)

diffusers (0.42.1): `enable_context_parallel(transformer, ContextParallelConfig(ulysses_degree=N))` (diffusers'
`enable_parallelism` plus, for HunyuanVideo, which ships no context-parallel plan, tileattn's plan and mask hooks), then
`tileattn.diffusers.enable_sta(transformer, ...)`: each routed layer's dispatch_attention_fn call reaches
`route_context_parallel` (called by tileattn.diffusers when the call carries a context-parallel config). Ring
attention (ring_degree > 1) is refused: STA's windows cross the ring's key shards.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, List, Optional, Tuple

import torch
import torch.distributed as dist

from .sta import _triple, sta_attention

Triple = Tuple[int, int, int]

__all__ = ["sta_attention_ulysses", "spawn_local", "ulysses_head_slice", "enable_context_parallel", "route_context_parallel",
           "hunyuan_video_cp_plan", "wan_cp_plan", "ContextParallelError", "shard_sizes"]


class ContextParallelError(ValueError):
    """A context-parallel configuration tileattn's STA cannot run (ring attention, uneven shards, ...)."""


# ---- all-to-all ----

# "auto": dist.all_to_all_single (NCCL; gloo in recent torch), falling back to point-to-point sends where the backend
# lacks it. "p2p": always the point-to-point emulation (tests exercise it).
A2A_MODE = "auto"


def _a2a_p2p(out: torch.Tensor, inp: torch.Tensor, group) -> None:
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    ops = []
    for j in range(world):
        if j == rank:
            out[j].copy_(inp[j])
            continue
        peer = dist.get_global_rank(group, j) if group is not None else j
        ops.append(dist.P2POp(dist.isend, inp[j].contiguous(), peer, group))
        ops.append(dist.P2POp(dist.irecv, out[j], peer, group))
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()


def _a2a(inp: torch.Tensor, group, async_op: bool = False):
    """Equal-split all-to-all along dim 0 (dim 0 = the world size): out[j] = rank j's inp[rank]. Returns (out, work);
    work is None when the result is already there."""
    inp = inp.contiguous()
    out = torch.empty_like(inp)
    if A2A_MODE != "p2p":
        try:
            work = dist.all_to_all_single(out, inp, group=group, async_op=async_op)
            return out, (work if async_op else None)
        except (RuntimeError, NotImplementedError) as e:  # a backend without all_to_all (older gloo)
            if "all_to_all" not in str(e).lower() and "alltoall" not in str(e).lower():
                raise
    _a2a_p2p(out, inp, group)
    return out, None


class _AllToAll(torch.autograd.Function):
    """The equal-split all-to-all is a permutation of blocks across ranks and its own adjoint: the backward is the
    same all-to-all of the gradient."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _a2a(x, group)[0]

    @staticmethod
    def backward(ctx, grad):
        return _a2a(grad, ctx.group)[0], None


# ---- shards ----

def shard_sizes(total: int, world: int) -> List[int]:
    """Tokens per rank of a sequence of `total` tokens: torch.tensor_split's sizes (the first total % world ranks hold
    one more)."""
    return [total // world + (1 if r < total % world else 0) for r in range(world)]


def ulysses_head_slice(parallel_config, num_heads: int) -> Optional[Tuple[int, int]]:
    """(start, stop) of the query heads this rank holds during a diffusers Ulysses attention call, or None when the
    config has no context parallelism. Raises ContextParallelError for ring_degree > 1 or heads not divisible."""
    cp = getattr(parallel_config, "context_parallel_config", parallel_config)
    if cp is None or (getattr(cp, "ulysses_degree", 1) or 1) * (getattr(cp, "ring_degree", 1) or 1) == 1:
        return None
    _refuse_ring(cp)
    n = int(cp.ulysses_degree)
    if num_heads % n:
        raise ContextParallelError(f"num_heads: {num_heads} heads do not split over ulysses_degree {n}")
    rank = cp._ulysses_local_rank if cp._ulysses_local_rank is not None else dist.get_rank(cp._ulysses_mesh.get_group())
    per = num_heads // n
    return rank * per, (rank + 1) * per


def _refuse_ring(cp) -> None:
    if (getattr(cp, "ring_degree", 1) or 1) > 1:
        raise ContextParallelError(
            f"tileattn STA under context parallelism: ring_degree={cp.ring_degree} is not supported (ring attention "
            "passes key shards around the ring and STA's windows cross them); use ContextParallelConfig("
            "ulysses_degree=N) with ring_degree=1")


def _ulysses(q, k, v, group, positions: Optional[torch.Tensor], local_len: int, attend: Callable, heads: int,
             kv_heads: int, chunks: int = 1) -> torch.Tensor:
    """The Ulysses exchange around `attend`.

    q [B, L, Hp, D], k/v [B, L, Hkp, D]: this rank's tokens padded to L (same L on every rank), heads padded to
    multiples of the world size. positions: int64 [S] on q's device, the position in the gathered sequence (rank j's
    L tokens at j*L) of natural token i; None when the gathered order is the natural one (no reordering pass). attend(q, k, v, h0, h1) gets [B, h, S, D] natural-order tensors of padded
    heads [h0, h1) and returns [B, h, S, D]. Returns this rank's [B, local_len, heads, D]."""
    world = dist.get_world_size(group)
    B, L, Hp, D = q.shape
    Hkp = k.shape[2]
    hl, hkl = Hp // world, Hkp // world
    rank = dist.get_rank(group)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if grad:
        chunks = 1
    if chunks < 1 or hl % chunks or hkl % chunks:
        chunks = 1
    hc, hkc = hl // chunks, hkl // chunks

    def to_heads(x, per, c, n):  # [B, L, H, D] -> [world, B, n, L, D]: the n heads of chunk c of each destination
        x = x.view(B, L, world, per, D)[:, :, :, c * n:(c + 1) * n]
        return x.permute(2, 0, 3, 1, 4)

    identity = positions is None

    def gathered(buf, n):  # [world(src), B, n, L, D] -> natural order [B, n, S, D]
        x = buf.permute(1, 2, 0, 3, 4).reshape(B, n, world * L, D)
        return x if identity else x.index_select(2, positions)

    def to_tokens(o, n):  # natural [B, n, S, D] -> [world(dst), B, L, n, D] in gathered order
        if not identity:
            o = o.new_zeros(B, n, world * L, D).index_copy(2, positions, o)
        return o.reshape(B, n, world, L, D).permute(2, 0, 3, 1, 4)

    outs = []
    if grad or chunks == 1:
        a2a = (lambda x: _AllToAll.apply(x.contiguous(), group)) if grad else (lambda x: _a2a(x, group)[0])
        if Hkp == Hp:  # one exchange for q, k and v
            qkv = a2a(torch.stack([to_heads(t, hl, 0, hl) for t in (q, k, v)], 1))  # [world, 3, B, hl, L, D]
            qh, kh, vh = (gathered(qkv[:, i], hl) for i in range(3))
        else:
            qh = gathered(a2a(to_heads(q, hl, 0, hl)), hl)
            kh, vh = (gathered(a2a(to_heads(t, hkl, 0, hkl)), hkl) for t in (k, v))
        o = attend(qh, kh, vh, rank * hl, (rank + 1) * hl)
        back = a2a(to_tokens(o, hl))  # [world(src = head block), B, L, hl, D]
        outs = [back]
    else:
        # Head-group chunks: chunk c's exchange is in flight while chunk c-1 computes (async collectives on the
        # communicator's stream; wait() only orders the current stream after them).
        pending = []
        for c in range(chunks):
            if Hkp == Hp:
                buf, work = _a2a(torch.stack([to_heads(t, hl, c, hc) for t in (q, k, v)], 1), group, True)
                pending.append(((buf, work),))
            else:
                pending.append((_a2a(to_heads(q, hl, c, hc), group, True),
                                _a2a(to_heads(k, hkl, c, hkc), group, True),
                                _a2a(to_heads(v, hkl, c, hkc), group, True)))
        returns = []
        for c in range(chunks):
            for _, work in pending[c]:
                if work is not None:
                    work.wait()
            if Hkp == Hp:
                buf = pending[c][0][0]
                qh, kh, vh = (gathered(buf[:, i], hc) for i in range(3))
            else:
                qh = gathered(pending[c][0][0], hc)
                kh, vh = (gathered(p[0], hkc) for p in pending[c][1:])
            h0 = rank * hl + c * hc
            o = attend(qh, kh, vh, h0, h0 + hc)
            returns.append(_a2a(to_tokens(o, hc), group, True))
        for buf, work in returns:
            if work is not None:
                work.wait()
            outs.append(buf)
    # outs[c]: [world(src j), B, L, hc, D], heads j*hl + c*hc .. of the padded numbering
    out = torch.stack(outs, 3) if len(outs) > 1 else outs[0].unsqueeze(3)  # [world, B, L, chunks, hc, D]
    out = out.permute(1, 2, 0, 3, 4, 5).reshape(B, L, Hp, D)
    return out[:, :local_len, :heads]


def _pad_heads(x: torch.Tensor, world: int) -> torch.Tensor:
    h = x.shape[2]
    hp = -(-h // world) * world
    if hp == h:
        return x
    return torch.cat([x, x.new_zeros(x.shape[0], x.shape[1], hp - h, x.shape[3])], 2)


def _window_list(window, heads: int) -> Optional[List[Triple]]:
    if window is None:
        return None
    if len(window) == 3 and all(isinstance(x, int) for x in window):
        return [_triple(window, "window")] * heads
    wins = [_triple(w, f"window[{i}]") for i, w in enumerate(window)]
    if len(wins) != heads:
        raise ValueError(f"window: {len(wins)} per-head windows for {heads} query heads")
    return wins


def sta_attention_ulysses(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group=None, video_shape=None,
                          window=(3, 3, 3), tile=(6, 8, 8), text_len: int = 0,
                          text_valid: Optional[torch.Tensor] = None, scale: Optional[float] = None,
                          chunks: Optional[int] = None, precision: str = "native") -> torch.Tensor:
    """Sliding Tile Attention on a sequence-sharded batch (Ulysses): every rank of `group` (default: the world) calls
    it with its shard and gets its shard of the output.

    q/k/v: this rank's [B, S_r, H, D] (D contiguous; k/v may have fewer heads, GQA, if that count splits over the
        ranks). The full sequence, S = T*H*W video tokens (row-major) then text_len text tokens, is sharded in order:
        rank r holds tokens [sum(S_j, j < r), ... + S_r) with S_r = shard_sizes(S, N)[r] (S/N each when it divides;
        else torch.tensor_split's sizes: the first S % N ranks one more). Uneven shards are padded for the exchange.
    video_shape, window, tile, text_len, scale: as tileattn.sta_attention, on the full sequence; window is one triple
        or one per query head (of all H heads; each rank uses its heads' windows), or None for dense.
    text_valid: optional int32 [B] on q's device, the same on every rank.
    H not divisible by N: the heads are padded with zero heads to the next multiple (wasted work on one rank).
    chunks: head-group chunks whose exchange overlaps the previous chunk's attention (async collectives; not with
        autograd; must divide each rank's head count, else 1); default 2 on CUDA when each rank's head count is even,
        else 1 (on the CPU chunking only costs extra messages).
    precision: as tileattn.sta_attention (each rank's heads are quantized on their own: the same as unsharded).
    Autograd: supported (the all-to-all's backward is the reverse all-to-all; STA's backward runs per rank); with
        gradients the exchange is not chunked. Returns this rank's [B, S_r, H, D]."""
    if video_shape is None:
        raise ValueError("video_shape: required (T, H, W) of the full video in tokens")
    video_shape = _triple(video_shape, "video_shape")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a [batch, tokens, heads, head_dim] tensor (this rank's shard), got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if k.shape != v.shape or k.shape[:2] != q.shape[:2] or k.shape[3] != q.shape[3]:
        raise ValueError(f"shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
                         "(k/v: q's batch, tokens and head_dim)")
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("sta_attention_ulysses: torch.distributed is not initialized (init_process_group first)")
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    text_len = int(text_len)
    total = math.prod(video_shape) + text_len
    sizes = shard_sizes(total, world)
    if q.shape[1] != sizes[rank]:
        raise ValueError(f"q: rank {rank} of {world} holds {q.shape[1]} tokens; video_shape {video_shape} + text_len "
                         f"{text_len} = {total} tokens split over {world} ranks give this rank {sizes[rank]} "
                         f"(shard sizes {sizes})")
    heads, kv_heads = q.shape[2], k.shape[2]
    if kv_heads != heads:
        if heads % kv_heads:
            raise ValueError(f"k: {kv_heads} key heads do not divide {heads} query heads")
        if kv_heads % world or heads % world:
            raise ValueError(f"k: GQA ({heads} query, {kv_heads} key heads) needs both counts divisible by the "
                             f"{world} ranks")
    windows = _window_list(window, heads)
    if windows is not None and heads % world:
        windows = windows + [windows[-1]] * (-(-heads // world) * world - heads)
    if chunks is None:
        hl = -(-heads // world)
        chunks = 2 if q.device.type == "cuda" and hl % 2 == 0 and kv_heads == heads else 1
    L = sizes[0]
    positions = None if sizes[-1] == L else \
        torch.cat([torch.arange(sizes[j], device=q.device) + j * L for j in range(world)])

    def pad_tokens(t):
        return t if t.shape[1] == L else torch.cat([t, t.new_zeros(t.shape[0], L - t.shape[1], *t.shape[2:])], 1)

    qp, kp, vp = (_pad_heads(pad_tokens(t), world) if kv_heads == heads else pad_tokens(t) for t in (q, k, v))

    def attend(qh, kh, vh, h0, h1):
        return sta_attention(qh, kh, vh, video_shape, None if windows is None else windows[h0:h1], tile, text_len,
                             text_valid, scale=scale, precision=precision)

    return _ulysses(qp, kp, vp, group, positions, q.shape[1], attend, heads, kv_heads, int(chunks))


# ---- diffusers' context parallelism ----

def _cp_config(parallel_config):
    return getattr(parallel_config, "context_parallel_config", None)


def _interleaved_positions(n_video: int, n_text: int, world: int, device) -> torch.Tensor:
    """Gathered position of each natural token when every rank's sequence is its 1/N of the video tokens followed by
    its 1/N of the text tokens (diffusers' equipartition of both streams, then the processor's concatenation)."""
    vl, tl = n_video // world, n_text // world
    L = vl + tl
    r = torch.arange(world, device=device)
    video = (r[:, None] * L + torch.arange(vl, device=device)[None]).reshape(-1)
    text = (r[:, None] * L + vl + torch.arange(tl, device=device)[None]).reshape(-1)
    return torch.cat([video, text])


def route_context_parallel(handle, layer: int, call, video):
    """STA for one dispatch_attention_fn call made under diffusers' Ulysses context parallelism (q/k/v: this rank's
    [B, S/N, H, D], the rank's video shard then its text shard). Called by tileattn.diffusers.StaHandle._sta; returns
    the output in the call's layout, None (dense by design: diffusers' own Ulysses runs), raises
    tileattn.diffusers._Unroutable (the call runs dense, reported) or ContextParallelError (ring attention)."""
    from .diffusers import _mask_plan, _Unroutable  # the caller's module
    cp = _cp_config(call.parallel_config)
    _refuse_ring(cp)
    if cp.ulysses_anything:
        raise _Unroutable("ulysses_anything (uneven shards under diffusers' context parallelism)")
    group = cp._ulysses_mesh.get_group()
    world = int(cp.ulysses_degree)
    if call.layout != "bshd":
        raise _Unroutable("a context-parallel call outside dispatch_attention_fn")
    q, k, v = call.query, call.key, call.value
    B, local, heads, D = q.shape
    if k.shape[1] != local:
        raise _Unroutable(f"not self-attention over one sequence (q {tuple(q.shape)}, k {tuple(k.shape)})")
    n_video = math.prod(video)
    tokens = local * world
    n_text = tokens - n_video
    if n_text < 0 or n_video % world or n_text % world:
        raise _Unroutable(f"{local} tokens per rank over {world} ranks do not split as video {video} + text in equal "
                          "shards")
    grid = tuple(-(-n // t) for n, t in zip(video, handle.tile))
    windows = handle.windows(layer, heads, grid)
    if windows is None:
        handle.dense[layer] = handle.dense.get(layer, 0) + 1
        return None
    if call.dropout_p > 0.0 or call.is_causal:
        raise _Unroutable("dropout or a causal mask")
    if q.device.type == "cuda" and q.dtype not in (torch.bfloat16, torch.float16):
        raise _Unroutable(f"{q.dtype} on the GPU (the kernels take bf16/fp16; run the model in bf16)")
    if heads % world or k.shape[2] != heads:
        raise _Unroutable(f"{heads} query heads, {k.shape[2]} key heads over ulysses_degree {world}")
    positions = _interleaved_positions(n_video, n_text, world, q.device) if n_text else None
    mask = call.attn_mask
    if mask is not None:
        if mask.dim() == 4 and mask.shape[-2] != 1:
            raise _Unroutable("a pairwise attention mask under context parallelism")
        if mask.shape[-1] == local and world > 1:  # a local key mask (tileattn's HunyuanVideo plan): all-gather it
            parts = [torch.empty_like(mask) for _ in range(world)]
            dist.all_gather(parts, mask.contiguous(), group=group)
            mask = torch.cat(parts, -1)
            mask = mask if positions is None else mask.index_select(-1, positions)
        elif mask.shape[-1] != tokens:
            raise _Unroutable(f"an attention mask of shape {tuple(mask.shape)} for {local} tokens per rank")
    plan = _mask_plan(mask, B, tokens, n_video)
    if plan.padded_rows is not None:
        raise _Unroutable("padded query rows under context parallelism")
    from ._ffi import TileattnArgumentError

    def attend(qh, kh, vh, h0, h1):
        return sta_attention(qh, kh, vh, video, windows[h0:h1], handle.tile, n_text, plan.text_valid,
                             scale=call.scale, precision=handle.precision_for(layer))
    try:
        out = _ulysses(q, k, v, group, positions, local, attend, heads, heads,
                       2 if q.device.type == "cuda" and (heads // world) % 2 == 0 else 1)
    except (TileattnArgumentError, ValueError, TypeError) as e:
        raise _Unroutable(str(e)) from None
    handle.routed[layer] = handle.routed.get(layer, 0) + 1
    return out


def hunyuan_video_cp_plan():
    """A context-parallel plan for diffusers' HunyuanVideoTransformer3DModel (0.42.1 ships none): the video tokens and
    the text tokens are each split in N equal shards at the first dual-stream block (each rank's sequence is then its
    video shard followed by its text shard), the RoPE tables with the video, and the video gathered after proj_out.
    The text length and the video token count must divide by N. Use it through enable_context_parallel, which also
    installs the key-mask hooks the plan needs."""
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
    return {
        "rope": {0: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True),
                 1: ContextParallelInput(split_dim=0, expected_dims=2, split_output=True)},
        "transformer_blocks.0": {
            "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
            "encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)},
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


@contextlib.contextmanager
def _cpu_device_count():
    """diffusers 0.42.1's _resolve_parallel_config computes `rank % torch.accelerator.device_count()`, which is a
    ZeroDivisionError on a machine without an accelerator (CPU / gloo); count 1 there while it runs."""
    if torch.accelerator.device_count() > 0:
        yield
        return
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original


class _HunyuanMaskHooks:
    """HunyuanVideo builds its key-padding mask [B, 1, 1, S] over the full sequence (video then text) and hands it to
    every block; under the plan above each rank's sequence is its video shard then its text shard, and diffusers'
    Ulysses all-gathers a mask only when it is as long as the local sequence. These hooks give each block the rank's
    local mask (its video shard's and text shard's columns), so dense (diffusers) and STA (tileattn) both see the
    right keys in the gathered order."""

    def __init__(self, transformer, cp):
        self.cp = cp
        self.n_video = None
        self._cache = None
        self.hooks = [transformer.register_forward_pre_hook(self._transformer_pre, with_kwargs=True)]
        for block in list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks):
            self.hooks.append(block.register_forward_pre_hook(self._block_pre, with_kwargs=True))

    def _transformer_pre(self, module, args, kwargs):
        latent = kwargs.get("hidden_states", args[0] if args else None)
        from .diffusers import video_shape_of
        self.n_video = math.prod(video_shape_of(module, latent))
        self._cache = None

    def _block_pre(self, module, args, kwargs):
        args = list(args)
        if len(args) > 3:
            mask, where = args[3], "arg"
        else:
            mask, where = kwargs.get("attention_mask"), "kw"
        if mask is None or self.n_video is None:
            return None
        if self._cache is not None and self._cache[0] is mask:  # the forward hands one mask to every block
            local = self._cache[1]
        else:
            world = int(self.cp.ulysses_degree)
            nv = self.n_video
            nt = mask.shape[-1] - nv
            if nt < 0 or nv % world or nt % world:
                raise ContextParallelError(f"HunyuanVideo under context parallelism: {nv} video and {nt} text tokens "
                                           f"must each divide by ulysses_degree {world}")
            r = dist.get_rank(self.cp._ulysses_mesh.get_group())
            vl, tl = nv // world, nt // world
            local = torch.cat([mask[..., r * vl:(r + 1) * vl], mask[..., nv + r * tl:nv + (r + 1) * tl]], -1)
            self._cache = (mask, local)
        if where == "arg":
            args[3] = local
        else:
            kwargs["attention_mask"] = local
        return tuple(args), kwargs

    def remove(self):
        for h in self.hooks:
            h.remove()
        self.hooks = []


def enable_context_parallel(transformer, config, cp_plan=None):
    """diffusers' `transformer.enable_parallelism(config=config)` for a transformer tileattn's STA routes, with what
    tileattn adds: ring_degree > 1 refused (ContextParallelError), tileattn's plan and mask hooks for HunyuanVideo
    (diffusers 0.42.1 has no plan for it), and the CPU (gloo) case of diffusers' device lookup. torch.distributed must
    be initialized. Then call tileattn.diffusers.enable_sta(transformer, ...) as usual. Returns the transformer."""
    from diffusers import ContextParallelConfig
    from diffusers.models._modeling_parallel import ParallelConfig
    cp = config.context_parallel_config if isinstance(config, ParallelConfig) else config
    if not isinstance(cp, ContextParallelConfig):
        raise TypeError(f"config must be a ContextParallelConfig (or a ParallelConfig with one), got "
                        f"{type(config).__name__}")
    _refuse_ring(cp)
    name = type(transformer).__name__
    hunyuan = name == "HunyuanVideoTransformer3DModel"
    if hunyuan:
        if cp.ulysses_anything:
            raise ContextParallelError("HunyuanVideo under context parallelism: ulysses_anything is not supported "
                                       "(tileattn's plan needs equal video and text shards)")
        if getattr(transformer.config, "image_condition_type", None) == "token_replace":
            raise ContextParallelError("HunyuanVideo under context parallelism: the token-replace image condition "
                                       "(I2V) modulates the first frame's tokens by position, which the token "
                                       "shards break; not supported")
        if cp_plan is None:
            cp_plan = hunyuan_video_cp_plan()
    wan = name == "WanTransformer3DModel"
    if wan and cp_plan is None:
        cp_plan = wan_cp_plan(transformer)
    with _cpu_device_count():
        transformer.enable_parallelism(config=config, cp_plan=cp_plan)
    if hunyuan:
        transformer._tileattn_cp_hooks = _HunyuanMaskHooks(transformer, cp)
    if wan:
        transformer.register_forward_pre_hook(_wan_timestep_guard, with_kwargs=True)
    return transformer


def wan_cp_plan(transformer):
    """diffusers' own plan for WanTransformer3DModel without its "" entry (timestep, split_dim=1, expected_dims=2).
    In diffusers 0.42.1 a 1-D timestep, the ordinary case, makes that entry call logger.warning_once, which its logger
    does not have (AttributeError); a per-token [B, S] timestep (Wan 2.2 TI2V) is refused by enable_context_parallel's
    hook instead."""
    return {key: value for key, value in type(transformer)._cp_plan.items() if key != ""}


def _wan_timestep_guard(module, args, kwargs):
    names = ("hidden_states", "timestep")
    bound = dict(zip(names, args), **kwargs)
    t = bound.get("timestep")
    if isinstance(t, torch.Tensor) and t.dim() > 1:
        raise ContextParallelError("timestep: per-token timesteps [B, S] (Wan 2.2 TI2V) under tileattn's Wan "
                                   "context-parallel plan are not supported")
    return None


# ---- local launches (tests, CPU experiments, single-host benchmarks) ----

def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_local(fn, nprocs: int, args: tuple = (), timeout: float = 600.0) -> None:
    """Run fn(rank, nprocs, port, *args) in nprocs fresh processes (torch.multiprocessing spawn), port a free
    localhost TCP port for init_method=f"tcp://127.0.0.1:{port}". Returns when all exited cleanly; raises
    torch.multiprocessing.ProcessRaisedException / ProcessExitedException for a failed process, or TimeoutError
    after `timeout` seconds (the processes still running are killed)."""
    import time
    import torch.multiprocessing as mp
    context = mp.start_processes(fn, args=(nprocs, _free_port()) + tuple(args), nprocs=nprocs, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for p in context.processes:
                if p.is_alive():
                    p.kill()
            raise TimeoutError(f"{nprocs} processes did not finish within {timeout} s")
