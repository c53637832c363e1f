"""`sta_attention`: a drop-in for F.scaled_dot_product_attention on video tokens, backed by the STA kernel; `StaPlan`
its plan (tileattn.plan's protocol: sparsity, dense and FlexAttention masks); `tile` and `untile` convert between the
natural and the tile-major token order."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch

from . import ops
from ._ffi import TileattnArgumentError
from .plan import flex_block_mask

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
    precision: str = "native"

    @property
    def grid(self) -> Triple:
        return _grid(self.video_shape, self.tile)

    def __call__(self, q, k, v, text_valid=None, scale=None, return_lse: bool = False):
        """sta_attention with this configuration."""
        return sta_attention(q, k, v, self.video_shape, self.window, self.tile, self.text_len, text_valid,
                             self.layout, scale, return_lse, precision=self.precision)


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


def _window_table(window) -> Tuple[Triple, ...]:
    """The library's window table: () for dense (None), one triple for every head, or one per query head."""
    if window is None:
        return ()
    if len(window) == 3 and all(isinstance(x, int) for x in window):
        return (_triple(window, "window"),)
    return tuple(_triple(w, f"window[{i}]") for i, w in enumerate(window))


def _axis_visited_pairs(length: int, tile: int, window: int) -> int:
    """Visited (query, key) token pairs along one axis: query tile c sees key tiles [start(c), start(c) + window)."""
    n = -(-length // tile)
    sizes = [min(tile, length - c * tile) for c in range(n)]
    return sum(sizes[c] * sum(sizes[_window_start(c, n, window):_window_start(c, n, window) + window])
               for c in range(n))


def _window_start(center, grid, window):
    """include/tileattn/detail/window_rule.hpp: clamp(center - window // 2, 0, grid - window), in tiles (ints or
    tensors)."""
    if isinstance(center, torch.Tensor):
        return torch.minimum(torch.clamp(center - window // 2, min=0), grid - window)
    return min(max(center - window // 2, 0), grid - window)


@dataclass(frozen=True, init=False)
class StaPlan:
    """The Sliding Tile Attention plan of one call site: video T x H x W tokens cut into tiles, text_len text tokens
    after the video, and the window table (in tiles): () dense, one window shared by every head, or one per query
    head (the library's 0 / 1 / q_heads rule). A video query in tile c sees the key tiles [start, start + w) per
    axis, start = clamp(c - w // 2, 0, grid - w), and every text key; a text query sees every key. Windows are
    checked like the library does (1 <= w <= grid, odd or the whole axis); errors name windows[i].

    The device form is the window table itself: it travels by value in the kernel's parameters (to() returns the
    plan unchanged). dense_mask is in natural token order (sta_attention's default layout), block_mask in tile-major
    order (tileattn.tile), where a tile's tokens are contiguous."""
    video_shape: Triple
    windows: Tuple[Triple, ...]
    tile: Triple
    text_len: int

    def __init__(self, video_shape, window=(3, 3, 3), tile=(6, 8, 8), text_len: int = 0):
        video_shape, tile = _triple(video_shape, "video_shape"), _triple(tile, "tile")
        if isinstance(text_len, bool) or not isinstance(text_len, int) or text_len < 0:
            raise ValueError(f"text_len must be an int >= 0, got {text_len!r}")
        windows = _window_table(window)
        grid = _grid(video_shape, tile)
        for i, w in enumerate(windows):
            for axis, wa, n in zip("thw", w, grid):
                if wa > n or (wa % 2 == 0 and wa != n):
                    raise TileattnArgumentError(f"windows[{i}]: window {w} along {axis} must be odd and at most the "
                                                f"tile grid's {n}, or equal to it (the grid is {grid})")
        for name, value in (("video_shape", video_shape), ("windows", windows), ("tile", tile),
                            ("text_len", text_len)):
            object.__setattr__(self, name, value)

    @property
    def grid(self) -> Triple:
        return _grid(self.video_shape, self.tile)

    @property
    def tokens(self) -> int:
        return math.prod(self.video_shape) + self.text_len

    @property
    def heads(self) -> Optional[int]:
        """The query heads a per-head table serves; None when one window (or dense) is shared by every head."""
        return len(self.windows) if len(self.windows) > 1 else None

    def _head_windows(self) -> Tuple[Triple, ...]:
        return self.windows or (self.grid,)  # dense: the whole grid

    def sparsity(self) -> float:
        """Skipped (query, key) pairs over heads * tokens^2, exact (box windows factor over the axes)."""
        n_video, text = math.prod(self.video_shape), self.text_len
        visited = [math.prod(_axis_visited_pairs(n, t, w) for n, t, w in zip(self.video_shape, self.tile, window))
                   + n_video * text + text * self.tokens for window in self._head_windows()]
        return 1.0 - sum(visited) / (len(visited) * self.tokens ** 2)

    def _tile_visits(self, device) -> torch.Tensor:
        """bool [heads or 1, tiles, tiles]: query tile -> key tile (row-major tile indices, tile-major order)."""
        grid = torch.tensor(self.grid, device=device)
        idx = torch.arange(math.prod(self.grid), device=device)
        coords = torch.stack([idx // (grid[1] * grid[2]), (idx // grid[2]) % grid[1], idx % grid[2]], 1)
        windows = torch.tensor(self._head_windows(), device=device)[:, None, :]    # [heads, 1, 3]
        start = _window_start(coords[None], grid, windows)                           # [heads, tiles, 3]
        key = coords[None, None]                                                     # [1, 1, tiles, 3]
        return ((key >= start[:, :, None]) & (key < (start + windows)[:, :, None])).all(-1)

    def _natural_token_tiles(self, device) -> torch.Tensor:
        """int64 [T * H * W]: the tile index of each video token in natural order."""
        T, H, W = self.video_shape
        gt, gh, gw = self.grid
        tt, th, tw = self.tile
        idx = torch.arange(T * H * W, device=device)
        return ((idx // (H * W)) // tt * gh + (idx // W) % H // th) * gw + idx % W // tw

    def dense_mask(self, device=None) -> torch.Tensor:
        """bool [heads (1 when shared), tokens, tokens] in natural token order: mask[h, i, j] says whether query i
        of head h sees key j (memory heads * tokens^2: small plans, tests and masked-SDPA baselines)."""
        n_video = math.prod(self.video_shape)
        visits = self._tile_visits(device)
        tiles = self._natural_token_tiles(device)
        mask = torch.ones(visits.shape[0], self.tokens, self.tokens, dtype=torch.bool, device=device)
        mask[:, :n_video, :n_video] = visits[:, tiles[:, None], tiles[None, :]]
        return mask

    def block_mask(self, device=None, block_size: int = 128):
        """The plan as a FlexAttention BlockMask over tile-major tokens (H = heads, or 1 when shared). Whole tiles
        of a multiple of block_size tokens give FULL blocks only, listed from the tile plan (the benchmarks'
        baseline: compiled FlexAttention never calls the mask_mod); other shapes come from create_block_mask,
        which evaluates the mask_mod on every (query, key) pair (small shapes). The mask_mod (the tile of each
        token looked up in the tile plan) is what eager FlexAttention applies."""
        from torch.nn.attention.flex_attention import create_block_mask
        visits = self._tile_visits(device)
        heads, no_tile = visits.shape[0], visits.shape[1]  # text tokens: a tile that sees and is seen by everything
        padded = torch.ones(heads, no_tile + 1, no_tile + 1, dtype=torch.bool, device=device)
        padded[:, :no_tile, :no_tile] = visits
        order = _tile_major_order(self.video_shape, self.tile, 0, device)
        token_tiles = torch.cat([self._natural_token_tiles(device)[order],
                                 torch.full((self.text_len,), no_tile, device=device)])
        shared = heads == 1  # a shared plan's BlockMask broadcasts over q's heads: h may exceed 0

        def mask_mod(b, h, q, k):
            return padded[0 if shared else h, token_tiles[q], token_tiles[k]]
        tile_tokens = math.prod(self.tile)
        if not (all(v % t == 0 for v, t in zip(self.video_shape, self.tile)) and tile_tokens % block_size == 0):
            return create_block_mask(mask_mod, None, heads, self.tokens, self.tokens, device=device or "cpu",
                                     BLOCK_SIZE=block_size)
        per_tile = tile_tokens // block_size
        video_blocks = no_tile * per_tile
        n_blocks = video_blocks + -(-self.text_len // block_size)
        blocks = torch.ones(heads, n_blocks, n_blocks, dtype=torch.bool, device=device)
        blocks[:, :video_blocks, :video_blocks] = visits.repeat_interleave(per_tile, 1).repeat_interleave(per_tile, 2)
        return flex_block_mask(blocks, block_size, self.tokens, mask_mod)

    def to(self, device) -> "StaPlan":
        return self

    def check_matches(self, q: torch.Tensor) -> None:
        if q.shape[2] != self.tokens:
            raise TileattnArgumentError(f"plan: q has {q.shape[2]} tokens but the plan's video_shape "
                                        f"{self.video_shape} + text_len {self.text_len} = {self.tokens}")
        if self.heads is not None and self.heads != q.shape[1]:
            raise TileattnArgumentError(f"plan: {self.heads} per-head windows for q's {q.shape[1]} heads (the "
                                        "window table holds 0 (dense), 1 (every head) or one window per query head)")


_LOOSE_DEFAULTS = ((3, 3, 3), (6, 8, 8), 0)  # sta_attention's window, tile, text_len


def sta_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, video_shape=None, window=(3, 3, 3),
                  tile=(6, 8, 8), text_len: int = 0, text_valid: Optional[torch.Tensor] = None,
                  layout: str = "natural", scale: Optional[float] = None, return_lse: bool = False, *,
                  plan: Optional[StaPlan] = None, precision: str = "native"):
    """Sliding Tile Attention, a drop-in for F.scaled_dot_product_attention on video tokens.

    q/k/v: [B, heads, S, D] (SDPA's layout, any strides with D contiguous; k/v may have fewer heads: GQA), S = T*H*W
    video tokens (row-major (t, h, w), or tile-major with layout="tile_major") followed by text_len text tokens.
    plan: a tileattn.StaPlan; or, equivalently, the loose arguments it is made of (video_shape, window, tile,
    text_len; window: (wt, wh, ww) in tiles for every head, one triple per query head, or None for dense).
    text_valid: optional int32 [B] on q's device: valid text tokens per sample (the rest get no weight).
    precision: "native" (the tensor cores multiply q's dtype) or "fp8": a pre-pass quantizes Q and K to int8 with
    per-64-row scales (K smoothed, Q and K channels balanced) and V to e4m3 with per-channel scales; P is e4m3
    (docs/DESIGN.md "FP8 STA forward"); output still in q's dtype.
    Forward only: with precision="fp8", inputs that require grad (under grad mode) raise ValueError.
    Returns O [B, heads, S, D] (and the fp32 log-sum-exp [B, heads, S] if return_lse).

    CUDA tensors (bf16/fp16) run the sm_90a kernels. CPU tensors (fp32, fp64, bf16, fp16) run the C++ reference with
    the same semantics, forward and backward: fp32 arithmetic (fp64 sums for fp64 inputs), output in q's dtype; with
    precision="fp8", the FP8 numerics emulated in torch (tileattn.fp8_reference).
    """
    if plan is None:
        if video_shape is None:
            raise TypeError("sta_attention needs video_shape (with window, tile, text_len) or plan=StaPlan(...)")
        plan = StaPlan(video_shape, window, tile, text_len)
    elif not isinstance(plan, StaPlan):
        raise TypeError(f"plan must be a tileattn.StaPlan, got {type(plan).__name__}")
    elif video_shape is not None or (window, tile, text_len) != _LOOSE_DEFAULTS:
        raise TypeError("give plan or video_shape/window/tile/text_len, not both")
    ops.check_precision(precision)
    ops.check_qkv(q, k, v, allow_cpu=True)
    plan.check_matches(q)
    if precision != "native" and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise ValueError(f"precision={precision!r} is forward only (no FP8 backward): call it under torch.no_grad() "
                         "or on inputs that do not require grad, or use precision='native'")
    if layout not in ("natural", "tile_major"):
        raise ValueError(f"layout must be 'natural' or 'tile_major', got {layout!r}")
    if text_valid is not None:
        if (not isinstance(text_valid, torch.Tensor) or text_valid.dtype != torch.int32
                or text_valid.device != q.device or tuple(text_valid.shape) != (q.shape[0],)):
            raise ValueError("text_valid must be an int32 tensor of shape [batch] on q's device")
        text_valid = text_valid.contiguous()
    out, lse = ops.sta_forward(q, k, v, text_valid, list(plan.video_shape), list(plan.tile),
                               [x for w in plan.windows for x in w], plan.text_len, layout, float(scale or 0.0),
                               precision)
    return (out, lse) if return_lse else out
