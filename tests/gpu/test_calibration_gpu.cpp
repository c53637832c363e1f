// Calibration scoring on the GPU (sta_forward + device reductions) against the CPU reference on the same synthetic
// captures. Skips cleanly without a Hopper GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "tileattn/calibration.hpp"
#include "tileattn/sta.hpp"

using namespace tileattn;

TEST(CalibrationGpu, ScoresMatchTheCpuReference) {
  if (!gpu_kernels_available()) GTEST_SKIP() << "no Hopper GPU";
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "tileattn_test_calibration_gpu";
  std::filesystem::remove_all(dir);
  SynthOptions synth;
  synth.video = {6, 24, 24}, synth.tile = {2, 8, 8}, synth.text_len = 16;  // grid 3x3x3; GPU tiles need h*w = 64
  synth.heads = 8, synth.head_dim = 64, synth.layers = 1, synth.prompts = 2, synth.seed = 4;
  write_synthetic_captures(dir.string(), synth);
  const std::vector<CaptureInfo> captures = list_captures(dir.string());

  ScoringOptions o;
  o.tile = synth.tile;
  o.candidates = {{1, 1, 1}, {1, 3, 3}, {3, 1, 3}, {3, 3, 1}, {1, 1, 3}};
  o.device = ScoringDevice::cpu;
  const CalibrationScores cpu = score_captures(captures, o);
  o.device = ScoringDevice::gpu;
  const CalibrationScores gpu = score_captures(captures, o);
  EXPECT_EQ(gpu.device, "gpu");
  ASSERT_EQ(cpu.items, gpu.items);
  ASSERT_EQ(cpu.candidates, gpu.candidates);
  double worst = 0;
  for (size_t i = 0; i < cpu.items.size(); ++i)
    for (size_t c = 0; c < cpu.candidates.size(); ++c) {
      const double a = cpu.error[i][c], b = gpu.error[i][c];
      worst = std::max(worst, std::fabs(a - b));
      EXPECT_NEAR(b, a, 0.01 + 0.02 * a) << "head " << cpu.items[i].head << " window " << to_string(cpu.candidates[c]);
    }
  std::printf("[ calib ] GPU vs CPU scores: worst |difference| %.5f over %zu heads x %zu candidates\n", worst,
              cpu.items.size(), cpu.candidates.size());
  // The windows chosen from GPU scores are as good, judged by the CPU scores, as those chosen from CPU scores.
  const CalibrationResult rc = calibrate(cpu, CalibrationRule::budget, 0.5);
  const CalibrationResult rg = calibrate(gpu, CalibrationRule::budget, 0.5);
  EXPECT_GE(rg.solution.sparsity, 0.5 - 1e-12);
  const std::vector<std::vector<double>> sparsity(cpu.items.size(), cpu.candidate_sparsity);
  EXPECT_LE(evaluate_choice(cpu.error, sparsity, rg.solution.choice).mean_error, rc.solution.mean_error + 0.02);
}
