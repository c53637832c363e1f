"""Calibration from a real diffusers pipeline's transformer, end to end:

1. capture q/k/v of every self-attention layer (after RoPE and norms) over a few prompts at the chosen steps,
   with tileattn.ActivationCapture.attach (processors untouched);
2. calibrate per-head windows under a sparsity budget with `tileattn calibrate`;
3. run the transformer with the strategy (tileattn.diffusers.enable_sta(strategy=...)) and compare it with dense.

    python3 examples/calibrate_diffusers.py --out calibration-run/                  # tiny model, CPU, ~10 s
    python3 examples/calibrate_diffusers.py --full --out calibration-run/           # HunyuanVideo 720p on a GPU

The transformer is diffusers' HunyuanVideoTransformer3DModel with random weights (this workplace ships no trained
weights): the windows it finds say nothing about a trained model, but every step is the one a user runs. "Prompts"
are random text embeddings; with a real pipeline, capture while calling pipe(prompt) for each prompt instead.
"""
import argparse
import pathlib
import subprocess
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "python"))
import tileattn  # noqa: E402
import tileattn.diffusers as ta  # noqa: E402


def model_and_inputs(full, device, dtype):
    from diffusers import HunyuanVideoTransformer3DModel
    if full:
        with torch.device(device):
            model = HunyuanVideoTransformer3DModel().to(dtype).eval()  # 20 + 40 blocks, 24 heads x 128
        latent, text, valid = (1, 16, 30, 96, 160), 256, 160
    else:
        torch.manual_seed(0)
        model = HunyuanVideoTransformer3DModel(
            in_channels=4, out_channels=4, num_attention_heads=4, attention_head_dim=16, num_layers=1,
            num_single_layers=1, num_refiner_layers=1, text_embed_dim=16, pooled_projection_dim=8,
            rope_axes_dim=(4, 6, 6)).to(device, dtype).eval()
        latent, text, valid = (1, 4, 6, 16, 16), 8, 6

    def inputs(prompt, timestep):
        g = torch.Generator(device).manual_seed(1000 + prompt)  # the same latent for every prompt; the text differs
        x = torch.randn(latent, generator=g, device=device, dtype=dtype)
        g = torch.Generator(device).manual_seed(prompt)
        mask = torch.zeros(1, text, dtype=torch.bool, device=device)
        mask[:, :valid] = True
        cfg = model.config
        return dict(hidden_states=x, timestep=torch.tensor([timestep], device=device),
                    encoder_hidden_states=torch.randn(1, text, cfg.text_embed_dim, generator=g, device=device,
                                                      dtype=dtype),
                    encoder_attention_mask=mask,
                    pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=g, device=device,
                                                   dtype=dtype),
                    guidance=torch.tensor([6.0], device=device, dtype=dtype))
    return model, inputs, text


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="HunyuanVideo at 720p on a GPU (default: a tiny model)")
    ap.add_argument("--out", required=True, help="directory for captures/, windows.json and the reports")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--steps", default="900,500", help="timesteps of the denoising steps to capture (one per step)")
    ap.add_argument("--target-sparsity", type=float, default=0.5)
    ap.add_argument("--cli", default=str(pathlib.Path(__file__).resolve().parent.parent / "build" / "tileattn"))
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    device = "cuda" if args.full else "cpu"
    dtype = torch.bfloat16 if args.full else torch.float32
    model, inputs, text = model_and_inputs(args.full, device, dtype)
    tile = (6, 8, 8) if args.full else (2, 4, 4)
    timesteps = [float(t) for t in args.steps.split(",")]
    video = ta.video_shape_of(model, inputs(0, timesteps[0])["hidden_states"])

    # 1. captures: one file per (step, layer, prompt); the step index follows the timesteps (900 -> step 0, ...)
    capture = tileattn.ActivationCapture(out / "captures", video_shape=video, text_len=text)
    hooks = capture.attach(model)
    try:
        with torch.no_grad():
            for prompt in range(args.prompts):
                capture.prompt = f"p{prompt}"
                for t in timesteps:
                    model(**inputs(prompt, t))
    finally:
        hooks.remove()
    print(f"captured {len(capture.written)} files ({len(ta.self_attention_layers(model))} layers x {len(timesteps)} "
          f"steps x {args.prompts} prompts) in {out / 'captures'}")

    # 2. calibration under the budget (GPU kernels on a Hopper GPU, the CPU reference elsewhere)
    candidates = "3x3x3,3x5x5,5x3x5,5x5x3,5x5x5,1x3x3,3x1x3,3x3x1" if args.full else \
        "1x1x1,1x1x3,1x3x1,3x1x1,1x3x3,3x1x3,3x3x1,3x3x3"
    subprocess.run([args.cli, "calibrate", str(out / "captures"), "--tile", "x".join(map(str, tile)),
                    "--candidates", candidates, "--target-sparsity", str(args.target_sparsity), "-q",
                    "-o", str(out / "windows.json")], check=True)
    print((out / "report.md").read_text().splitlines()[0] if (out / "report.md").exists() else "")

    # 3. run with the strategy, against dense, at each calibrated step
    with torch.no_grad():
        dense = [model(**inputs(0, t), return_dict=False)[0] for t in timesteps]
        handle = ta.enable_sta(model, strategy=out / "windows.json", strict=True)
        try:
            sta = [model(**inputs(0, t), return_dict=False)[0] for t in timesteps]
        finally:
            ta.disable_sta(model)
    for t, d, s in zip(timesteps, dense, sta):
        print(f"timestep {t:g}: relative L2 of the calibrated STA output vs dense {((s - d).norm() / d.norm()):.4f}")
    print(handle.report())


if __name__ == "__main__":
    main()
