"""SlidingTileAttnProcessor on a small randomly initialised DiT block with diffusers-style processors."""
import torch
import torch.nn.functional as F

import tileattn
from conftest import rel_l2, requires_gpu

VIDEO, TEXT, HEADS, DIM = (12, 16, 24), 32, 2, 256  # head dim 128


class Attention(torch.nn.Module):
    """The part of diffusers' Attention a processor uses."""

    def __init__(self, dim, heads, processor):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v, self.to_out = (torch.nn.Linear(dim, dim) for _ in range(4))
        self.processor = processor

    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None):
        return self.processor(self, hidden_states, encoder_hidden_states, attention_mask)


class JointAttnProcessor:
    """HunyuanVideo-style: video tokens then text tokens in one sequence, one SDPA call, split afterwards."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None):
        x = torch.cat([hidden_states, encoder_hidden_states], 1)
        B, S, _ = x.shape
        q, k, v = (f(x).view(B, S, attn.heads, -1).transpose(1, 2) for f in (attn.to_q, attn.to_k, attn.to_v))
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        o = attn.to_out(o.transpose(1, 2).reshape(B, S, -1))
        n = hidden_states.shape[1]
        return o[:, :n], o[:, n:]


class MaskedReferenceProcessor(JointAttnProcessor):
    """The same processor, with the STA pattern as an explicit SDPA mask (the reference)."""

    def __init__(self, mask):
        self.mask = mask

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None):
        mask = self.mask if attention_mask is None else self.mask & attention_mask
        return super().__call__(attn, hidden_states, encoder_hidden_states, mask)


def _inputs(batch=1):
    torch.manual_seed(0)
    n = VIDEO[0] * VIDEO[1] * VIDEO[2]
    x = torch.randn(batch, n, DIM, device="cuda", dtype=torch.bfloat16)
    t = torch.randn(batch, TEXT, DIM, device="cuda", dtype=torch.bfloat16)
    return x, t


@requires_gpu
def test_processor_runs_sta_with_strategy_windows(tmp_path):
    path = tmp_path / "strategy.json"
    path.write_text('{"format": "tileattn.mask_strategy", "version": 1, "dense_steps": 1, '
                    '"windows": {"1_0_0": [1, 1, 3], "1_0_1": [1, 1, 1]}}')
    step = tileattn.DenoisingStep()
    proc = tileattn.SlidingTileAttnProcessor(JointAttnProcessor(), layer=0, video_shape=VIDEO, text_len=TEXT,
                                             strategy=tileattn.MaskStrategy.read(path), step=step)
    attn = Attention(DIM, HEADS, proc).cuda().to(torch.bfloat16)
    x, t = _inputs()
    base = JointAttnProcessor()(attn, x, t)
    dense = attn(x, t)  # step 0 is a dense step: exactly the wrapped processor
    assert all(torch.equal(a, b) for a, b in zip(dense, base))
    step.advance()
    sparse = attn(x, t)
    mask = tileattn.StaPlan(VIDEO, [(1, 1, 3), (1, 1, 1)], (6, 8, 8), TEXT).dense_mask(x.device)[None]
    ref = MaskedReferenceProcessor(mask)(attn, x, t)
    for a, b in zip(sparse, ref):
        assert rel_l2(a, b) < 1e-2
    assert rel_l2(sparse[0], base[0]) > 0.05  # it really is sparse
    step.advance()  # step 2 has no windows in the file and no default: the layer runs dense
    assert all(torch.equal(a, b) for a, b in zip(attn(x, t), base))


@requires_gpu
def test_processor_maps_text_padding_mask_to_text_valid():
    proc = tileattn.SlidingTileAttnProcessor(JointAttnProcessor(), layer=0, video_shape=VIDEO, text_len=TEXT,
                                             window=(1, 1, 3))
    attn = Attention(DIM, HEADS, proc).cuda().to(torch.bfloat16)
    x, t = _inputs(batch=2)
    n = x.shape[1]
    keep = torch.ones(2, 1, 1, n + TEXT, dtype=torch.bool, device="cuda")
    keep[0, ..., n + 5:] = False  # sample 0 has 5 valid text tokens, sample 1 all 32
    out = attn(x, t, keep)
    mask = tileattn.StaPlan(VIDEO, [(1, 1, 3)] * HEADS, (6, 8, 8), TEXT).dense_mask(x.device)[None]
    ref = MaskedReferenceProcessor(mask)(attn, x, t, keep)
    for a, b in zip(out, ref):
        assert rel_l2(a, b) < 1e-2


def test_processor_warns_when_nothing_was_routed():
    """A wrapped processor whose SDPA call STA cannot take (here: the text is not in the sequence) still gives the
    dense result, and the user is told once. Runs on the CPU."""
    import pytest

    proc = tileattn.SlidingTileAttnProcessor(JointAttnProcessor(), layer=3, video_shape=(2, 2, 2), text_len=7,
                                             window=(1, 1, 1))
    attn = Attention(64, 1, proc)
    x, t = torch.randn(1, 8, 64), torch.randn(1, 4, 64)  # 4 text tokens, not the configured 7
    with pytest.warns(RuntimeWarning, match="layer 3.*ran dense"):
        out = attn(x, t)
    base = JointAttnProcessor()(attn, x, t)
    assert all(torch.equal(a, b) for a, b in zip(out, base))


class Fp8ReferenceProcessor(JointAttnProcessor):
    """The same processor with its attention as the FP8 emulation of STA (tileattn.fp8_reference)."""

    def __init__(self, plan):
        self.plan = plan

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None):
        from tileattn.fp8_reference import sta_attention_fp8_reference
        plan = self.plan

        def fp8_sdpa(q, k, v, attn_mask=None):
            return sta_attention_fp8_reference(q, k, v, plan)
        sdpa, F.scaled_dot_product_attention = F.scaled_dot_product_attention, fp8_sdpa
        try:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask)
        finally:
            F.scaled_dot_product_attention = sdpa


def test_processor_precision_fp8_cpu():
    video, text, dim = (4, 8, 12), 8, 32  # CPU, fp32, head dim 16; a grid of (2, 2, 3) tiles
    tile = (2, 4, 4)
    torch.manual_seed(0)
    x = torch.randn(1, video[0] * video[1] * video[2], dim)
    t = torch.randn(1, text, dim)
    outs = {}
    for precision in ("native", "fp8"):
        proc = tileattn.SlidingTileAttnProcessor(JointAttnProcessor(), layer=0, video_shape=video, text_len=text,
                                                 tile=tile, window=(1, 1, 1), precision=precision)
        torch.manual_seed(1)
        attn = Attention(dim, HEADS, proc)
        with torch.no_grad():  # fp8 is forward only (with grad, the layer would run dense and warn)
            outs[precision] = attn(x, t)
        assert proc.routed_calls == 1
    with torch.no_grad():
        ref = Fp8ReferenceProcessor(tileattn.StaPlan(video, (1, 1, 1), tile, text))(attn, x, t)
    for a, b, n in zip(outs["fp8"], ref, outs["native"]):
        assert rel_l2(a, b) < 1e-6
        assert 1e-3 < rel_l2(a, n) < 0.06
