"""The plan protocol: what every sparse-attention plan of tileattn (StaPlan, FgPlan) offers, so tests, baselines and
benchmarks take masks from the plan the kernel runs instead of re-deriving them.

    plan.tokens, plan.heads      the shape it serves (heads None: one pattern shared by every head)
    plan.sparsity()              the exact fraction of (query, key) pairs skipped, over heads * tokens^2
    plan.dense_mask(device)      bool [heads or 1, tokens, tokens], True = the query sees the key (small plans)
    plan.block_mask(device)      the same pattern as a FlexAttention BlockMask
    plan.to(device)              the plan with its device form (what the op consumes) on `device`
    plan.check_matches(q)        ValueError naming "plan" unless it serves q [B, heads, tokens, D]
"""
from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

import torch


@runtime_checkable
class AttentionPlan(Protocol):
    tokens: int
    heads: Optional[int]

    def sparsity(self) -> float:
        """Skipped (query, key) pairs / (heads * tokens^2), partial tiles, blocks and groups counted by their size."""

    def dense_mask(self, device=None) -> torch.Tensor:
        """bool [heads (1 when shared), tokens, tokens] in the token order the plan's op reads by default."""

    def block_mask(self, device=None):
        """torch.nn.attention.flex_attention.BlockMask of the pattern (see each plan for its token order)."""

    def to(self, device) -> "AttentionPlan":
        """The plan with its device form on `device`."""

    def check_matches(self, q: torch.Tensor) -> None:
        """Raises ValueError naming "plan" unless the plan serves q's heads and tokens (and device)."""


def flex_block_mask(blocks: torch.Tensor, block_size, tokens: int, mask_mod):
    """A FlexAttention BlockMask whose visited blocks are all FULL: blocks bool [heads, query blocks, key blocks]
    (heads 1: shared), block_size an int or (query rows, key columns). Compiled FlexAttention runs the full blocks
    without calling mask_mod; eager FlexAttention applies only mask_mod, so it must give the same pattern token by
    token."""
    from torch.nn.attention.flex_attention import BlockMask
    counts = blocks.sum(-1, dtype=torch.int32)[None]
    # Visited key blocks first, ascending (a stable sort of "not visited").
    indices = torch.sort((~blocks).to(torch.uint8), dim=-1, stable=True).indices.to(torch.int32)[None]
    return BlockMask.from_kv_blocks(torch.zeros_like(counts), indices, counts, indices, BLOCK_SIZE=block_size,
                                    mask_mod=mask_mod, seq_lengths=(tokens, tokens))
