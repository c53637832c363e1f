#!/usr/bin/env python3
"""tileattn synth + calibrate end to end on a small shape (CPU reference), and calibrate's errors on bad input."""
import json
import os
import subprocess
import sys
import tempfile

CLI = sys.argv[1]
SMALL = ["--video", "6x12x12", "--tile", "2x4x4", "--text-len", "8", "--heads", "8", "--head-dim", "32"]
CANDIDATES = "1x1x1,1x1x3,1x3x1,3x1x1,1x3x3,3x3x1,3x1x3"


def run(*args, ok=True):
    r = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=300)
    if ok:
        assert r.returncode == 0, (args, r.returncode, r.stdout, r.stderr)
    else:
        assert r.returncode > 0, (args, r.returncode, r.stderr)  # negative = killed by a signal
    return r


def calibrate(captures, out, *extra, ok=True):
    return run("calibrate", captures, "--tile", "2x4x4", "--candidates", CANDIDATES, "--device", "cpu", "--quiet",
               "-o", os.path.join(out, "windows.json"), *extra, ok=ok)


def main():
    with tempfile.TemporaryDirectory() as tmp:
        captures = os.path.join(tmp, "captures")
        run("synth", captures, *SMALL, "--layers", "2", "--steps", "2", "--prompts", "2", "--seed", "3")
        assert len(os.listdir(captures)) == 8, os.listdir(captures)

        out = os.path.join(tmp, "budget")
        calibrate(captures, out, "--target-sparsity", "0.6", "--dense-steps", "1")
        report = json.load(open(os.path.join(out, "report.json")))
        assert report["target_met"] and report["achieved_sparsity"] >= 0.6, report["achieved_sparsity"]
        assert report["beats_best_global"], (report["mean_error"], report["best_global_at_achieved"])
        assert report["calibrated_heads"] == 16 and report["captures_skipped"] == 4, report
        assert report["error_lower_bound"] <= report["mean_error"]
        ours = json.load(open(os.path.join(out, "windows.json")))
        assert ours["format"] == "tileattn.mask_strategy" and ours["dense_steps"] == 1, ours
        assert len(ours["windows"]) == 16 and all(k.startswith("1_") for k in ours["windows"]), ours["windows"]
        fastvideo = json.load(open(os.path.join(out, "windows.fastvideo.json")))
        assert fastvideo["0_1_7"] == [3, 3, 3] and fastvideo["1_1_7"] == ours["windows"]["1_1_7"], fastvideo
        svg = open(os.path.join(out, "windows_heatmap.svg")).read()
        assert svg.startswith("<svg") and "step 1 layer 1" in svg
        assert "target met" in open(os.path.join(out, "report.md")).read()

        out = os.path.join(tmp, "argmin")
        calibrate(captures, out, "--rule", "argmin")
        report = json.load(open(os.path.join(out, "report.json")))
        assert report["rule"] == "argmin" and report["calibrated_heads"] == 32, report
        full = [c for c in report["candidates"] if c["label"].endswith("(full)")]
        assert full and full[0]["chosen"] == 0, report["candidates"]

        errors = [
            (["--target-sparsity", "0.99", "--dense-steps", "1"], "--target-sparsity"),  # beyond the sparsest
            ([], "--target-sparsity"),                                # the budget rule needs one
            (["--rule", "argmin", "--target-sparsity", "0.5"], "--target-sparsity"),
            (["--rule", "best"], "--rule"),
            (["--target-sparsity", "0.5", "--dense-steps", "2"], "--dense-steps"),  # nothing left to calibrate
            (["--target-sparsity", "0.5", "--device", "tpu"], "--device"),
        ]
        for extra, needle in errors:
            r = calibrate(captures, os.path.join(tmp, "bad"), *extra, ok=False)
            assert needle in r.stderr, (extra, r.stderr)
        r = run("calibrate", captures, "--tile", "2x4x4", "--candidates", "2x3x3", "--target-sparsity", "0.5",
                "-o", os.path.join(tmp, "bad", "w.json"), ok=False)
        assert "--candidates" in r.stderr and "2x3x3" in r.stderr, r.stderr
        r = calibrate(os.path.join(tmp, "nowhere"), os.path.join(tmp, "bad"), "--target-sparsity", "0.5", ok=False)
        assert "nowhere" in r.stderr and "not a directory" in r.stderr, r.stderr
        victim = os.path.join(captures, "step1_layer0_prompt1.safetensors")
        data = open(victim, "rb").read()
        open(victim, "wb").write(data[:-100])
        r = calibrate(captures, os.path.join(tmp, "bad"), "--target-sparsity", "0.5", ok=False)
        assert victim in r.stderr and "truncated" in r.stderr, r.stderr
        assert not os.path.exists(os.path.join(tmp, "bad", "windows.json"))
        for args, needle in [(["synth", tmp, "--video", "6x12"], "--video"), (["synth", tmp, "--heads", "0"], "--heads"),
                             (["synth", tmp, "--dtype", "int8"], "--dtype")]:
            r = run(*args, ok=False)
            assert needle in r.stderr, (args, r.stderr)
    print(f"synth + calibrate end to end (budget and argmin rules); {len(errors) + 6} bad invocations rejected")


if __name__ == "__main__":
    main()
