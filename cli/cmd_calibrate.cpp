// tileattn calibrate: per-head STA windows from captured activations under a sparsity budget (calibration.hpp).
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>

#include "commands.hpp"
#include "tileattn/calibration.hpp"
#include "tileattn/error.hpp"

namespace tileattn::cli {

namespace {

struct CalibrateOptions {
  std::string capture_dir, candidates, tile = "6x8x8", rule = "budget", device = "auto", output, report_dir;
  double target = -1;
  int64_t dense_steps = 0;
  int threads = 0;
  bool quiet = false;
};

std::string duration(double seconds) {
  const int64_t s = int64_t(seconds + 0.5);
  return s >= 3600 ? fmt::format("{}h{:02}m", s / 3600, s / 60 % 60) : fmt::format("{}m{:02}s", s / 60, s % 60);
}

// A progress bar with ETA on stderr: redrawn in place on a terminal, else one line per 10% of the work.
class Progress {
 public:
  explicit Progress(bool quiet) : quiet_(quiet), tty_(isatty(fileno(stderr)) != 0) {}
  void operator()(double done, double total, const std::string& what) {
    if (quiet_ || total <= 0) return;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double fraction = std::min(1.0, done / total);
    const std::string eta = done > 0 ? duration(elapsed / done * (total - done)) : "?";
    if (tty_) {
      if (fraction < 1.0 && elapsed - last_ < 0.1) return;
      last_ = elapsed;
      const int width = 30, filled = int(fraction * width);
      fmt::print(stderr, "\rscoring [{}{}] {:5.1f}% ETA {} ({})\x1b[K", std::string(filled, '#'),
                 std::string(width - filled, '.'), 100 * fraction, eta, what);
      if (fraction >= 1.0) fmt::print(stderr, "\n");
    } else if (int(fraction * 10) > decile_) {
      decile_ = int(fraction * 10);
      fmt::print(stderr, "scoring: {:3.0f}% after {}, ETA {} ({})\n", 100 * fraction, duration(elapsed), eta, what);
    }
  }

 private:
  bool quiet_, tty_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  double last_ = -1;
  int decile_ = 0;
};

int run_calibrate(const CalibrateOptions& o) {
  ScoringOptions so;
  so.candidates = parse_window_list(o.candidates, "--candidates");
  so.tile = parse_extent3(o.tile, "--tile");
  so.dense_steps = o.dense_steps;
  so.threads = o.threads;
  if (o.device == "auto") so.device = ScoringDevice::automatic;
  else if (o.device == "cpu") so.device = ScoringDevice::cpu;
  else if (o.device == "gpu") so.device = ScoringDevice::gpu;
  else throw_argument_error("--device", "must be auto, cpu or gpu, got " + o.device);
  CalibrationRule rule = CalibrationRule::budget;
  if (o.rule == "argmin") rule = CalibrationRule::argmin;
  else if (o.rule != "budget") throw_argument_error("--rule", "must be budget or argmin, got " + o.rule);
  if (rule == CalibrationRule::budget && o.target < 0)
    throw_argument_error("--target-sparsity", "the budget rule needs --target-sparsity in [0, 1]");
  if (rule == CalibrationRule::argmin && o.target >= 0)
    throw_argument_error("--target-sparsity", "--rule argmin has no budget; leave --target-sparsity out");
  if (rule == CalibrationRule::budget && !(o.target >= 0 && o.target <= 1))  // NaN too
    throw_argument_error("--target-sparsity", fmt::format("must be in [0, 1], got {}", o.target));
  if (o.dense_steps < 0) throw_argument_error("--dense-steps", fmt::format("must be >= 0, got {}", o.dense_steps));
  if (o.threads < 0) throw_argument_error("--threads", fmt::format("must be >= 0, got {}", o.threads));

  const std::vector<CaptureInfo> captures = list_captures(o.capture_dir);
  Progress progress(o.quiet);
  so.progress = [&](double done, double total, const std::string& what) { progress(done, total, what); };
  const auto start = std::chrono::steady_clock::now();
  CalibrationScores scores = score_captures(captures, so);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  fmt::print("scored {} captures ({} heads each, {} candidates) on the {} in {:.1f} s\n", scores.captures_scored,
             scores.heads, scores.candidates.size(), scores.device, seconds);
  const CalibrationResult result = calibrate(std::move(scores), rule, o.target);
  const std::string report_dir = !o.report_dir.empty() ? o.report_dir
      : std::filesystem::path(o.output).has_parent_path() ? std::filesystem::path(o.output).parent_path().string() : ".";
  const std::vector<std::string> written = write_calibration_outputs(result, o.output, report_dir);
  const Solution& s = result.solution;
  if (rule == CalibrationRule::budget)
    fmt::print("achieved sparsity {:.4f} (target {:.4f}), mean relative L2 error {:.4f}\n", s.sparsity, o.target,
               s.mean_error);
  else
    fmt::print("achieved sparsity {:.4f} (argmin rule, no budget), mean relative L2 error {:.4f}\n", s.sparsity,
               s.mean_error);
  const GlobalWindowResult& g = result.best_global_at_achieved;
  if (g.candidate >= 0)
    fmt::print("best single global window at sparsity >= {:.4f}: {} (sparsity {:.4f}), mean error {:.4f}\n",
               s.sparsity, to_string(result.scores.candidates[g.candidate]), g.sparsity, g.mean_error);
  fmt::print("wrote {}\n", fmt::join(written, ", "));
  return 0;
}

}  // namespace

Action add_calibrate_command(CLI::App& app) {
  auto o = std::make_shared<CalibrateOptions>();
  CLI::App* cmd = app.add_subcommand("calibrate", "Choose per-head STA windows from captured activations");
  cmd->add_option("CAPTURE_DIR", o->capture_dir, "directory of *.safetensors captures")->required();
  cmd->add_option("--candidates", o->candidates, "comma-separated candidate windows in tiles (the full window is "
                  "always added; axes wider than the grid are clamped to it)")->required();
  cmd->add_option("--target-sparsity", o->target, "minimum mean sparsity over the calibrated heads (budget rule)");
  cmd->add_option("--tile", o->tile, "tile shape")->capture_default_str();
  cmd->add_option("--dense-steps", o->dense_steps, "steps < N stay dense and are not calibrated")->capture_default_str();
  cmd->add_option("--rule", o->rule, "budget (min error at the target sparsity) or argmin (FastVideo: lowest error "
                  "per head, full window excluded)")->capture_default_str();
  cmd->add_option("--device", o->device, "auto, cpu (reference) or gpu (Hopper kernels)")->capture_default_str();
  cmd->add_option("-o,--output", o->output, "mask strategy to write (tileattn format; <stem>.fastvideo.json next to "
                  "it)")->required();
  cmd->add_option("--report-dir", o->report_dir, "directory for report.md, report.json, windows_heatmap.svg "
                  "(default: the directory of --output)");
  cmd->add_option("--threads", o->threads, "CPU threads (0: all)")->capture_default_str();
  cmd->add_flag("-q,--quiet", o->quiet, "no progress output");
  return [o] { return run_calibrate(*o); };
}

}  // namespace tileattn::cli
