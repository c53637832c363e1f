#!/usr/bin/env python3
"""Fine-tuning a small video DiT with fixed Sliding Tile Attention (STA) windows.

STA is meant to be used by fine-tuning a model that was trained with dense attention: every attention layer is
switched to fixed 3D windows of tiles and training continues for a while. This script is a self-contained, synthetic
version of that recipe that runs on one Hopper GPU in a few minutes.

The task
    Denoising of a latent "video" of shape T x H x W with C channels. The clean latent x0 is a smooth random 3D
    field (a sum of random low-frequency cosines over (t, h, w); the shortest wavelength is two tiles per axis), so
    a token's neighbourhood holds most of what is needed to denoise it. With --text-len > 0 each sample also has a
    "prompt": a random vector added to the whole field as a constant offset, and shown to the model only through
    text tokens appended after the video tokens (a fixed random linear map of the prompt). The noisy input is
    x0 + sigma * noise with log-uniform sigma. The model is an EDM-preconditioned denoiser (Karras et al. 2022,
    sigma_data = 1) and the loss is EDM's weighted MSE, i.e. the MSE of the network's raw output against its
    target; it is about 1 for the zero-initialised model. Batches are generated on the GPU from a seed per step,
    so every run sees the same data in the same order.

The model
    A DiT-style stack (adaLN-Zero modulation from a noise-level embedding, QK-RMSNorm, 3D rotary position
    embedding on q/k as in HunyuanVideo and Wan, GELU MLP) with fp32 parameters run under bf16 autocast and a
    fused AdamW. The attention call is pluggable: dense torch.nn.functional.scaled_dot_product_attention or
    tileattn.sta_attention (forward and backward run tileattn's STA kernels; q/k/v are the model's strided
    [B, heads, S, D] views).

The experiment
    1. Pretrain with dense attention for --steps-pretrain steps.
    2. Copy the model and its optimizer state twice and continue for --steps-finetune steps, (a) with dense
       attention and (b) with STA windows (--window, in tiles). The two branches step in turn on the same batch.
    3. Evaluate on a fixed held-out set (sigmas log-spaced over the training range) every --eval-every steps. The
       STA branch's evaluation at fine-tuning step 0 is the "zero-shot" quality of the dense model run with STA.
    Step times (forward + backward + optimizer, CUDA events) and an attention-only microbenchmark (one layer's
    attention call, forward + backward) are medians after warm-up. Before training, STA's output and gradients are
    compared with a masked fp32 SDPA reference on a small shape.

Outputs (in --out): finetune.json (configuration, per-step losses, evaluations, timings, GPU and versions),
finetune_loss.svg (hand-written, no dependency) and finetune_loss.png when matplotlib is importable.

    python3 examples/finetune_sta.py --out finetune_out            # on a Hopper GPU with libtileattn built
    python3 examples/finetune_sta.py --dry-run --out /tmp/ft-dry   # anywhere with PyTorch (CPU is fine): the
                                                                   # STA run uses SDPA with the STA mask instead

Exit codes: 0 done; 2 tileattn, its GPU kernels or its backward are unavailable (try --dry-run); 3 the run finished
but STA disagreed with the masked reference in the pre-training check.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import html
import importlib
import importlib.util
import json
import math
import pathlib
import platform
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = pathlib.Path(__file__).resolve().parent.parent
Triple = tuple

# Defaults for the H100 run (about 1-2 minutes) and for --dry-run (a small CPU-sized smoke test). A flag given on the
# command line always wins.
FULL_DEFAULTS = dict(video=(18, 32, 48), tile=(6, 8, 8), window=(3, 3, 3), text_len=32, layers=4, hidden=768,
                     heads=6, channels=16, batch=1, steps_pretrain=150, steps_finetune=200, eval_every=25,
                     eval_samples=8, warmup_steps=10)
DRY_RUN_DEFAULTS = dict(video=(4, 16, 16), tile=(2, 4, 4), window=(1, 3, 3), text_len=8, layers=2, hidden=64,
                        heads=2, channels=8, batch=2, steps_pretrain=30, steps_finetune=30, eval_every=10,
                        eval_samples=4, warmup_steps=3)
SIGMA_RANGE = (0.1, 3.0)
FIELD_COMPONENTS = 32     # cosines per sample in the clean field
PROMPT_SCALE = 0.5        # std of the per-sample offset carried by the text tokens
CHECK_TOLERANCE = 3e-2    # relative L2, bf16 STA vs fp32 masked SDPA (output and gradients)


# ---------------------------------------------------------------------------------------------------------------------
# Geometry of STA: tileattn.StaPlan (the library's window rule, README "Window semantics")

def grid_of(video: Triple, tile: Triple) -> Triple:
    return tuple(-(-v // t) for v, t in zip(video, tile))


def import_tileattn():
    """The tileattn package (installed, else this checkout's python/); its plan objects need no library or GPU."""
    try:
        return importlib.import_module("tileattn")
    except ImportError:
        sys.path.insert(0, str(REPO / "python"))
        return importlib.import_module("tileattn")


def sta_plan(video: Triple, tile: Triple, window: Triple, text_len: int):
    """The tileattn.StaPlan of one window for every head; a window axis wider than the grid becomes the full axis.
    Its sparsity, dense mask (the reference check and --dry-run) and the kernel all follow the library's rule."""
    window = tuple(min(w, n) for w, n in zip(window, grid_of(video, tile)))
    return import_tileattn().StaPlan(video, window, tile, text_len)


# ---------------------------------------------------------------------------------------------------------------------
# Attention backends: callables (q, k, v) -> o on [B, heads, S, head_dim]

def dense_attention(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def make_sta_attention(tileattn, plan):
    def sta_attention(q, k, v):
        return tileattn.sta_attention(q, k, v, plan=plan)
    return sta_attention


def make_masked_attention(mask: torch.Tensor):
    """SDPA restricted by an explicit STA mask: the --dry-run stand-in for tileattn (slow, memory ~ S^2)."""
    def masked_attention(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return masked_attention


# ---------------------------------------------------------------------------------------------------------------------
# Model

def sinusoidal_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[N] -> [N, dim] (cos, sin) features at geometrically spaced frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half)
    angles = values.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def rope_3d_tables(video: Triple, text_len: int, head_dim: int, theta: float = 10000.0):
    """cos, sin [S, head_dim] of a 3D rotary embedding (as in HunyuanVideo / Wan): the pairs of head_dim are split
    between t, h and w; video tokens in natural order, text tokens unrotated (cos 1, sin 0)."""
    per_axis = (head_dim // 3) // 2 * 2
    dims = (head_dim - 2 * per_axis, per_axis, per_axis)  # t, h, w (all even)
    axes = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in video), indexing="ij")
    angles = []
    for axis, d in zip(axes, dims):
        freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        angles.append(axis.reshape(-1, 1) * freqs[None, :])
    angles = torch.cat(angles, dim=-1)                                            # [N, head_dim / 2]
    angles = torch.cat([angles, torch.zeros(text_len, angles.shape[1], dtype=torch.float64)], dim=0)
    angles = torch.cat([angles, angles], dim=-1)                                  # rotate-half layout
    return torch.cos(angles).float(), torch.sin(angles).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, S, D] rotated in fp32, returned in x's dtype."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


class RMSNorm(nn.Module):
    """RMS norm computed in fp32, returned in the input's dtype (so q/k stay bf16 under autocast)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight).to(x.dtype)


class DiTBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.heads = heads
        self.head_dim = hidden // heads
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(hidden, mlp_ratio * hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * hidden, hidden))
        self.modulation = nn.Linear(hidden, 6 * hidden)  # adaLN-Zero: shift, scale, gate for attention and MLP

    def forward(self, x: torch.Tensor, cond: torch.Tensor, rope, attention) -> torch.Tensor:
        batch, tokens, _ = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(cond)).unsqueeze(1).chunk(6, dim=-1)
        h = self.norm1(x) * (1 + scale1) + shift1
        qkv = self.qkv(h).view(batch, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, heads, S, head_dim] strided views, head_dim contiguous
        o = attention(apply_rope(self.q_norm(q), *rope), apply_rope(self.k_norm(k), *rope), v)
        x = x + gate1 * self.proj(o.transpose(1, 2).reshape(batch, tokens, -1))
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.mlp(h)


class VideoDiT(nn.Module):
    """Video tokens (natural (t, h, w) order) followed by optional text tokens; predicts the video part."""

    def __init__(self, video: Triple, channels: int, text_len: int, layers: int, hidden: int, heads: int):
        super().__init__()
        self.n_video = math.prod(video)
        self.video_in = nn.Linear(channels, hidden)
        self.text_in = nn.Linear(channels, hidden) if text_len > 0 else None
        cos, sin = rope_3d_tables(video, text_len, hidden // heads)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.time_embed = nn.Sequential(nn.Linear(256, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads) for _ in range(layers))
        self.final_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Linear(hidden, 2 * hidden)
        self.out = nn.Linear(hidden, channels)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        for module in [b.modulation for b in self.blocks] + [self.final_modulation, self.out]:
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor, text, c_noise: torch.Tensor, attention) -> torch.Tensor:
        h = self.video_in(x)
        if self.text_in is not None:
            h = torch.cat([h, self.text_in(text).to(h.dtype)], dim=1)
        cond = self.time_embed(sinusoidal_embedding(c_noise * 1000.0, 256))
        for block in self.blocks:
            h = block(h, cond, (self.rope_cos, self.rope_sin), attention)
        shift, scale = self.final_modulation(F.silu(cond)).unsqueeze(1).chunk(2, dim=-1)
        return self.out(self.final_norm(h[:, :self.n_video]) * (1 + scale) + shift)


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic data and the EDM loss

class SyntheticVideoData:
    """Smooth random fields over (t, h, w), optional prompt offsets shown through text tokens, Gaussian noise."""

    def __init__(self, video: Triple, tile: Triple, channels: int, text_len: int, device, seed: int):
        self.channels = channels
        self.text_len = text_len
        self.device = device
        axes = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in video), indexing="ij")
        self.coords = torch.stack([a.reshape(-1) for a in axes], dim=-1).to(device)  # [N, 3] in tokens
        self.max_freq = torch.tensor([0.5 / t for t in tile], device=device)          # cycles/token: >= 2 tiles
        g = torch.Generator().manual_seed(seed)
        self.text_map = (torch.randn(text_len, channels, channels, generator=g) / math.sqrt(channels)).to(device)

    def sample(self, batch: int, generator: torch.Generator, sigmas=None) -> dict:
        dev, k = self.device, FIELD_COMPONENTS
        freqs = (torch.rand(batch, k, 3, generator=generator, device=dev) * 2 - 1) * self.max_freq
        phases = torch.rand(batch, 1, k, generator=generator, device=dev) * (2 * math.pi)
        amps = torch.randn(batch, k, self.channels, generator=generator, device=dev) * math.sqrt(2.0 / k)
        # [B, N, K] phase angles, summed elementwise (a TF32 matmul would round the coordinates)
        angles = 2 * math.pi * (self.coords[None, :, None, :] * freqs[:, None, :, :]).sum(-1) + phases
        x0 = torch.cos(angles) @ amps                                                  # [B, N, C], ~unit variance
        text = None
        if self.text_len > 0:
            prompt = torch.randn(batch, self.channels, generator=generator, device=dev) * PROMPT_SCALE
            x0 = x0 + prompt[:, None, :]
            text = torch.einsum("bc,lcd->bld", prompt, self.text_map)
        if sigmas is None:
            lo, hi = (math.log(s) for s in SIGMA_RANGE)
            sigmas = torch.exp(lo + (hi - lo) * torch.rand(batch, generator=generator, device=dev))
        noise = torch.randn(x0.shape, generator=generator, device=dev)
        return {"x0": x0, "noisy": x0 + sigmas[:, None, None] * noise, "sigma": sigmas, "text": text}


def slice_batch(data: dict, start: int, stop: int) -> dict:
    return {key: (None if value is None else value[start:stop]) for key, value in data.items()}


def loss_per_sample(model: VideoDiT, data: dict, attention) -> torch.Tensor:
    """EDM (sigma_data = 1): D = c_skip x + c_out F(c_in x); loss = |D - x0|^2 / c_out^2, mean per sample."""
    sigma = data["sigma"][:, None, None]
    c_in = torch.rsqrt(sigma ** 2 + 1)
    c_skip = 1 / (sigma ** 2 + 1)
    c_out = sigma * c_in
    raw = model(data["noisy"] * c_in, data["text"], data["sigma"].log() / 4, attention).float()
    denoised = c_skip * data["noisy"] + c_out * raw
    return ((denoised - data["x0"]) / c_out).pow(2).mean(dim=(1, 2))


# ---------------------------------------------------------------------------------------------------------------------
# Training utilities

def make_optimizer(model: nn.Module, lr: float, device) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0,
                             fused=device.type == "cuda")


def clone_for_branch(model: nn.Module, optimizer: torch.optim.Optimizer, lr: float, device):
    """An independent copy of the model and its optimizer state (moments and step counts copied, not shared)."""
    branch = copy.deepcopy(model)
    branch_optimizer = make_optimizer(branch, lr, device)
    branch_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for group in branch_optimizer.param_groups:
        group["lr"] = lr  # past the pretraining warm-up
    return branch, branch_optimizer


def train_step(model, optimizer, data, attention, autocast) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    with autocast():
        loss = loss_per_sample(model, data, attention).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
    optimizer.step()
    return loss.detach()


def timed(fn, device):
    """(fn(), milliseconds): CUDA events on a GPU, the wall clock elsewhere."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = fn()
        end.record()
        end.synchronize()
        return result, start.elapsed_time(end)
    t0 = time.perf_counter()
    result = fn()
    return result, (time.perf_counter() - t0) * 1e3


@torch.no_grad()
def evaluate(model, eval_set: dict, attention, batch: int, autocast) -> dict:
    losses = []
    n = eval_set["x0"].shape[0]
    for start in range(0, n, batch):
        with autocast():
            losses += loss_per_sample(model, slice_batch(eval_set, start, start + batch), attention).tolist()
    return {"loss": sum(losses) / len(losses), "per_sample": losses}


def seeded_generator(device, *parts: int) -> torch.Generator:
    seed = 0
    for p in parts:
        seed = (seed * 1_000_003 + int(p)) % (2 ** 63)
    return torch.Generator(device=device).manual_seed(seed)


def finite_or_null(obj):
    """JSON-safe copy: NaN/inf (a diverged run) become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: finite_or_null(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(value) for value in obj]
    return obj


def median_after(values, skip: int):
    kept = values[skip:] if len(values) > skip else values
    return statistics.median(kept) if kept else None


# ---------------------------------------------------------------------------------------------------------------------
# STA checks and microbenchmark (GPU only)

def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check_sta_against_reference(tileattn, tile: Triple, head_dim: int, text_len: int, device) -> dict:
    """STA output and q/k/v gradients vs fp32 SDPA with the STA mask, on a small shape with the model's layouts
    (q/k/v strided views of one packed projection; the gradient arrives through a transpose)."""
    video, window, heads, batch = (3 * tile[0], 3 * tile[1], 4 * tile[2]), (1, 3, 3), 2, 1
    tokens = math.prod(video) + text_len
    g = seeded_generator(device, 1234)
    packed = torch.randn(batch, tokens, 3, heads, head_dim, generator=g, device=device).to(torch.bfloat16)
    weight = torch.randn(batch, tokens, heads * head_dim, generator=g, device=device)
    plan = sta_plan(video, tile, window, text_len)

    def run(attention, leaf):
        leaf = leaf.detach().requires_grad_()
        q, k, v = leaf.permute(2, 0, 3, 1, 4).unbind(0)
        o = attention(q, k, v)
        loss = (o.transpose(1, 2).reshape(batch, tokens, -1).float() * weight).sum()
        (grad,) = torch.autograd.grad(loss, leaf)
        return o.detach().float(), grad.float()

    out, grad = run(make_sta_attention(tileattn, plan), packed)
    ref_out, ref_grad = run(make_masked_attention(plan.dense_mask(device)), packed.float())
    errors = {"out": rel_l2(out, ref_out)}
    for i, name in enumerate(("grad_q", "grad_k", "grad_v")):
        errors[name] = rel_l2(grad[:, :, i], ref_grad[:, :, i])
    finite = bool(torch.isfinite(out).all() and torch.isfinite(grad).all())
    return {"video_shape": list(video), "tile": list(tile), "window": list(window), "text_len": text_len,
            "heads": heads, "head_dim": head_dim, "rel_l2": errors, "tolerance": CHECK_TOLERANCE,
            "passed": finite and max(errors.values()) < CHECK_TOLERANCE}


def benchmark_attention(methods: dict, shape, device, reps: int = 10, warmup: int = 3) -> dict:
    """Median ms of one attention call (forward only, and forward + backward) per method, interleaved by round."""
    g = seeded_generator(device, 4321)
    q, k, v, grad_out = (torch.randn(shape, generator=g, device=device).to(torch.bfloat16) for _ in range(4))
    q, k, v = (t.requires_grad_() for t in (q, k, v))

    def forward(fn):
        with torch.no_grad():
            return fn(q, k, v)

    def forward_backward(fn):
        return torch.autograd.grad(fn(q, k, v), (q, k, v), grad_out)

    samples = {(name, kind): [] for name in methods for kind in ("forward", "forward_backward")}
    names = list(methods)
    for r in range(warmup + reps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            for kind, call in (("forward", forward), ("forward_backward", forward_backward)):
                _, ms = timed(functools.partial(call, methods[name]), device)
                if r >= warmup:
                    samples[(name, kind)].append(ms)
    return {name: {kind: statistics.median(samples[(name, kind)]) for kind in ("forward", "forward_backward")}
            for name in names}


# ---------------------------------------------------------------------------------------------------------------------
# Plots: a dependency-free SVG, and a PNG when matplotlib is importable

COLORS = {"pretrain": "#777777", "dense": "#1f77b4", "sta": "#d62728"}


def _nice_ticks(lo: float, hi: float, count: int = 6):
    span = hi - lo if hi > lo else 1.0
    raw = span / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _log_ticks(lo: float, hi: float):
    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0 ** e
            if lo <= v <= hi:
                ticks.append(v)
    if len(ticks) > 9:
        ticks = [t for t in ticks if f"{t:g}".lstrip("0.").startswith("1")]
    if len(ticks) < 3:  # less than a decade: linear ticks read better
        ticks = [t for t in _nice_ticks(lo, hi, 5) if lo <= t <= hi and t > 0]
    return ticks


def write_svg(path: pathlib.Path, series, title: str, xlabel: str, ylabel: str, vlines=()) -> None:
    """series: dicts with label, color, xs, ys, and optional width, dash, markers. Log-scale y."""
    width, height, left, right, top, bottom = 820, 480, 80, 24, 44, 56
    points = [(x, y) for s in series for x, y in zip(s["xs"], s["ys"]) if y is not None and y > 0 and math.isfinite(y)]
    if not points:
        return
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    y_lo, y_hi = min(p[1] for p in points) / 1.15, max(p[1] for p in points) * 1.15
    if x_hi == x_lo:
        x_hi = x_lo + 1

    def px(x):
        return left + (x - x_lo) / (x_hi - x_lo) * (width - left - right)

    def py(y):
        fraction = (math.log10(y_hi) - math.log10(y)) / (math.log10(y_hi) - math.log10(y_lo))
        return top + fraction * (height - top - bottom)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15">{html.escape(title)}</text>']
    for x in _nice_ticks(x_lo, x_hi):
        out.append(f'<line x1="{px(x):.1f}" y1="{top}" x2="{px(x):.1f}" y2="{height - bottom}" stroke="#eeeeee"/>')
        out.append(f'<text x="{px(x):.1f}" y="{height - bottom + 16}" text-anchor="middle">{x:g}</text>')
    for y in _log_ticks(y_lo, y_hi):
        out.append(f'<line x1="{left}" y1="{py(y):.1f}" x2="{width - right}" y2="{py(y):.1f}" stroke="#eeeeee"/>')
        out.append(f'<text x="{left - 6}" y="{py(y) + 4:.1f}" text-anchor="end">{y:g}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
               f'fill="none" stroke="black"/>')
    for x, label in vlines:
        out.append(f'<line x1="{px(x):.1f}" y1="{top}" x2="{px(x):.1f}" y2="{height - bottom}" stroke="#999999" '
                   f'stroke-dasharray="4,4"/>')
        out.append(f'<text x="{px(x) + 4:.1f}" y="{top + 14}" fill="#555555">{html.escape(label)}</text>')
    for s in series:
        pts = [(px(x), py(y)) for x, y in zip(s["xs"], s["ys"]) if y is not None and y > 0 and math.isfinite(y)]
        dash = f' stroke-dasharray="{s["dash"]}"' if s.get("dash") else ""
        out.append(f'<polyline fill="none" stroke="{s["color"]}" stroke-width="{s.get("width", 1.5)}"{dash} '
                   f'stroke-opacity="{s.get("opacity", 1.0)}" points="'
                   + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + '"/>')
        if s.get("markers"):
            out += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{s["color"]}"/>' for a, b in pts]
    out.append(f'<text x="{(left + width - right) / 2}" y="{height - 14}" text-anchor="middle">'
               f'{html.escape(xlabel)}</text>')
    out.append(f'<text x="18" y="{(top + height - bottom) / 2}" text-anchor="middle" '
               f'transform="rotate(-90 18 {(top + height - bottom) / 2})">{html.escape(ylabel)}</text>')
    legend_height = 18 * len(series) + 8  # lower left: the losses fall from the upper left
    legend_x, legend_y = left + 10, height - bottom - 10 - legend_height
    out.append(f'<rect x="{legend_x}" y="{legend_y}" width="280" height="{legend_height}" fill="white" '
               f'fill-opacity="0.9" stroke="#cccccc"/>')
    for i, s in enumerate(series):
        y = legend_y + 16 + 18 * i
        dash = f' stroke-dasharray="{s["dash"]}"' if s.get("dash") else ""
        out.append(f'<line x1="{legend_x + 8}" y1="{y - 4}" x2="{legend_x + 34}" y2="{y - 4}" stroke="{s["color"]}" '
                   f'stroke-width="{s.get("width", 1.5)}"{dash} stroke-opacity="{s.get("opacity", 1.0)}"/>')
        out.append(f'<text x="{legend_x + 42}" y="{y}">{html.escape(s["label"])}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def write_png(path: pathlib.Path, series, title: str, xlabel: str, ylabel: str, vlines=()) -> bool:
    if importlib.util.find_spec("matplotlib") is None:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8.2, 4.8), dpi=120)
    for s in series:
        ax.plot(s["xs"], s["ys"], color=s["color"], linewidth=s.get("width", 1.5), alpha=s.get("opacity", 1.0),
                linestyle="--" if s.get("dash") else "-", marker="o" if s.get("markers") else None, markersize=3,
                label=s["label"])
    for x, label in vlines:
        ax.axvline(x, color="#999999", linestyle="--", linewidth=1)
        ax.annotate(label, (x, 1), xycoords=("data", "axes fraction"), xytext=(4, -14), textcoords="offset points",
                    color="#555555")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", color="#eeeeee")
    ax.legend(loc="lower left", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def ema(values, decay: float = 0.9):
    out, acc = [], None
    for v in values:
        acc = v if acc is None else decay * acc + (1 - decay) * v
        out.append(acc)
    return out


def loss_plot_series(result: dict) -> list:
    pre, fine = result["pretrain"], result["finetune"]
    offset = pre["steps_done"]
    window = "x".join(str(w) for w in result["config"]["window"])
    series = [dict(label="pretrain (dense), train loss EMA", color=COLORS["pretrain"], opacity=0.6,
                   xs=list(range(len(pre["train_loss"]))), ys=ema(pre["train_loss"])),
              dict(label="pretrain (dense), eval", color=COLORS["pretrain"], width=2.5, markers=True,
                   xs=[e["step"] for e in pre["eval"]], ys=[e["loss"] for e in pre["eval"]])]
    for name, label in (("dense", "fine-tune dense"), ("sta", f"fine-tune STA {window}")):
        run = fine[name]
        series.append(dict(label=f"{label}, train loss EMA", color=COLORS[name], opacity=0.45, dash="5,3",
                           xs=[offset + i for i in range(len(run["train_loss"]))], ys=ema(run["train_loss"])))
        series.append(dict(label=f"{label}, eval", color=COLORS[name], width=2.5, markers=True,
                           xs=[offset + e["step"] for e in run["eval"]], ys=[e["loss"] for e in run["eval"]]))
    return series


# ---------------------------------------------------------------------------------------------------------------------
# Command line

def parse_triple(text: str) -> Triple:
    parts = text.replace(",", "x").split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three integers like 18x32x48, got {text!r}") from None
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive integers like 18x32x48, got {text!r}")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = FULL_DEFAULTS
    p.add_argument("--steps-pretrain", type=int, help=f"dense pretraining steps (default {d['steps_pretrain']})")
    p.add_argument("--steps-finetune", type=int, help=f"fine-tuning steps per branch (default {d['steps_finetune']})")
    p.add_argument("--video", type=parse_triple, help="latent video TxHxW (default 18x32x48)")
    p.add_argument("--tile", type=parse_triple, help="STA tile in tokens (default 6x8x8)")
    p.add_argument("--window", type=parse_triple, help="STA window in tiles (default 3x3x3)")
    p.add_argument("--text-len", type=int, help=f"text tokens after the video, 0 for none (default {d['text_len']})")
    p.add_argument("--layers", type=int, help=f"transformer blocks (default {d['layers']})")
    p.add_argument("--hidden", type=int, help=f"hidden size (default {d['hidden']})")
    p.add_argument("--heads", type=int, help=f"attention heads; hidden/heads must be 64 or 128 (default {d['heads']})")
    p.add_argument("--channels", type=int, help=f"latent channels (default {d['channels']})")
    p.add_argument("--batch", type=int, help=f"samples per step (default {d['batch']})")
    p.add_argument("--eval-every", type=int, help=f"steps between evaluations (default {d['eval_every']})")
    p.add_argument("--eval-samples", type=int, help=f"held-out samples (default {d['eval_samples']})")
    p.add_argument("--warmup-steps", type=int, help=f"steps left out of the median step time "
                                                    f"(default {d['warmup_steps']})")
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (linear warm-up over 20 steps)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and of the data")
    p.add_argument("--max-seconds", type=float, default=240.0,
                   help="time budget from start: pretraining stops early (and says so) after 40%% of it, "
                        "fine-tuning after all of it")
    p.add_argument("--out", default="finetune_out", help="output directory")
    p.add_argument("--dry-run", action="store_true",
                   help="no tileattn: the STA branch uses SDPA with an explicit STA mask (small default sizes; "
                        "runs on CPU)")
    args = p.parse_args(argv)
    defaults = DRY_RUN_DEFAULTS if args.dry_run else FULL_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("steps_pretrain", "steps_finetune", "text_len", "warmup_steps"):
        if getattr(args, key) < 0:
            p.error(f"--{key.replace('_', '-')} must be >= 0")
    for key in ("layers", "hidden", "heads", "channels", "batch", "eval_every", "eval_samples"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.hidden % args.heads:
        p.error(f"--hidden {args.hidden} is not divisible by --heads {args.heads}")
    if not args.dry_run and args.hidden // args.heads not in (64, 128):
        p.error(f"head_dim = hidden/heads = {args.hidden // args.heads}; the STA kernels need 64 or 128")
    try:
        args.window = sta_plan(args.video, args.tile, args.window, args.text_len).windows[0]
    except ImportError as e:
        p.error(f"the tileattn package cannot be imported ({e})")
    except ValueError as e:  # TileattnArgumentError: a window the library rejects
        p.error(f"--window: {e}")
    return args


def load_tileattn():
    """The tileattn package (installed, else this checkout's python/), or (None, reason)."""
    try:
        tileattn = import_tileattn()
    except ImportError as e:
        return None, f"the tileattn package cannot be imported ({e})"
    if not torch.cuda.is_available():
        return None, "no CUDA device is visible to PyTorch"
    try:
        if not tileattn.library().tileattn_gpu_kernels_available():
            return None, "libtileattn has no kernels for this GPU (STA needs Hopper, sm_90)"
    except tileattn.TileattnError as e:  # LibraryNotFound included
        return None, str(e)
    except OSError as e:
        return None, f"libtileattn could not be loaded: {e}"
    return tileattn, None


# ---------------------------------------------------------------------------------------------------------------------
# The experiment

def main(argv=None) -> int:
    args = parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress lines show up when piped to a log
    t_start = time.monotonic()
    pretrain_deadline = t_start + 0.4 * args.max_seconds  # leaves fine-tuning (two branches) the larger share
    deadline = t_start + args.max_seconds
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tileattn = None
    if not args.dry_run:
        tileattn, reason = load_tileattn()
        if tileattn is None:
            print(f"finetune_sta: tileattn is unavailable: {reason}.\n"
                  f"This experiment needs a Hopper GPU and a CUDA build of libtileattn (cmake --workflow --preset "
                  f"default). Use --dry-run to exercise the script without tileattn.", file=sys.stderr)
            return 2
    if device.type == "cuda":
        autocast = functools.partial(torch.autocast, device_type="cuda", dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext

    video, tile, window, text_len = args.video, args.tile, args.window, args.text_len
    grid = grid_of(video, tile)
    head_dim = args.hidden // args.heads
    tokens = math.prod(video) + text_len
    plan = sta_plan(video, tile, window, text_len)
    density = 1.0 - plan.sparsity()
    window_label = "x".join(map(str, window))
    print(f"video {video} + {text_len} text = {tokens} tokens; tile {tile}, grid {grid}; window {window} "
          f"({math.prod(window)}/{math.prod(grid)} tiles, {100 * (1 - density):.1f}% of query-key pairs skipped)")
    print(f"model: {args.layers} blocks, hidden {args.hidden}, {args.heads} heads x {head_dim}; batch {args.batch}; "
          f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}"
          + ("; DRY RUN (STA emulated by masked SDPA)" if args.dry_run else ""))

    # 1. STA vs a masked fp32 reference, forward and backward
    check = None
    if tileattn is not None:
        try:
            check = check_sta_against_reference(tileattn, tile, head_dim, text_len, device)
        except (NotImplementedError, tileattn.TileattnError) as e:
            print(f"finetune_sta: STA forward + backward failed on the check shape; this tileattn build may have "
                  f"no STA backward yet: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        errs = ", ".join(f"{k} {v:.2e}" for k, v in check["rel_l2"].items())
        print(f"check vs masked fp32 SDPA ({check['video_shape']}, window {check['window']}): {errs} -> "
              + ("ok" if check["passed"] else f"FAILED (tolerance {CHECK_TOLERANCE})"))
        sta = make_sta_attention(tileattn, plan)
    else:
        sta = make_masked_attention(plan.dense_mask(device))

    data = SyntheticVideoData(video, tile, args.channels, text_len, device, args.seed)
    eval_sigmas = torch.exp(torch.linspace(*(math.log(s) for s in SIGMA_RANGE), args.eval_samples, device=device))
    eval_set = data.sample(args.eval_samples, seeded_generator(device, args.seed, 3), sigmas=eval_sigmas)
    torch.manual_seed(args.seed)
    model = VideoDiT(video, args.channels, text_len, args.layers, args.hidden, args.heads).to(device)
    optimizer = make_optimizer(model, args.lr, device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params / 1e6:.1f}M parameters; eval sigmas {[round(s, 3) for s in eval_sigmas.tolist()]}")

    # 2. Dense pretraining
    pretrain = {"train_loss": [], "step_ms": [], "eval": [], "truncated": False}
    for step in range(args.steps_pretrain):
        if step % args.eval_every == 0:
            pretrain["eval"].append({"step": step, **evaluate(model, eval_set, dense_attention, args.batch, autocast)})
            print(f"pretrain step {step:4d}: eval {pretrain['eval'][-1]['loss']:.4f}")
        if time.monotonic() > pretrain_deadline:
            pretrain["truncated"] = True
            print(f"pretraining stopped at step {step}: 40% of --max-seconds {args.max_seconds:g} used")
            break
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 20)
        batch = data.sample(args.batch, seeded_generator(device, args.seed, 1, step))
        loss, ms = timed(functools.partial(train_step, model, optimizer, batch, dense_attention, autocast), device)
        pretrain["train_loss"].append(loss.item())
        pretrain["step_ms"].append(ms)
    pretrain["steps_done"] = len(pretrain["train_loss"])
    if not pretrain["eval"] or pretrain["eval"][-1]["step"] != pretrain["steps_done"]:
        pretrain["eval"].append({"step": pretrain["steps_done"],
                                 **evaluate(model, eval_set, dense_attention, args.batch, autocast)})
    pretrain["median_step_ms"] = median_after(pretrain["step_ms"], args.warmup_steps)

    # 3. Fine-tuning from the same checkpoint: dense vs STA, stepping in turn on the same batches
    branches = {}
    for name, attention in (("dense", dense_attention), ("sta", sta)):
        branch_model, branch_optimizer = clone_for_branch(model, optimizer, args.lr, device)
        branches[name] = {"model": branch_model, "optimizer": branch_optimizer, "attention": attention}
    del model, optimizer
    finetune = {name: {"train_loss": [], "step_ms": [], "eval": []} for name in branches}
    finetune_truncated = False

    def evaluate_branches(step):
        for name, b in branches.items():
            finetune[name]["eval"].append({"step": step, **evaluate(b["model"], eval_set, b["attention"], args.batch,
                                                                    autocast)})
        print(f"finetune step {step:4d}: eval dense {finetune['dense']['eval'][-1]['loss']:.4f}, "
              f"STA {finetune['sta']['eval'][-1]['loss']:.4f}")

    evaluate_branches(0)
    zero_shot = {"dense": finetune["dense"]["eval"][0]["loss"], "sta": finetune["sta"]["eval"][0]["loss"]}
    names = list(branches)
    for step in range(args.steps_finetune):
        if time.monotonic() > deadline:
            finetune_truncated = True
            print(f"fine-tuning stopped at step {step}: --max-seconds {args.max_seconds:g} reached")
            break
        batch = data.sample(args.batch, seeded_generator(device, args.seed, 2, step))
        for name in (names if step % 2 == 0 else names[::-1]):  # alternate who goes first (clock drift)
            b = branches[name]
            loss, ms = timed(functools.partial(train_step, b["model"], b["optimizer"], batch, b["attention"], autocast),
                             device)
            finetune[name]["train_loss"].append(loss.item())
            finetune[name]["step_ms"].append(ms)
        if (step + 1) % args.eval_every == 0:
            evaluate_branches(step + 1)
    steps_done = len(finetune["dense"]["train_loss"])
    if finetune["dense"]["eval"][-1]["step"] != steps_done:
        evaluate_branches(steps_done)
    for name in finetune:
        finetune[name]["median_step_ms"] = median_after(finetune[name]["step_ms"], args.warmup_steps)
    finetune["steps_done"] = steps_done
    finetune["truncated"] = finetune_truncated

    # 4. One layer's attention call alone (forward, forward + backward)
    attention_ms = None
    if device.type == "cuda":
        attention_ms = benchmark_attention({"dense": dense_attention, "sta": sta},
                                           (args.batch, args.heads, tokens, head_dim), device)

    # 5. Outputs
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {key: (list(value) if isinstance(value, tuple) else value) for key, value in vars(args).items()}
    config.update(grid=list(grid), tokens=tokens, head_dim=head_dim, parameters=n_params,
                  tiles_per_query_tile=f"{math.prod(window)}/{math.prod(grid)}", pair_density=density,
                  sparsity=1 - density, sigma_range=list(SIGMA_RANGE), eval_sigmas=eval_sigmas.tolist(),
                  field_components=FIELD_COMPONENTS, prompt_scale=PROMPT_SCALE)
    result = {
        "config": config,
        "environment": {"gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
                        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                        "tileattn": getattr(tileattn, "__version__", None),
                        "sta_backend": "tileattn" if tileattn is not None else "masked SDPA (dry run)"},
        "check": check,
        "pretrain": pretrain,
        "finetune": finetune,
        "zero_shot_eval": zero_shot,
        "final_eval": {name: finetune[name]["eval"][-1]["loss"] for name in branches},
        "attention_ms": attention_ms,
        "wall_seconds": time.monotonic() - t_start,
    }
    (out_dir / "finetune.json").write_text(json.dumps(finite_or_null(result), indent=1, default=str) + "\n")
    series = loss_plot_series(result)
    title = (f"Fine-tuning with fixed STA windows ({window_label}, {100 * (1 - density):.0f}% sparse) vs dense, "
             f"{tokens} tokens")
    plot_args = (series, title, "step (pretraining, then fine-tuning)", "loss (EDM-weighted MSE, log scale)",
                 [(pretrain["steps_done"], "fine-tuning starts")])
    write_svg(out_dir / "finetune_loss.svg", *plot_args)
    plots = ["finetune_loss.svg"] + (["finetune_loss.png"] if write_png(out_dir / "finetune_loss.png", *plot_args)
                                     else [])

    # 6. Summary
    print()
    print(f"{'run (fine-tuning branch)':<28} {'eval before':>11} {'eval after':>11} {'step ms':>9} {'attn f+b ms':>12}")
    for name, label in (("dense", "dense (continued)"), ("sta", f"STA {window_label} (fine-tuned)")):
        step_ms = finetune[name]["median_step_ms"]
        attn = attention_ms[name]["forward_backward"] if attention_ms else None
        print(f"{label:<28} {zero_shot[name]:>11.4f} {finetune[name]['eval'][-1]['loss']:>11.4f} "
              f"{step_ms if step_ms is not None else float('nan'):>9.1f} "
              f"{attn if attn is not None else float('nan'):>12.2f}")
    dense_ms, sta_ms = finetune["dense"]["median_step_ms"], finetune["sta"]["median_step_ms"]
    if dense_ms and sta_ms:
        line = f"training step speed-up STA vs dense: {dense_ms / sta_ms:.2f}x"
        if attention_ms:
            ratio = attention_ms["dense"]["forward_backward"] / attention_ms["sta"]["forward_backward"]
            line += f"; one attention call, forward + backward: {ratio:.2f}x"
        print(line)
    print(f"STA eval before fine-tuning (zero-shot) {zero_shot['sta']:.4f} -> after {result['final_eval']['sta']:.4f}"
          f" (dense continued: {result['final_eval']['dense']:.4f})")
    print(f"wrote {out_dir / 'finetune.json'}, " + ", ".join(str(out_dir / p) for p in plots)
          + f" in {result['wall_seconds']:.0f} s")
    if check is not None and not check["passed"]:
        print("WARNING: STA disagreed with the masked reference before training; the fine-tuning numbers are suspect",
              file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
