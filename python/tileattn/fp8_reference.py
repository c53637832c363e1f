"""The FP8 STA forward's numerics emulated in PyTorch on the CPU (docs/DESIGN.md "FP8 STA forward"): what
sta_attention(..., precision="fp8") computes on CPU tensors, and the oracle the GPU kernel's error is judged against.

    python -m tileattn.fp8_reference --report     # rel L2 / cosine / LSE error of every case of REPORT_CASES

Everything is computed in fp32 (the kernel's accumulators), with the operands rounded exactly where the kernel
rounds them: Q and K to int8 (round to nearest even, |x| <= 127), V and P to e4m3 (torch.float8_e4m3fn, round to
nearest even, saturated to +-448). `exact_sta_attention` is the float64
reference without any rounding: both read which keys a query sees from StaPlan.dense_mask.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import torch

E4M3_MAX = 448.0  # e4m3's largest finite value (V, P)
INT8_MAX = 127.0  # Q, K: symmetric int8
GROUP_ROWS = 64   # rows of one Q / K scale group: one consumer warpgroup's rows
P_SHIFT = 6       # probabilities are produced as 2^6 P (the kernel's kProbabilityLog2Scale), in e4m3's range

__all__ = ["sta_attention_fp8_reference", "exact_sta_attention", "padded_rows", "e4m3", "int8", "Case", "REPORT_CASES",
           "case_inputs", "compare", "report"]


def e4m3(x: torch.Tensor) -> torch.Tensor:
    """x rounded to e4m3 (nearest even, saturating to the largest finite value), back in fp32."""
    return x.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).to(torch.float32)


def int8(x: torch.Tensor) -> torch.Tensor:
    """x rounded to the nearest integer (ties to even) and clamped to [-127, 127], in fp32."""
    return torch.round(x).clamp(-INT8_MAX, INT8_MAX)


def padded_rows(plan) -> Tuple[torch.Tensor, int]:
    """(row, rows): the row of each token (natural order) in the pre-pass's padded tile-major copies, and their row
    count. Tile i (row-major over the ceil tile grid) holds rows [i * V, (i + 1) * V), V = the tile's volume, a token
    at (a, b, c) inside its tile at row i * V + (a * th + b) * tw + c: rows of a partial tile past the video edge are
    holes (zeros), where a 3D TMA box over the tile puts them. Then the text, padded to a multiple of 64 rows. Scale
    groups are 64 consecutive rows from row 0 (so with tile volumes that are multiples of 64, as the GPU's, a group
    never straddles tiles or the text's start)."""
    T, H, W = plan.video_shape
    tt, th, tw = plan.tile
    gt, gh, gw = plan.grid
    t = torch.arange(T)[:, None, None]
    h = torch.arange(H)[None, :, None]
    w = torch.arange(W)[None, None, :]
    volume = tt * th * tw
    tile_index = ((t // tt) * gh + h // th) * gw + w // tw
    within = ((t % tt) * th + h % th) * tw + w % tw
    video = (tile_index * volume + within).reshape(-1)
    video_rows = gt * gh * gw * volume
    text = video_rows + torch.arange(plan.text_len)
    return torch.cat([video, text]), video_rows + -(-plan.text_len // GROUP_ROWS) * GROUP_ROWS


def _group_scales(x: torch.Tensor, group: torch.Tensor, groups: int) -> torch.Tensor:
    """Per token of x [B, H, S, D]: max|x| over its 64-row group (all D channels) / 127, 1 for an all-zero group."""
    row_max = x.abs().amax(-1)                                                     # [B, H, S]
    index = group.expand_as(row_max)
    g = torch.zeros(*row_max.shape[:2], groups, dtype=x.dtype).scatter_reduce(-1, index, row_max, "amax")
    s = torch.where(g > 0, g / INT8_MAX, torch.ones_like(g))
    return s.gather(-1, index)[..., None]                                        # [B, H, S, 1]


def _key_valid(plan, batch: int, text_valid: Optional[torch.Tensor]) -> torch.Tensor:
    """bool [B, S]: video keys, and text keys below text_valid[b] (clamped to [0, text_len])."""
    n_video = math.prod(plan.video_shape)
    valid = torch.ones(batch, plan.tokens, dtype=torch.bool)
    if text_valid is not None:
        limit = text_valid.to(torch.int64).cpu().clamp(0, plan.text_len)
        valid[:, n_video:] = torch.arange(plan.text_len)[None] < limit[:, None]
    return valid


def _visible(plan, batch: int, text_valid) -> torch.Tensor:
    """bool [B, heads or 1, S, S]: query i sees key j (the plan's pattern, and text validity)."""
    return plan.dense_mask()[None] & _key_valid(plan, batch, text_valid)[:, None, None, :]


def _scale(q: torch.Tensor, scale: Optional[float]) -> float:
    return float(scale) if scale else 1.0 / math.sqrt(q.shape[-1])


def sta_attention_fp8_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan,
                                text_valid: Optional[torch.Tensor] = None, return_lse: bool = False,
                                scale: Optional[float] = None, *, smooth_k: bool = True, smooth_v: bool = True,
                                balance: bool = True, rounded: str = "qkvp"):
    """The FP8 STA forward (docs/DESIGN.md "FP8 STA forward"), emulated: q [B, Hq, S, D], k/v [B, Hkv, S, D] in the
    natural token order of `plan` (a tileattn.StaPlan), any float dtype (computed in fp32). Returns O in q's dtype
    (and the fp32 natural-log LSE [B, Hq, S] if return_lse).

    Per batch element and kv head: K smoothed by m_k = its mean over the valid keys (video, and text below
    text_valid), invalid keys zeros; per channel the balance b = sqrt(max|q| / max|k - m_k|) (max over every query
    of the kv head's q heads and over the valid keys; 1 where either is 0), Q divided and K multiplied by it (no
    product q . k changes). Then over the padded tile-major rows (padded_rows): Q and K in 64-row groups, one scale
    max|x| / 127 each, rounded to int8; V smoothed by m_v = its mean over the valid keys, one scale per channel
    (max |v - m_v| over valid keys / 448), rounded to e4m3. Scores (q8 . k8) s_q s_k in fp32 (the int8 products are
    exact), times softmax_scale * log2(e); probabilities produced as 2^6 P = exp2(x - max + 6), rounded to e4m3 for
    the PV product, their row sums l taken over those rounded values (the kernel's P x ones GEMM);
    O = (P8 v8) s_v / l + m_v (the rows' weights sum to 1, so the smoothing is undone exactly);
    LSE = (max + log2(l) - 6) ln 2 + softmax_scale (q . m_k), q unquantized, which undoes K's smoothing.

    One difference from the kernel: the softmax here uses each row's final maximum, where the kernel's online
    softmax quantizes each key block's probabilities against a running maximum (raised lazily, so probabilities
    may reach 2^8.75, and its fp32 accumulator rescaled when it is raised). e4m3 is a floating-point format, so the two differ only
    in rounding (and in which tiny probabilities fall below e4m3's smallest subnormal, 2^-9 of 2^6).

    Knobs that are not what the kernel does, for the tests and the error budget (--report): smooth_k=False skips
    the K smoothing (m_k = 0), smooth_v=False V's (m_v = 0) and balance=False the channel balance (b = 1), to show
    what each buys; `rounded` lists
    the operands rounded ("qkvp": all; "" keeps every scale and shift but rounds nothing, which must then equal the
    exact attention).
    """
    if set(rounded) - set("qkvp"):
        raise ValueError(f"rounded must be a subset of 'qkvp', got {rounded!r}")

    def rnd(x, operand):
        if operand not in rounded:
            return x
        return int8(x) if operand in "qk" else e4m3(x)

    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or not t.is_floating_point():
            raise ValueError(f"{name} must be a float tensor [batch, heads, tokens, head_dim]")
    plan.check_matches(q)
    batch, q_heads, tokens, head_dim = q.shape
    kv_heads = k.shape[1]
    if q_heads % kv_heads != 0 or k.shape != v.shape or k.shape[0] != batch or k.shape[2:] != q.shape[2:]:
        raise ValueError(f"shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    qf, kf, vf = (t.detach().cpu().to(torch.float32) for t in (q, k, v))
    rows, n_rows = padded_rows(plan)
    group = (rows // GROUP_ROWS)[None, None]                                     # [1, 1, S]
    groups = -(-n_rows // GROUP_ROWS)
    valid = _key_valid(plan, batch, text_valid)[:, None, :, None].to(torch.float32)  # [B, 1, S, 1]

    g = q_heads // kv_heads
    # K smoothed over the valid keys, invalid keys zeros; the channel balance of Q and K.
    if smooth_k:
        m_k = (kf * valid).sum(2, keepdim=True) / valid.sum(2, keepdim=True)     # [B, Hkv, 1, D]
    else:
        m_k = torch.zeros(batch, kv_heads, 1, head_dim)
    ks = (kf - m_k) * valid
    if balance:
        k_range = ks.abs().amax(2, keepdim=True)                                 # [B, Hkv, 1, D]
        q_range = qf.abs().amax(2, keepdim=True).view(batch, kv_heads, g, 1, head_dim).amax(2)
        b = torch.where((q_range > 0) & (k_range > 0), torch.sqrt(q_range / k_range), torch.ones_like(k_range))
    else:
        b = torch.ones(batch, kv_heads, 1, head_dim)
    qb, ks = qf / b.repeat_interleave(g, 1), ks * b
    # Q and K: per 64-row group scales.
    s_q = _group_scales(qb, group, groups)
    q8 = rnd(qb / s_q, "q")
    s_k = _group_scales(ks, group, groups)
    k8 = rnd(ks / s_k, "k")
    # V: smoothed over the valid keys, one scale per channel.
    if smooth_v:
        m_v = (vf * valid).sum(2, keepdim=True) / valid.sum(2, keepdim=True)     # [B, Hkv, 1, D]
    else:
        m_v = torch.zeros(batch, kv_heads, 1, head_dim)
    vs = (vf - m_v) * valid
    v_max = vs.abs().amax(2, keepdim=True)                                       # [B, Hkv, 1, D]
    s_v = torch.where(v_max > 0, v_max / E4M3_MAX, torch.ones_like(v_max))
    v8 = rnd(vs / s_v, "v")

    k8, s_k, v8, s_v, m_k, m_v = (t.repeat_interleave(g, 1) for t in (k8, s_k, v8, s_v, m_k, m_v))
    softmax_scale = _scale(q, scale)
    x = (q8 @ k8.transpose(-1, -2)) * (s_q * s_k.transpose(-1, -2)) * (softmax_scale * math.log2(math.e))
    x = x.masked_fill(~_visible(plan, batch, text_valid), -math.inf)
    row_max = x.amax(-1, keepdim=True)                                           # every query sees >= 1 key
    p8 = rnd(torch.exp2(x - row_max + P_SHIFT), "p")
    l = p8.sum(-1, keepdim=True)
    out = (p8 @ v8) * s_v / l + m_v
    out = out.to(q.dtype)
    if not return_lse:
        return out
    lse = ((row_max + torch.log2(l) - P_SHIFT) * math.log(2.0)).squeeze(-1) \
        + softmax_scale * (qf * m_k).sum(-1)
    return out, lse


def exact_sta_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan,
                        text_valid: Optional[torch.Tensor] = None, return_lse: bool = False,
                        scale: Optional[float] = None):
    """STA in float64 without any rounding, over plan.dense_mask: O [B, Hq, S, D] float64 (and the LSE)."""
    g = q.shape[1] // k.shape[1]
    qd, kd, vd = q.detach().cpu().double(), k.detach().cpu().double(), v.detach().cpu().double()
    kd, vd = kd.repeat_interleave(g, 1), vd.repeat_interleave(g, 1)
    s = (qd @ kd.transpose(-1, -2)) * _scale(q, scale)
    s = s.masked_fill(~_visible(plan, q.shape[0], text_valid), -math.inf)
    lse = torch.logsumexp(s, -1)
    out = torch.exp(s - lse[..., None]) @ vd
    return (out, lse) if return_lse else out


# ---- the cases the tests assert on and --report prints ----

@dataclass(frozen=True)
class Case:
    name: str
    video: Tuple[int, int, int] = (3, 5, 7)    # partial tiles of (2, 4, 4) along every axis
    tile: Tuple[int, int, int] = (2, 4, 4)
    window: Optional[Tuple[int, int, int]] = (1, 1, 1)
    text: int = 7
    text_valid: Optional[Tuple[int, ...]] = None
    head_dim: int = 64
    q_heads: int = 2
    kv_heads: int = 2
    batch: int = 2
    # DiT-like: K with a large offset per channel (20 randn(D)), and 3 outlier channels x10 in Q and 3 others in K
    # ("disjoint"; attention logits of std ~3) or the same 3 in both ("shared": logits of std ~20, near one-hot rows)
    dit: Optional[str] = None
    seed: int = 0


# What the tests assert on (tests/test_sta_fp8.py) and --report prints.
REPORT_CASES = (
    Case("normal"),
    Case("normal-d128", head_dim=128),
    Case("normal-text0", text=0),
    Case("normal-text130-valid", text=130, text_valid=(130, 61)),
    Case("normal-gqa", q_heads=4, kv_heads=2, text_valid=(3, 7)),
    Case("normal-dense", window=None, video=(2, 4, 8), tile=(2, 4, 4)),
    Case("dit", dit="disjoint"),
    Case("dit-d128", dit="disjoint", head_dim=128),
    Case("dit-text0", dit="disjoint", text=0),
    Case("dit-text130-valid", dit="disjoint", text=130, text_valid=(0, 97)),
    Case("dit-gqa-d128", dit="disjoint", q_heads=4, kv_heads=2, head_dim=128, text_valid=(7, 2)),
    Case("dit-shared", dit="shared"),
    Case("dit-shared-d128", dit="shared", head_dim=128),
)


def case_inputs(case: Case):
    """(q, k, v, plan, text_valid) of a case, fp32, from its seed."""
    from .sta import StaPlan
    gen = torch.Generator().manual_seed(case.seed)
    plan = StaPlan(case.video, case.window, case.tile, case.text)
    shape_q = (case.batch, case.q_heads, plan.tokens, case.head_dim)
    shape_kv = (case.batch, case.kv_heads, plan.tokens, case.head_dim)
    q = torch.randn(shape_q, generator=gen)
    k = torch.randn(shape_kv, generator=gen)
    v = torch.randn(shape_kv, generator=gen)
    if case.dit is not None:
        channels = torch.randperm(case.head_dim, generator=gen)
        q[..., channels[:3]] *= 10.0
        k[..., channels[:3] if case.dit == "shared" else channels[3:6]] *= 10.0
        k = k + 20.0 * torch.randn(case.head_dim, generator=gen)   # a large offset per channel
    text_valid = torch.tensor(case.text_valid, dtype=torch.int32) if case.text_valid is not None else None
    return q, k, v, plan, text_valid


def compare(case: Case, smooth_k: bool = True, balance: bool = True, rounded: str = "qkvp") -> dict:
    """The emulation against the exact float64 attention: rel_l2 and cosine of O (flattened), lse_max and lse_rms
    (the LSE's largest and root-mean-square absolute error)."""
    q, k, v, plan, text_valid = case_inputs(case)
    out, lse = sta_attention_fp8_reference(q, k, v, plan, text_valid, return_lse=True, smooth_k=smooth_k,
                                           balance=balance, rounded=rounded)
    ref, ref_lse = exact_sta_attention(q, k, v, plan, text_valid, return_lse=True)
    a, b = out.double().flatten(), ref.flatten()
    lse_err = lse.double() - ref_lse
    return {"rel_l2": ((a - b).norm() / b.norm()).item(),
            "cosine": torch.nn.functional.cosine_similarity(a, b, dim=0).item(),
            "lse_max": lse_err.abs().max().item(), "lse_rms": lse_err.pow(2).mean().sqrt().item()}


def report(cases=REPORT_CASES) -> str:
    """One line per case: the emulation's errors, the rel L2 of each operand's rounding alone (the error budget), and
    the errors without K smoothing and without the channel balance."""
    lines = [f"{'case':<24} {'rel L2':>7} {'cosine':>8} {'LSE max':>7} {'LSE rms':>7} | rounding only "
             f"{'q':>6} {'k':>6} {'v':>6} {'p':>6} | no smoothing {'rel L2':>7} | no balance {'rel L2':>7}"]
    for case in cases:
        r, n, nb = compare(case), compare(case, smooth_k=False), compare(case, balance=False)
        alone = [compare(case, rounded=x)["rel_l2"] for x in "qkvp"]
        lines.append(f"{case.name:<24} {r['rel_l2']:>7.4f} {r['cosine']:>8.5f} {r['lse_max']:>7.4f} "
                     f"{r['lse_rms']:>7.4f} | {'':>13} " + " ".join(f"{x:>6.4f}" for x in alone)
                     + f" | {'':>12} {n['rel_l2']:>7.4f} | {'':>10} {nb['rel_l2']:>7.4f}")
    return "\n".join(lines)


def _iter_cases(names) -> Iterator[Case]:
    by_name = {c.name: c for c in REPORT_CASES}
    for name in names or by_name:
        if name not in by_name:
            raise SystemExit(f"unknown case {name!r}; cases: {', '.join(by_name)}")
        yield by_name[name]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", action="store_true", help="print the error figures of the report cases")
    parser.add_argument("cases", nargs="*", help="case names (default: all)")
    args = parser.parse_args()
    if not args.report:
        parser.error("nothing to do (give --report)")
    print(report(tuple(_iter_cases(args.cases))))
