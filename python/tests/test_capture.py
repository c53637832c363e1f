"""ActivationCapture on a tiny diffusers-style model: the files it writes pass the C++ capture reader (through the C
ABI) with the right metadata, shape, dtype and contents. Runs on the CPU; needs torch and safetensors."""
import json

import pytest
import torch
import torch.nn.functional as F

import tileattn
from tileattn import _ffi

pytest.importorskip("safetensors")

VIDEO, TEXT, HEADS, HEAD_DIM = (2, 4, 4), 4, 2, 16


class Attention(torch.nn.Module):
    def __init__(self, processor):
        super().__init__()
        self.heads = HEADS
        dim = HEADS * HEAD_DIM
        self.to_q, self.to_k, self.to_v = (torch.nn.Linear(dim, dim) for _ in range(3))
        self.processor = processor

    def forward(self, x):
        return self.processor(self, x)


class Processor:
    """Self-attention over video + text tokens with one SDPA call; also records what it passed to SDPA."""

    def __call__(self, attn, x):
        B, S, _ = x.shape
        q, k, v = (f(x).view(B, S, attn.heads, -1).transpose(1, 2) for f in (attn.to_q, attn.to_k, attn.to_v))
        self.last = (q, k, v)
        return F.scaled_dot_product_attention(q, k, v)


def _library_or_skip():
    try:
        tileattn.library()
    except tileattn.LibraryNotFound as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_capture_round_trips_through_the_cpp_reader(tmp_path, dtype):
    _library_or_skip()
    torch.manual_seed(0)
    n = VIDEO[0] * VIDEO[1] * VIDEO[2] + TEXT
    inner = Processor()
    capture = tileattn.ActivationCapture(tmp_path, video_shape=VIDEO, text_len=TEXT, steps=[1], layers=[0],
                                         prompt="cat on a mat")
    layers = [Attention(capture.wrap(inner, layer=i)).to(dtype) for i in range(2)]
    x = torch.randn(1, n, HEADS * HEAD_DIM, dtype=dtype)
    recorded = None
    for step in range(3):
        capture.step.step = step
        for layer in layers:
            out = layer(x)
            if step == 1 and layer is layers[0]:
                recorded = inner.last
        assert out.shape == (1, HEADS, n, HEAD_DIM)
    assert len(capture.written) == 1, capture.written  # step 1, layer 0 only
    path = capture.written[0]
    assert path.endswith("step1_layer0_promptcat_on_a_mat.safetensors")
    info = json.loads(_ffi.inspect_capture_json(path))
    assert info["video_shape"] == list(VIDEO) and info["text_len"] == TEXT
    assert info["step"] == 1 and info["layer"] == 0 and info["prompt"] == "cat on a mat"
    assert info["shape"] == [1, HEADS, n, HEAD_DIM]
    assert info["dtypes"] == {name: "F32" if dtype == torch.float32 else "BF16" for name in "qkv"}
    for name, t in zip("qkv", recorded):
        assert info["l2_norms"][name] == pytest.approx(t.float().norm().item(), rel=1e-4)


def test_wrong_length_calls_are_not_captured(tmp_path):
    capture = tileattn.ActivationCapture(tmp_path, video_shape=(2, 2, 2), text_len=0)
    layer = Attention(capture.wrap(Processor(), layer=0))
    layer(torch.randn(1, 5, HEADS * HEAD_DIM))  # 5 tokens, not 8
    assert capture.written == []


def test_cpp_reader_rejects_a_truncated_capture(tmp_path):
    _library_or_skip()
    capture = tileattn.ActivationCapture(tmp_path, video_shape=(2, 2, 2), text_len=0)
    q, k, v = (torch.randn(1, 2, 8, 16) for _ in range(3))
    path = capture.save(0, q, k, v)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-16])
    with pytest.raises(tileattn.TileattnFileError, match="truncated"):
        _ffi.inspect_capture_json(path)
