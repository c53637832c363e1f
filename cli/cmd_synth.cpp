// tileattn synth: synthetic captures with known per-head 3D locality, for testing calibration (see synth.cpp).
#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>

#include "commands.hpp"
#include "tileattn/calibration.hpp"
#include "tileattn/error.hpp"

namespace tileattn::cli {

namespace {

struct SynthCliOptions {
  std::string out_dir, video = "12x16x16", tile = "6x8x8", dtype = "bf16";
  SynthOptions synth;
};

int run_synth(SynthCliOptions& o) {
  SynthOptions& s = o.synth;
  s.video = parse_extent3(o.video, "--video");
  s.tile = parse_extent3(o.tile, "--tile");
  if (s.text_len < 0) throw_argument_error("--text-len", fmt::format("must be >= 0, got {}", s.text_len));
  if (s.threads < 0) throw_argument_error("--threads", fmt::format("must be >= 0 (0: all), got {}", s.threads));
  cli_geometry(s.video, s.tile, s.text_len, {"--video", "--tile", "--text-len"});
  if (o.dtype == "bf16") s.dtype = CaptureDType::bf16;
  else if (o.dtype == "fp16") s.dtype = CaptureDType::fp16;
  else if (o.dtype == "fp32") s.dtype = CaptureDType::fp32;
  else throw_argument_error("--dtype", "must be bf16, fp16 or fp32, got " + o.dtype);
  const bool tty = isatty(fileno(stderr)) != 0;
  const std::vector<std::string> paths = write_synthetic_captures(o.out_dir, s, [tty](int64_t done, int64_t total) {
    if (!tty) return;
    fmt::print(stderr, "\rsynth: {}/{} captures written", done, total);
    if (done == total) fmt::print(stderr, "\n");
  });
  for (int64_t layer = 0; layer < s.layers; ++layer) {
    std::vector<std::string> heads;
    for (const SynthHead& h : synth_heads(s, layer))
      heads.push_back(h.global ? "global" : fmt::format("{:.1f}x{:.1f}x{:.1f}", h.length[0], h.length[1], h.length[2]));
    fmt::print("layer {} locality (tokens, t x h x w): {}\n", layer, fmt::join(heads, " "));
  }
  fmt::print("wrote {} captures ({} steps x {} layers x {} prompts, video {}, text {}, {} heads, head dim {}, {}) "
             "to {}\n", paths.size(), s.steps, s.layers, s.prompts, to_string(s.video), s.text_len, s.heads,
             s.head_dim, o.dtype, o.out_dir);
  return 0;
}

}  // namespace

Action add_synth_command(CLI::App& app) {
  auto o = std::make_shared<SynthCliOptions>();
  CLI::App* cmd = app.add_subcommand("synth", "Write synthetic captures with known per-head 3D locality");
  cmd->add_option("OUT_DIR", o->out_dir, "directory for the *.safetensors captures")->required();
  cmd->add_option("--video", o->video, "latent video T x H x W in tokens")->capture_default_str();
  cmd->add_option("--tile", o->tile, "tile shape (locality lengths are drawn relative to it)")->capture_default_str();
  cmd->add_option("--text-len", o->synth.text_len, "text tokens after the video")->capture_default_str();
  cmd->add_option("--heads", o->synth.heads, "attention heads")->capture_default_str();
  cmd->add_option("--head-dim", o->synth.head_dim, "head dimension")->capture_default_str();
  cmd->add_option("--layers", o->synth.layers, "layers")->capture_default_str();
  cmd->add_option("--steps", o->synth.steps, "denoising steps")->capture_default_str();
  cmd->add_option("--prompts", o->synth.prompts, "prompts (captures per step and layer)")->capture_default_str();
  cmd->add_option("--batch", o->synth.batch, "batch size of each capture")->capture_default_str();
  cmd->add_option("--seed", o->synth.seed, "random seed")->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "bf16, fp16 or fp32")->capture_default_str();
  cmd->add_option("--sharpness", o->synth.sharpness, "peak attention logit; 0: ln(tokens) + 2")->capture_default_str();
  cmd->add_option("--threads", o->synth.threads, "CPU threads (0: all)")->capture_default_str();
  return [o] { return run_synth(*o); };
}

}  // namespace tileattn::cli
