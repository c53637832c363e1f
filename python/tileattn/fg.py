"""FG-Attn: attention restricted to a fine-grained column plan, on the GPU (forward only).

A plan (`FgPlan`) cuts the token positions (in whatever order q/k/v hold them) into query blocks of M = query_block
positions and key groups of N = key_group positions, and lists for each (head, query block) the key groups it visits,
ascending, in a fixed-capacity int32 table [rows, capacity] plus a count per row (rows = heads * ceil(tokens / M),
row = head * ceil(tokens / M) + query block). One plan serves every batch element.

    plan = tileattn.synthetic_fg_plan(tokens, heads, 128, 16, sparsity=0.7)   # built on the GPU
    out = tileattn.fg_attention(q, k, v, plan)

Dynamic (training-free) plans estimated from q and k on the GPU, rebuilt every R denoising steps:

    cache = tileattn.FgMaskCache(refresh_interval=5)
    plan = cache.get(step, lambda: tileattn.dynamic_fg_plan(q, k, rule="top_p", p=0.9))
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from . import _ffi, ops
from .plan import flex_block_mask
from .sta import _triple

_QUERY_BLOCKS = (16, 32, 64, 128)
_KINDS = {"random": _ffi.MASK_RANDOM, "local": _ffi.MASK_LOCAL}
_RULES = {"top_p": _ffi.RULE_TOP_P, "top_k": _ffi.RULE_TOP_K, "threshold": _ffi.RULE_THRESHOLD,
          "target_sparsity": _ffi.RULE_TARGET_SPARSITY}


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
    """A fixed-capacity column plan (tileattn.plan's protocol: sparsity, dense_mask, block_mask, to, check_matches): `table` int32 [rows, capacity] (row r lists counts[r] ascending key groups in
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

    def dense_mask(self, device=None) -> torch.Tensor:
        """bool [heads, tokens, tokens] on `device` (default the plan's): mask[h, i, j] says whether query i of head
        h sees key j (small plans)."""
        m = self.group_mask().repeat_interleave(self.query_block, 1)[:, :self.tokens]
        return m.repeat_interleave(self.key_group, 2)[:, :, :self.tokens].to(device or self.device)

    def block_mask(self, device=None):
        """The plan as a FlexAttention BlockMask over the plan's token order: BLOCK_SIZE (query_block, key_group),
        the listed key groups as FULL blocks (compiled FlexAttention may need key_group to be a multiple of its
        own key tile)."""
        groups = self.group_mask().to(device or self.device)

        def mask_mod(b, h, q, k):
            return groups[h, q // self.query_block, k // self.key_group]
        return flex_block_mask(groups, (self.query_block, self.key_group), self.tokens, mask_mod)

    def to(self, device) -> "FgPlan":
        """The plan with table and counts on `device` (the kernel reads them there)."""
        device = torch.device(device)
        return FgPlan(self.table.to(device), self.counts.to(device), self.tokens, self.heads, self.query_block,
                      self.key_group)

    def check_matches(self, q: torch.Tensor) -> None:
        if self.tokens != q.shape[2] or self.heads != q.shape[1]:
            raise ValueError(f"plan is for {self.tokens} tokens and {self.heads} heads, q has {q.shape[2]} tokens "
                             f"and {q.shape[1]} heads")
        if self.device != q.device:
            raise ValueError(f"plan must be on q's device {q.device}, got {self.device}")

    def to_bsr(self, fold_heads: bool = True):
        """The plan as a block-sparse row (BSR) matrix of query_block x key_group blocks, the form of FlashInfer's
        BlockSparseAttentionWrapper.plan(indptr, indices, M, N, R=query_block, C=key_group, ...): (indptr int32
        [num_rows + 1], indices int32 [nnz]) on the plan's device, rows in the plan's order (head-major: row
        h * num_query_blocks + qb), each listing the slots the kernel reads (see _valid_slots), ascending.
        fold_heads=False: indices are key groups of the row's own head (head h's matrix is rows h * num_query_blocks
        ... of indptr, rebased). fold_heads=True: group g of head h becomes h * num_key_groups + g, i.e. one
        block-diagonal matrix over heads folded into the sequence (queries and keys [heads * tokens], one head),
        which is the plan exactly when query_block and key_group both divide tokens. One host synchronization."""
        lengths = torch.empty(self.num_rows, dtype=torch.int64, device=self.device)
        for r0, r1 in self._row_chunks():
            lengths[r0:r1] = self._valid_slots(r0, r1).sum(1)
        indptr = torch.zeros(self.num_rows + 1, dtype=torch.int64, device=self.device)
        torch.cumsum(lengths, 0, out=indptr[1:])
        bounds = indptr.cpu()
        if int(bounds[-1]) >= 2 ** 31:
            raise ValueError(f"the plan lists {int(bounds[-1])} blocks: more than int32 BSR indices hold")
        indices = torch.empty(int(bounds[-1]), dtype=torch.int32, device=self.device)
        for r0, r1 in self._row_chunks():
            t = self.table[r0:r1]
            if fold_heads:
                head = torch.arange(r0, r1, device=self.device, dtype=torch.int32) // self.num_query_blocks
                t = t + (head * self.num_key_groups)[:, None]
            indices[int(bounds[r0]):int(bounds[r1])] = t[self._valid_slots(r0, r1)]
        return indptr.to(torch.int32), indices

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


def _nonnegative_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


def _same_shape_plan(plan, name: str, shape) -> "FgPlan":
    if not isinstance(plan, FgPlan):
        raise TypeError(f"{name} must be a tileattn.FgPlan, got {type(plan).__name__}")
    if (plan.tokens, plan.heads, plan.query_block, plan.key_group) != shape:
        raise ValueError(f"{name} is a plan for (tokens, heads, query_block, key_group) = "
                         f"{(plan.tokens, plan.heads, plan.query_block, plan.key_group)}, not {shape}")
    return plan


def dynamic_fg_plan(q: torch.Tensor, k: torch.Tensor, query_block: int = 128, key_group: int = 16,
                    rule: str = "top_p", p: float = 0.9, k_groups: int = 8, threshold: float = 0.01,
                    target_sparsity: float = 0.5, keep_diagonal: bool = True, always_keep_text: bool = False,
                    text_len: int = 0, window: Optional[FgPlan] = None, capacity: Optional[int] = None,
                    scale: Optional[float] = None, out: Optional[FgPlan] = None, heads_per_pass: int = 0) -> FgPlan:
    """A training-free FG-Attn plan estimated from q and k on the GPU (on the current stream; no host
    synchronization), the GPU version of the CPU oracle build_dynamic_column_plan (tileattn/dynamic_mask_gpu.hpp).

    Estimate: for each (head, query block of query_block rows) the mean query of the block is scored against every key
    of its kv head; a softmax over the keys gives each key group of key_group positions a mass (averaged over the
    batch: one plan serves the batch). Select, per rule:
      "top_p": per row, the fewest groups by descending mass that, with the always-kept ones, reach p (in (0, 1]) of
        the row's eligible mass;
      "top_k": per row, the k_groups (>= 0) groups of highest mass plus the always-kept ones;
      "threshold": per row, every group with mass >= threshold plus the always-kept ones;
      "target_sparsity": per head, one threshold on mass per key so the head's sparsity reaches target_sparsity.
    Always kept: the groups overlapping the query block's own positions (keep_diagonal) and, with always_keep_text,
    the groups holding the last text_len positions (text is last). window: an FgPlan of the output's shape listing
    the eligible groups per row (nothing outside it is kept); None: all groups.

    q/k: [B, heads, S, D] CUDA bf16/fp16 tensors (any strides with D contiguous; k's rows 16-byte aligned), D in
    {64, 128}; k may have fewer heads (GQA). scale: None = 1/sqrt(D).
    capacity: slots per row of the new plan. Default: for "top_k" an upper bound of k_groups + the always-kept groups
    ((query_block - 1) // key_group + 2 diagonal groups, (text_len - 1) // key_group + 2 text groups), else every key
    group; never more than the number of key groups. A row the rule makes longer keeps its capacity groups of highest
    priority (always-kept first, then by mass).
    out: an FgPlan of this shape to rebuild into (its capacity and the device are used; no plan allocation; for reuse
    across steps and CUDA graphs). heads_per_pass: query heads whose masses stay resident at once (0: all, the
    fastest; fewer heads need less workspace). The workspace is a temporary torch uint8 tensor.
    Returns the plan written. Raises ValueError/TypeError or TileattnArgumentError naming the argument.
    """
    for name, t in (("q", q), ("k", k)):
        ops.check_half_tensor(name, t)
    if q.dtype != k.dtype:
        raise TypeError(f"q and k must share a dtype, got {q.dtype}, {k.dtype}")
    if q.device != k.device:
        raise ValueError(f"q and k must be on one device, got {q.device}, {k.device}")
    if k.shape[0] != q.shape[0] or k.shape[2:] != q.shape[2:]:
        raise ValueError(f"shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}")
    if q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"kv_heads ({k.shape[1]}) must divide q heads ({q.shape[1]})")
    batch, heads, tokens, head_dim = q.shape
    _check_shape(tokens, heads, query_block, key_group)
    shape = (tokens, heads, query_block, key_group)
    if rule not in _RULES:
        raise ValueError(f"rule must be one of {sorted(_RULES)}, got {rule!r}")
    _nonnegative_int(k_groups, "k_groups")
    _nonnegative_int(text_len, "text_len")
    _nonnegative_int(heads_per_pass, "heads_per_pass")
    if window is not None:
        _same_shape_plan(window, "window", shape)
        if window.device != q.device:
            raise ValueError(f"window must be on q's device {q.device}, got {window.device}")
    groups = _cdiv(tokens, key_group)
    if out is not None:
        _same_shape_plan(out, "out", shape)
        if out.device != q.device:
            raise ValueError(f"out must be on q's device {q.device}, got {out.device}")
        if capacity is not None and capacity != out.capacity:
            raise ValueError(f"capacity ({capacity}) differs from out's capacity ({out.capacity}); leave it None")
    elif capacity is None:
        capacity = groups
        if rule == "top_k":
            forced = ((query_block - 1) // key_group + 2 if keep_diagonal else 0) + \
                     ((text_len - 1) // key_group + 2 if always_keep_text and text_len > 0 else 0)
            capacity = min(groups, k_groups + forced)
    plan = out if out is not None else FgPlan.empty(tokens, heads, query_block, key_group, capacity, q.device)

    a = _ffi.DynamicMaskArgs()
    a.abi_version = _ffi.ABI_VERSION
    a.dtype = ops._DTYPES[q.dtype]
    a.batch, a.q_heads, a.kv_heads, a.head_dim = batch, heads, k.shape[1], head_dim
    a.q, a.k = ops._tensor_desc(q), ops._tensor_desc(k)
    a.scale = float(scale or 0.0)
    a.rule = _RULES[rule]
    a.p, a.top_k, a.threshold, a.target_sparsity = float(p), k_groups, float(threshold), float(target_sparsity)
    a.keep_diagonal, a.always_keep_text, a.text_len = int(bool(keep_diagonal)), int(bool(always_keep_text)), text_len
    c_window = window._c_plan() if window is not None else None  # kept alive for the call
    a.window = ctypes.pointer(c_window) if c_window is not None else None
    c_out = plan._c_plan()
    lib = _ffi.dynamic_mask_library()
    bytes_ = ctypes.c_int64(0)
    _ffi.check(lib.tileattn_dynamic_mask_workspace_bytes(ctypes.byref(a), ctypes.byref(c_out), heads_per_pass,
                                                         ctypes.byref(bytes_)))
    with torch.cuda.device(q.device):
        workspace = torch.empty(bytes_.value, dtype=torch.uint8, device=q.device)  # the allocator aligns to 512
        a.workspace, a.workspace_bytes = workspace.data_ptr(), bytes_.value
        stream = torch.cuda.current_stream(q.device).cuda_stream
        _ffi.check(lib.tileattn_build_dynamic_column_plan(ctypes.byref(a), ctypes.byref(c_out),
                                                          ctypes.c_void_p(stream)))
    return plan


class FgMaskCache:
    """Reuses an FgPlan across denoising steps with the C++ MaskCache's policy (tileattn/dynamic_mask.hpp):
    get(step, build) calls build() when there is no plan yet, when step - built_step >= refresh_interval, or when
    step < built_step (a new sampling run); otherwise it returns the cached plan. With refresh_interval R and steps 0,
    1, 2, ... it builds at 0, R, 2R, ... A build that raises leaves the cache empty. Pure Python; holds one plan (use
    one cache per attention layer)."""

    def __init__(self, refresh_interval: int):
        self._refresh_interval = _positive_int(refresh_interval, "refresh_interval")
        self._plan = None
        self._built_step = -1

    @property
    def refresh_interval(self) -> int:
        return self._refresh_interval

    @property
    def built_step(self) -> int:
        """The step of the cached plan; -1 when empty."""
        return self._built_step

    @property
    def has_plan(self) -> bool:
        return self._plan is not None

    def get(self, step: int, build: Callable[[], FgPlan]) -> FgPlan:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        if not callable(build):
            raise TypeError(f"build must be callable, got {type(build).__name__}")
        if self._plan is None or step < self._built_step or step - self._built_step >= self._refresh_interval:
            self.clear()  # a raising builder leaves the cache empty rather than stale
            self._plan = build()
            self._built_step = step
        return self._plan

    def clear(self) -> None:
        self._plan = None
        self._built_step = -1


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
    plan.check_matches(q)
    out, lse = ops.fg_forward(q, k, v, plan.table, plan.counts, plan.query_block, plan.key_group,
                              float(scale or 0.0))
    return (out, lse) if return_lse else out
