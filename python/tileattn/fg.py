"""FG-Attn: attention restricted to a fine-grained column plan, on the GPU (forward only).

A plan (`FgPlan`) cuts the token positions (in whatever order q/k/v hold them) into query blocks of M = query_block
positions and key groups of N = key_group positions, and lists for each (head, query block) the key groups it visits,
ascending, in a fixed-capacity int32 table [rows, capacity] plus a count per row (rows = heads * ceil(tokens / M),
row = head * ceil(tokens / M) + query block). One plan serves every batch element.

    plan = tileattn.synthetic_fg_plan(tokens, heads, 128, 16, sparsity=0.7)   # built on the GPU
    out = tileattn.fg_attention(q, k, v, plan)
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from . import _ffi, ops
from .sta import _triple

_QUERY_BLOCKS = (16, 32, 64, 128)
_KINDS = {"random": _ffi.MASK_RANDOM, "local": _ffi.MASK_LOCAL}


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_shape(tokens, heads, query_block, key_group):
    _positive_int(tokens, "tokens")
    _positive_int(heads, "heads")
    if query_block not in _QUERY_BLOCKS:
        raise ValueError(f"query_block must be 16, 32, 64 or 128, got {query_block!r}")
    _positive_int(key_group, "key_group")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(eq=False)
class FgPlan:
    """A fixed-capacity column plan: `table` int32 [rows, capacity] (row r lists counts[r] ascending key groups in
    its first slots; the other slots are ignored) and `counts` int32 [rows], on one device."""
    table: torch.Tensor
    counts: torch.Tensor
    tokens: int
    heads: int
    query_block: int
    key_group: int

    def __post_init__(self):
        _check_shape(self.tokens, self.heads, self.query_block, self.key_group)
        for name, t in (("table", self.table), ("counts", self.counts)):
            if not isinstance(t, torch.Tensor) or t.dtype != torch.int32:
                raise ValueError(f"{name} must be an int32 torch.Tensor, got "
                                 f"{getattr(t, 'dtype', type(t).__name__)}")
        rows = self.num_rows
        if self.table.dim() != 2 or self.table.shape[0] != rows:
            raise ValueError(f"table must be [rows = heads * ceil(tokens / query_block) = {rows}, capacity], got "
                             f"{tuple(self.table.shape)}")
        if tuple(self.counts.shape) != (rows,):
            raise ValueError(f"counts must be [{rows}], got {tuple(self.counts.shape)}")
        if self.table.device != self.counts.device:
            raise ValueError(f"table and counts must be on one device, got {self.table.device}, {self.counts.device}")

    # ---- shape ----
    @property
    def num_query_blocks(self) -> int:
        return _cdiv(self.tokens, self.query_block)

    @property
    def num_key_groups(self) -> int:
        return _cdiv(self.tokens, self.key_group)

    @property
    def num_rows(self) -> int:
        return self.heads * self.num_query_blocks

    @property
    def capacity(self) -> int:
        return self.table.shape[1]

    @property
    def device(self) -> torch.device:
        return self.table.device

    # ---- construction ----
    @classmethod
    def empty(cls, tokens: int, heads: int, query_block: int, key_group: int, capacity: int,
              device=None) -> "FgPlan":
        """A plan whose rows are all empty (counts 0; table slots uninitialised), to be filled by a mask builder."""
        _check_shape(tokens, heads, query_block, key_group)
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"capacity must be an int >= 0, got {capacity!r}")
        rows = heads * _cdiv(tokens, query_block)
        device = torch.device("cuda") if device is None else torch.device(device)
        return cls(torch.empty(rows, capacity, dtype=torch.int32, device=device),
                   torch.zeros(rows, dtype=torch.int32, device=device), tokens, heads, query_block, key_group)

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[int]], tokens: int, heads: int, query_block: int, key_group: int,
                  device=None, capacity: Optional[int] = None) -> "FgPlan":
        """A plan from one list of key groups per row (heads * ceil(tokens / query_block) lists, each strictly
        ascending in [0, ceil(tokens / key_group))). capacity defaults to the longest row (at least 1)."""
        _check_shape(tokens, heads, query_block, key_group)
        n_rows, groups = heads * _cdiv(tokens, query_block), _cdiv(tokens, key_group)
        rows = [list(map(int, r)) for r in rows]
        if len(rows) != n_rows:
            raise ValueError(f"rows: expected heads * ceil(tokens / query_block) = {n_rows} lists, got {len(rows)}")
        for i, r in enumerate(rows):
            if any(g < 0 or g >= groups for g in r):
                raise ValueError(f"rows[{i}] lists a key group outside [0, {groups}): {r}")
            if any(b <= a for a, b in zip(r, r[1:])):
                raise ValueError(f"rows[{i}] is not strictly ascending: {r}")
        longest = max((len(r) for r in rows), default=0)
        capacity = max(1, longest) if capacity is None else capacity
        if longest > capacity:
            raise ValueError(f"capacity {capacity} is smaller than the longest row ({longest} key groups)")
        table = torch.full((n_rows, capacity), -1, dtype=torch.int32)
        for i, r in enumerate(rows):
            table[i, :len(r)] = torch.tensor(r, dtype=torch.int32)
        counts = torch.tensor([len(r) for r in rows], dtype=torch.int32)
        device = torch.device("cuda") if device is None else torch.device(device)
        return cls(table.to(device), counts.to(device), tokens, heads, query_block, key_group)

    # ---- inspection (torch on the plan's device) ----
    def _valid_slots(self, r0: int, r1: int) -> torch.Tensor:
        """bool [r1 - r0, capacity]: the slots the kernel reads (counts clamped to [0, capacity], groups in range)."""
        t = self.table[r0:r1]
        n = self.counts[r0:r1].clamp(0, self.capacity)
        slot = torch.arange(self.capacity, device=self.device)
        return (slot[None, :] < n[:, None]) & (t >= 0) & (t < self.num_key_groups)

    def _row_chunks(self):
        """Row ranges whose [rows, capacity] temporaries stay near 2^26 elements (large plans)."""
        chunk = max(1, (1 << 26) // max(1, self.capacity))
        return ((r0, min(self.num_rows, r0 + chunk)) for r0 in range(0, self.num_rows, chunk))

    def group_mask(self) -> torch.Tensor:
        """bool [heads, num_query_blocks, num_key_groups]: whether each query block visits each key group."""
        groups = self.num_key_groups
        mask = torch.zeros(self.num_rows, groups + 1, dtype=torch.bool, device=self.device)
        for r0, r1 in self._row_chunks():
            idx = torch.where(self._valid_slots(r0, r1), self.table[r0:r1].long(), groups)  # invalid -> spill column
            mask[r0:r1].scatter_(1, idx, True)
        return mask[:, :groups].view(self.heads, self.num_query_blocks, groups)

    def to_dense_mask(self) -> torch.Tensor:
        """bool [heads, tokens, tokens]: mask[h, i, j] says whether query i of head h sees key j (small plans)."""
        m = self.group_mask().repeat_interleave(self.query_block, 1)[:, :self.tokens]
        return m.repeat_interleave(self.key_group, 2)[:, :, :self.tokens]

    def sparsity(self) -> float:
        """The exact fraction of (query, key) pairs skipped over heads * tokens^2 (partial blocks and groups counted
        by their size); one host synchronization."""
        n, groups, nqb = self.tokens, self.num_key_groups, self.num_query_blocks
        last_group = n - (groups - 1) * self.key_group
        last_block = n - (nqb - 1) * self.query_block
        visited = torch.zeros((), dtype=torch.int64, device=self.device)
        for r0, r1 in self._row_chunks():
            valid = self._valid_slots(r0, r1)
            short = (valid & (self.table[r0:r1] == groups - 1)).sum(1)  # the last, partial group
            keys = valid.sum(1) * self.key_group - short * (self.key_group - last_group)
            rows_in_block = torch.full((r1 - r0,), self.query_block, dtype=torch.int64, device=self.device)
            rows_in_block[(torch.arange(r0, r1, device=self.device) % nqb) == nqb - 1] = last_block
            visited += (keys * rows_in_block).sum()
        return 1.0 - visited.item() / (self.heads * n * n)

    def check(self, stream=None) -> None:
        """Validates the plan with the library's checker (counts in [0, capacity], rows strictly ascending, groups in
        range); raises TileattnArgumentError naming "counts" or "table". Synchronizes; for tests and debugging."""
        if self.device.type != "cuda":
            raise ValueError(f"check() needs a plan on a CUDA device, got {self.device}")
        stream = torch.cuda.current_stream(self.device) if stream is None else stream
        with torch.cuda.device(self.device):
            _ffi.check(_ffi.fg_library().tileattn_check_column_plan(ctypes.byref(self._c_plan()),
                                                                    ctypes.c_void_p(stream.cuda_stream)))

    def _c_plan(self) -> _ffi.ColumnPlan:
        table, counts = self.table.contiguous(), self.counts.contiguous()
        if table.data_ptr() != self.table.data_ptr() or counts.data_ptr() != self.counts.data_ptr():
            raise ValueError("table and counts must be contiguous")
        return _ffi.ColumnPlan(self.tokens, self.heads, self.query_block, self.key_group, self.capacity,
                               table.data_ptr(), counts.data_ptr())


def synthetic_fg_plan(tokens: int, heads: int, query_block: int, key_group: int, sparsity: float,
                      kind: str = "random", video=None, text_len: int = 0, seed: int = 0,
                      capacity: Optional[int] = None, keep_diagonal: bool = True, device=None,
                      out: Optional[FgPlan] = None) -> FgPlan:
    """A synthetic plan built on the GPU (on the current stream; no host synchronization) in which every row keeps
    about 1 - sparsity of the key groups.

    kind="random": each (row, key group) kept independently with probability 1 - sparsity (a hash of seed).
    kind="local": natural-order video of `video` = (T, H, W) tokens followed by text_len text tokens
    (T * H * W + text_len = tokens); a query block keeps the key groups meeting a 3D box around its centre whose sides
    are (1 - sparsity)^(1/3) of the video's, plus every text group; text query blocks keep everything.
    capacity: slots per row, default every key group (no row is cut); a row that would exceed it keeps its first
    capacity groups. keep_diagonal: the key groups of each query block's own positions are always kept.
    out: an existing plan of this shape to write into instead of allocating one (its capacity and device are used;
    for CUDA graphs and benchmarks that rebuild masks in place). Returns the plan written.
    """
    _check_shape(tokens, heads, query_block, key_group)
    if kind not in _KINDS:
        raise ValueError(f"kind must be 'random' or 'local', got {kind!r}")
    sparsity = float(sparsity)
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if isinstance(text_len, bool) or not isinstance(text_len, int) or text_len < 0:
        raise ValueError(f"text_len must be an int >= 0, got {text_len!r}")
    video_arr = None
    if kind == "local":
        if video is None:
            raise ValueError("video must be given (T, H, W) for kind='local'")
        shape = _triple(video, "video")
        if shape[0] * shape[1] * shape[2] + text_len != tokens:
            raise ValueError(f"video {shape} holds {shape[0] * shape[1] * shape[2]} tokens; with text_len {text_len} "
                             f"that is not tokens = {tokens}")
        video_arr = (ctypes.c_int64 * 3)(*shape)
    seed = int(seed)
    if not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    if out is not None:
        if not isinstance(out, FgPlan):
            raise TypeError(f"out must be a tileattn.FgPlan, got {type(out).__name__}")
        if (out.tokens, out.heads, out.query_block, out.key_group) != (tokens, heads, query_block, key_group):
            raise ValueError(f"out is a plan for (tokens, heads, query_block, key_group) = "
                             f"{(out.tokens, out.heads, out.query_block, out.key_group)}, not "
                             f"{(tokens, heads, query_block, key_group)}")
        device = out.device
    device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"device must be a CUDA device, got {device}")
    plan = out if out is not None else FgPlan.empty(tokens, heads, query_block, key_group,
                                                    _cdiv(tokens, key_group) if capacity is None else capacity,
                                                    device)
    lib = _ffi.fg_library()
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device).cuda_stream
        _ffi.check(lib.tileattn_build_synthetic_column_plan(
            ctypes.byref(plan._c_plan()), _KINDS[kind], sparsity, seed, video_arr, text_len, int(bool(keep_diagonal)),
            ctypes.c_void_p(stream)))
    return plan


def fg_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: FgPlan, scale: Optional[float] = None,
                 return_lse: bool = False):
    """Attention in which query block qb of head h sees only the key groups plan lists for (h, qb).

    q/k/v: [B, heads, S, D] CUDA tensors (any strides with D contiguous, e.g. transposed [B, S, H, D] views), bf16 or
    fp16, D in {64, 128}; k/v may have fewer heads (GQA: query head h reads kv head h // (Hq / Hkv)). plan: an FgPlan
    over S tokens and Hq heads on q's device. A query that sees no key gets output 0 (LSE -inf).
    Returns O [B, heads, S, D] (and the fp32 log-sum-exp [B, heads, S] if return_lse). Forward only: differentiating
    raises NotImplementedError.
    """
    ops.check_qkv(q, k, v)
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"kv_heads ({k.shape[1]}) must divide q heads ({q.shape[1]})")
    if not isinstance(plan, FgPlan):
        raise TypeError(f"plan must be a tileattn.FgPlan, got {type(plan).__name__}")
    if plan.tokens != q.shape[2] or plan.heads != q.shape[1]:
        raise ValueError(f"plan is for {plan.tokens} tokens and {plan.heads} heads, q has {q.shape[2]} tokens and "
                         f"{q.shape[1]} heads")
    if plan.device != q.device:
        raise ValueError(f"plan must be on q's device {q.device}, got {plan.device}")
    out, lse = ops.fg_forward(q, k, v, plan.table, plan.counts, plan.query_block, plan.key_group,
                              float(scale or 0.0))
    return (out, lse) if return_lse else out
