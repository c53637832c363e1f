"""tileattn.diffusers against diffusers' real transformer classes (HunyuanVideo, HunyuanVideo 1.5, Wan; tiny configs,
random weights, fp32 on the CPU through the op's CPU path, which runs the C++ reference)."""
import warnings

import pytest
import torch
import torch.nn.functional as F

diffusers = pytest.importorskip("diffusers")
import tileattn  # noqa: E402
import tileattn.diffusers as ta  # noqa: E402
from tileattn import _intercept  # noqa: E402

TILE = (2, 2, 2)


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def hunyuan(layers=2, single=2, heads=2, dim=16):
    torch.manual_seed(0)
    return diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=heads, attention_head_dim=dim, num_layers=layers,
        num_single_layers=single, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(4, 6, 6)).eval()


def hunyuan_inputs(batch=2, frames=5, height=12, width=16, text=7, valid=(7, 4), t=500.0, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, text, dtype=torch.bool)
    for b in range(batch):
        mask[b, :valid[b]] = True
    return dict(hidden_states=torch.randn(batch, 4, frames, height, width, generator=g),
                timestep=torch.full((batch,), t), encoder_hidden_states=torch.randn(batch, text, 16, generator=g),
                encoder_attention_mask=mask, pooled_projections=torch.randn(batch, 8, generator=g),
                guidance=torch.full((batch,), 3.0))


def hunyuan15():
    torch.manual_seed(0)
    return diffusers.HunyuanVideo15Transformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=2,
        num_refiner_layers=1, patch_size=1, patch_size_t=1, text_embed_dim=16, text_embed_2_dim=8,
        image_embed_dim=12, rope_axes_dim=(4, 6, 6), target_size=32, task_type="t2v").eval()


def hunyuan15_inputs(batch=2, seed=2):
    g = torch.Generator().manual_seed(seed)
    m1 = torch.ones(batch, 6, dtype=torch.bool)
    m1[1, 3:] = False
    m2 = torch.ones(batch, 4, dtype=torch.bool)
    m2[0, 2:] = False
    return dict(hidden_states=torch.randn(batch, 4, 3, 6, 8, generator=g), timestep=torch.full((batch,), 700.0),
                encoder_hidden_states=torch.randn(batch, 6, 16, generator=g), encoder_attention_mask=m1,
                encoder_hidden_states_2=torch.randn(batch, 4, 8, generator=g), encoder_attention_mask_2=m2,
                image_embeds=torch.zeros(batch, 5, 12))


def wan(layers=2):
    torch.manual_seed(0)
    return diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=32, ffn_dim=32, num_layers=layers, rope_max_seq_len=32).eval()


def wan_inputs(batch=1, frames=5, height=10, width=14, seed=3):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(batch, 4, frames, height, width, generator=g),
                timestep=torch.full((batch,), 900.0), encoder_hidden_states=torch.randn(batch, 9, 16, generator=g))


def forward(model, inputs):
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def sta_forward(model, inputs, window):
    """(handle, output) of one forward with STA enabled (strict), then disabled."""
    handle = ta.enable_sta(model, window=window, tile=TILE, strict=True)
    try:
        return handle, forward(model, inputs)
    finally:
        ta.disable_sta(model)


class HookedReference:
    """A context in which every routed layer's attention call is answered by self.on_call (a reference)."""

    def __init__(self, model):
        self.hooks = ta.ModelHooks(ta._transformers_of(model))
        self.hooks.on_call = self.on_call

    def __enter__(self):
        self.hooks._install()
        return self

    def __exit__(self, *exc):
        self.hooks.remove()


class MaskedReference(HookedReference):
    """An independent reference: every routed layer's attention as SDPA with the STA pattern as an explicit mask
    (StaPlan.dense_mask, itself checked against the C++ plan), plus the call's own key-padding mask."""

    def __init__(self, model, window, tile):
        super().__init__(model)
        self.window, self.tile = window, tile

    def on_call(self, layer, call, video):
        q, k, v = call.bhsd()
        n_video = video[0] * video[1] * video[2]
        text = q.shape[2] - n_video
        grid = [-(-n // t) for n, t in zip(video, self.tile)]
        win = tuple(min(w, g) for w, g in zip(self.window, grid))
        m = tileattn.StaPlan(video, win, self.tile, text).dense_mask(q.device)[None]  # [1, 1, S, S]
        if call.attn_mask is not None:
            m = m & call.attn_mask
        with _intercept.suspended():
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=m)
        return call.from_bhsd(out)


# ---- HunyuanVideo ----

def test_hunyuan_full_window_equals_dense_and_routes_every_layer():
    model, inputs = hunyuan(), hunyuan_inputs()
    dense = forward(model, inputs)
    handle, out = sta_forward(model, inputs, window=(99, 99, 99))
    assert handle.num_layers == 4  # 2 dual-stream + 2 single-stream blocks
    assert handle.routed == {0: 1, 1: 1, 2: 1, 3: 1}
    assert not handle.fallbacks
    assert rel(out, dense) < 1e-5, rel(out, dense)


def test_hunyuan_window_equals_masked_sdpa_reference():
    model, inputs = hunyuan(), hunyuan_inputs(frames=5, height=14, width=18)  # 5x7x9 tokens: partial tiles
    with MaskedReference(model, (1, 3, 3), TILE):
        ref = forward(model, inputs)
    dense = forward(model, inputs)
    _, out = sta_forward(model, inputs, window=(1, 3, 3))
    assert rel(out, ref) < 1e-5, rel(out, ref)
    assert rel(out, dense) > 1e-3  # the window matters, so the comparison above is not dense vs dense


def test_rope_reaches_every_layer():
    """The q/k STA receives are the processor's own (after RoPE and norms): equal to what dense receives."""
    model, inputs = hunyuan(), hunyuan_inputs()
    seen = {}

    class Spy(ta.ModelHooks):
        def on_call(self, layer, call, video):
            seen.setdefault(layer, []).append(call.bhsd()[0].clone())

    spy = Spy([model])
    spy._install()
    try:
        forward(model, inputs)
    finally:
        spy.remove()
    # With the rotation made the identity (cos 1, sin 0), every layer's q changes: RoPE is in what STA receives.
    assert sorted(seen) == [0, 1, 2, 3]
    with_rope = {layer: qs[0] for layer, qs in seen.items()}
    seen.clear()
    identity = model.rope.register_forward_hook(lambda m, a, o: (torch.ones_like(o[0]), torch.zeros_like(o[1])))
    spy._install()
    try:
        forward(model, inputs)
    finally:
        spy.remove()
        identity.remove()
    for layer in range(4):
        assert rel(seen[layer][0], with_rope[layer]) > 1e-2, layer


def test_text_padding_maps_to_text_valid():
    model = hunyuan()
    inputs = hunyuan_inputs(valid=(2, 5))
    with MaskedReference(model, (3, 1, 3), TILE):
        ref = forward(model, inputs)
    ta.enable_sta(model, window=(3, 1, 3), tile=TILE, strict=True)
    try:
        out = forward(model, inputs)
        # the same video with the padded text tokens changed must give the same result: they carry no weight
        changed = dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"].clone())
        changed["encoder_hidden_states"][0, 2:] += 5.0
        changed["encoder_hidden_states"][1, 5:] -= 3.0
        out_changed = forward(model, changed)
    finally:
        ta.disable_sta(model)
    assert rel(out, ref) < 1e-5
    assert rel(out_changed, out) < 1e-6


def test_step_advance_and_strategy(tmp_path):
    model = hunyuan(layers=1, single=1)
    path = tmp_path / "windows.json"
    # tileattn's format: step 1 layer 0 gets a small window, everything else the default; step 0 dense.
    path.write_text('{"format": "tileattn.mask_strategy", "version": 1, "dense_steps": 1, "default": [99, 99, 99], '
                    '"windows": {"1_0_0": [1, 1, 1], "1_0_1": [1, 1, 1]}}')
    handle = ta.enable_sta(model, strategy=str(path), tile=TILE)
    try:
        for t in (900.0, 900.0, 600.0, 300.0):  # the repeated timestep is CFG's second call: the same step
            forward(model, hunyuan_inputs(t=t))
        assert handle.step == 2
        assert handle.dense == {0: 2, 1: 2}   # step 0 (two calls) was dense
        assert handle.routed == {0: 2, 1: 2}
        forward(model, hunyuan_inputs(t=950.0))  # a larger timestep: a new generation
        assert handle.step == 0
    finally:
        ta.disable_sta(model)


def test_disable_restores_everything():
    model, inputs = hunyuan(), hunyuan_inputs()
    dense = forward(model, inputs)
    sdpa = F.scaled_dot_product_attention
    from diffusers.models.transformers import transformer_hunyuan_video as module
    dispatch = module.dispatch_attention_fn
    ta.enable_sta(model, window=(1, 1, 1), tile=TILE)
    assert module.dispatch_attention_fn is not dispatch
    assert ta.sta_handle(model) is not None
    ta.disable_sta(model)
    assert F.scaled_dot_product_attention is sdpa and module.dispatch_attention_fn is dispatch
    assert ta.sta_handle(model) is None
    assert all(not m._forward_pre_hooks for m in ta.self_attention_layers(model))
    assert torch.equal(forward(model, inputs), dense)


def test_strict_raises_and_lenient_reports_once():
    model, inputs = hunyuan(), hunyuan_inputs()
    ta.enable_sta(model, window=[(1, 1, 1)] * 3, tile=TILE, strict=True)  # 3 windows for 2 heads
    try:
        with pytest.raises(ta.RoutingError, match="layer 0: 3 per-head windows for a layer of 2 heads"):
            forward(model, inputs)
    finally:
        ta.disable_sta(model)
    dense = forward(model, inputs)
    handle = ta.enable_sta(model, window=[(1, 1, 1)] * 3, tile=TILE)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = forward(model, inputs)
            forward(model, inputs)
    finally:
        ta.disable_sta(model)
    ours = [w for w in caught if issubclass(w.category, ta.RoutingWarning)]
    assert len(ours) == 4  # once per layer, not once per call
    assert sorted(handle.fallbacks) == [0, 1, 2, 3]
    assert torch.equal(out, dense)
    assert "layer 3: ran dense" in handle.report()


def test_other_backend_is_intercepted():
    """set_attention_backend changes what dispatch_attention_fn runs; STA still answers the call."""
    model, inputs = hunyuan(), hunyuan_inputs()
    model.set_attention_backend("_native_math")
    try:
        dense = forward(model, inputs)
        handle = ta.enable_sta(model, window=(99, 99, 99), tile=TILE, strict=True)
        out = forward(model, inputs)
        ta.disable_sta(model)
    finally:
        model.reset_attention_backend()
    assert handle.routed == {0: 1, 1: 1, 2: 1, 3: 1}
    assert rel(out, dense) < 1e-5


def test_bad_arguments_name_themselves():
    model = hunyuan()
    with pytest.raises(ValueError, match="window and strategy"):
        ta.enable_sta(model, window=(3, 3, 3), strategy=tileattn.MaskStrategy())
    with pytest.raises(ValueError, match="window must be three positive ints"):
        ta.enable_sta(model, window=(3, 0, 3))
    with pytest.raises(ValueError, match="tile"):
        ta.enable_sta(model, tile=(2, 2))
    with pytest.raises(TypeError, match="pipe_or_transformer"):
        ta.enable_sta(object())
    with pytest.raises(TypeError, match="not supported"):
        ta.enable_sta(torch.nn.Linear(2, 2))
    ta.enable_sta(model)
    try:
        with pytest.raises(RuntimeError, match="already has STA"):
            ta.enable_sta(model)
    finally:
        ta.disable_sta(model)


def test_backward_through_sta_matches_reference():
    """Fine-tuning path: gradients of the model's parameters with STA (CPU reference backward) equal the masked
    reference's."""
    model, inputs = hunyuan(layers=1, single=1), hunyuan_inputs(batch=1, valid=(5,))

    def grads():
        model.zero_grad()
        model(**inputs, return_dict=False)[0].square().mean().backward()
        return torch.cat([p.grad.flatten() for p in model.transformer_blocks[0].attn.to_q.parameters()])

    with MaskedReference(model, (1, 3, 1), TILE):
        ref = grads()
    ta.enable_sta(model, window=(1, 3, 1), tile=TILE, strict=True)
    try:
        got = grads()
    finally:
        ta.disable_sta(model)
    assert rel(got, ref) < 1e-4, rel(got, ref)


# ---- HunyuanVideo 1.5: pairwise padding mask ----

def test_hunyuan15_pairwise_mask_routes_and_matches():
    model, inputs = hunyuan15(), hunyuan15_inputs()
    dense = forward(model, inputs)
    handle, out = sta_forward(model, inputs, window=(99, 99, 99))
    assert handle.routed == {0: 1, 1: 1} and not handle.fallbacks
    assert torch.isfinite(out).all()
    assert rel(out, dense) < 1e-5, rel(out, dense)
    with MaskedReference(model, (1, 3, 3), TILE):
        ref = forward(model, inputs)
    _, out = sta_forward(model, inputs, window=(1, 3, 3))
    assert rel(out, ref) < 1e-5, rel(out, ref)


# ---- Wan ----

def test_wan_self_attention_only():
    model, inputs = wan(), wan_inputs()
    layers = ta.self_attention_layers(model)
    assert layers == [b.attn1 for b in model.blocks]  # attn2 (cross-attention) is not routed
    dense = forward(model, inputs)
    handle, out = sta_forward(model, inputs, window=(99, 99, 99))
    assert handle.routed == {0: 1, 1: 1}
    assert rel(out, dense) < 1e-5
    with MaskedReference(model, (3, 1, 3), TILE):
        ref = forward(model, inputs)
    _, out = sta_forward(model, inputs, window=(3, 1, 3))
    assert rel(out, ref) < 1e-5 and rel(out, dense) > 1e-3


def test_video_shape_follows_the_latent():
    """Any resolution and frame count: the shape comes from each call's latent and the patch sizes."""
    model = wan()
    shapes = []

    class Spy(ta.ModelHooks):
        def on_call(self, layer, call, video):
            shapes.append(video)

    spy = Spy([model])
    spy._install()
    try:
        forward(model, wan_inputs(frames=3, height=6, width=8))
        forward(model, wan_inputs(frames=2, height=10, width=4))
    finally:
        spy.remove()
    assert shapes == [(3, 3, 4)] * 2 + [(2, 5, 2)] * 2


# ---- step caching together with STA ----

def test_first_block_cache_with_full_window_equals_cache_with_dense():
    from diffusers.hooks import FirstBlockCacheConfig

    def steps(model):
        outs = []
        with model.cache_context("cond"):
            for t in (900.0, 800.0, 700.0):
                outs.append(forward(model, hunyuan_inputs(t=t)))
        return torch.stack(outs)

    model = hunyuan()
    model.enable_cache(FirstBlockCacheConfig(threshold=0.5))
    try:
        dense = steps(model)
        model.disable_cache()
        model.enable_cache(FirstBlockCacheConfig(threshold=0.5))
        handle = ta.enable_sta(model, window=(99, 99, 99), tile=TILE, strict=True)
        cached = steps(model)
        ta.disable_sta(model)
    finally:
        model.disable_cache()
    assert rel(cached, dense) < 1e-5
    assert sum(handle.routed.values()) >= 4  # at least the first step ran every layer through STA


# ---- calibration captures from the real model ----

def test_capture_attach_records_post_rope_qkv(tmp_path):
    model, inputs = hunyuan(), hunyuan_inputs(batch=1, valid=(7,))
    capture = tileattn.ActivationCapture(tmp_path, video_shape=(5, 6, 8), text_len=7, layers=[0, 3], prompt="p")
    seen = {}

    class Spy(ta.ModelHooks):
        def on_call(self, layer, call, video):
            seen[layer] = call.bhsd()[0].clone()

    hooks = capture.attach(model)
    try:
        forward(model, inputs)
    finally:
        hooks.remove()
    spy = Spy([model])  # one handler answers a layer's call at a time: the spy runs alone
    spy._install()
    try:
        forward(model, inputs)
    finally:
        spy.remove()
    assert sorted(p.split("/")[-1] for p in capture.written) == ["step0_layer0_promptp.safetensors",
                                                                 "step0_layer3_promptp.safetensors"]
    from safetensors.torch import load_file
    q = load_file(capture.written[0])["q"]
    assert torch.equal(q, seen[0])  # exactly what attention saw (after RoPE and norms)


def test_processor_wrapper_keeps_the_signature():
    """The per-processor wrapper (for other models) must keep image_rotary_emb: full window equals dense."""
    import inspect
    model, inputs = hunyuan(), hunyuan_inputs()
    dense = forward(model, inputs)
    originals = {}
    for i, attn in enumerate(ta.self_attention_layers(model)):
        originals[i] = attn.processor
        wrapped = tileattn.SlidingTileAttnProcessor(attn.processor, layer=i, video_shape=(5, 6, 8), text_len=7,
                                                    tile=TILE, window=(99, 99, 99))
        assert inspect.signature(wrapped.__call__) == inspect.signature(attn.processor.__call__)
        attn.set_processor(wrapped)
    try:
        out = forward(model, inputs)
        routed = [ta.self_attention_layers(model)[i].processor.routed_calls for i in originals]
    finally:
        for i, attn in enumerate(ta.self_attention_layers(model)):
            attn.set_processor(originals[i])
    assert routed == [1, 1, 1, 1]
    assert rel(out, dense) < 1e-5


def test_wan22_pipeline_two_transformers_share_one_step():
    """Wan 2.2's pipeline holds two transformers (high- and low-noise experts): one handle, one step counter."""
    import types
    pipe = types.SimpleNamespace(transformer=wan(), transformer_2=wan())
    handle = ta.enable_sta(pipe, window=(99, 99, 99), tile=TILE, strict=True)
    try:
        assert ta.sta_handle(pipe) is handle and ta.sta_handle(pipe.transformer_2) is handle
        assert handle.num_layers == 4
        forward(pipe.transformer, dict(wan_inputs(), timestep=torch.tensor([900.0])))
        forward(pipe.transformer_2, dict(wan_inputs(), timestep=torch.tensor([400.0])))
        assert handle.step == 1 and handle.routed == {0: 1, 1: 1, 2: 1, 3: 1}
    finally:
        ta.disable_sta(pipe)
    assert ta.sta_handle(pipe.transformer) is None and ta.sta_handle(pipe.transformer_2) is None


# ---- per-layer precision (strategy files, enable_sta(precision=...)) ----

class PrecisionReference(HookedReference):
    """Every routed layer as tileattn.sta_attention at native precision, except `fp8_layers`, which run the FP8
    emulation (tileattn.fp8_reference) directly: what a strategy naming those layers fp8 must give."""

    def __init__(self, model, window, tile, fp8_layers, text_valid):
        super().__init__(model)
        self.window, self.tile, self.fp8_layers, self.text_valid = window, tile, set(fp8_layers), text_valid

    def on_call(self, layer, call, video):
        from tileattn.fp8_reference import sta_attention_fp8_reference
        q, k, v = call.bhsd()
        grid = [-(-n // t) for n, t in zip(video, self.tile)]
        win = tuple(min(w, g) for w, g in zip(self.window, grid))
        plan = tileattn.StaPlan(video, win, self.tile, q.shape[2] - video[0] * video[1] * video[2])
        with _intercept.suspended():
            if layer in self.fp8_layers:
                out = sta_attention_fp8_reference(q, k, v, plan, self.text_valid, scale=call.scale)
            else:
                out = tileattn.sta_attention(q, k, v, plan=plan, text_valid=self.text_valid, scale=call.scale)
        return call.from_bhsd(out)


def test_strategy_runs_one_layer_fp8(tmp_path):
    model, inputs = hunyuan(), hunyuan_inputs(frames=5, height=14, width=18)  # partial tiles, padded text
    text_valid = inputs["encoder_attention_mask"].sum(1, dtype=torch.int32)
    path = tmp_path / "fp8.json"
    path.write_text('{"format": "tileattn.mask_strategy", "version": 1, "default": [1, 3, 3], '
                    '"layer_precision": {"1": "fp8"}}')
    strategy = tileattn.MaskStrategy.read(str(path))
    assert [strategy.precision_for(layer) for layer in range(4)] == ["native", "fp8", "native", "native"]
    native = sta_forward(model, inputs, window=(1, 3, 3))[1]
    handle = ta.enable_sta(model, strategy=strategy, tile=TILE, strict=True)
    try:
        out = forward(model, inputs)
    finally:
        ta.disable_sta(model)
    assert handle.routed == {0: 1, 1: 1, 2: 1, 3: 1} and not handle.fallbacks
    with PrecisionReference(model, (1, 3, 3), TILE, {1}, text_valid):
        ref = forward(model, inputs)
    print(f"one fp8 layer: vs emulation {rel(out, ref):.2e}, vs native {rel(out, native):.2e}")
    assert rel(out, ref) < 1e-6, rel(out, ref)  # layer 1 is the emulation, the others native
    assert 1e-4 < rel(out, native) < 5e-2, rel(out, native)  # fp8 on one layer: small, not nothing
    with PrecisionReference(model, (1, 3, 3), TILE, {2}, text_valid):
        other = forward(model, inputs)
    assert rel(out, other) > 1e-4  # it was layer 1, not another one

    # enable_sta(precision=...) overrides the strategy for every layer
    handle = ta.enable_sta(model, strategy=strategy, tile=TILE, strict=True, precision="fp8")
    try:
        every = forward(model, inputs)
    finally:
        ta.disable_sta(model)
    with PrecisionReference(model, (1, 3, 3), TILE, {0, 1, 2, 3}, text_valid):
        ref_every = forward(model, inputs)
    assert rel(every, ref_every) < 1e-6
    assert rel(every, out) > 1e-4


def test_precision_default_and_bad_values(tmp_path):
    path = tmp_path / "old.json"
    path.write_text('{"format": "tileattn.mask_strategy", "version": 1, "default": [1, 1, 1]}')
    assert tileattn.MaskStrategy.read(str(path)).precision_for(0) == "native"  # absent: native, as before
    path.write_text('{"format": "tileattn.mask_strategy", "version": 1, "precision": "fp8", '
                    '"layer_precision": {"0": "native"}}')
    s = tileattn.MaskStrategy.read(str(path))
    assert (s.precision_for(0), s.precision_for(3)) == ("native", "fp8")
    path.write_text('{"format": "tileattn.mask_strategy", "version": 1, "layer_precision": {"0": "int8"}}')
    with pytest.raises(tileattn.TileattnFileError, match="layer_precision.0"):
        tileattn.MaskStrategy.read(str(path))
    with pytest.raises(ValueError, match="precision"):
        ta.enable_sta(hunyuan(layers=1, single=0), window=(1, 1, 1), tile=TILE, precision="fp4")
