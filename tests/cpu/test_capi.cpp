// The C ABI reports bad arguments as status codes with a message naming the argument (no GPU needed).
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdio>
#include <string>
#include <vector>

#include "capi_fixtures.hpp"
#include "tileattn/tileattn.h"

using capi_fixtures::valid_args;
using capi_fixtures::valid_dyn_args;
using capi_fixtures::valid_fg_args;

namespace {
std::string run(const tileattn_sta_forward_args& a, int expect_status) {
  EXPECT_EQ(tileattn_sta_forward(&a, nullptr), expect_status);
  return tileattn_last_error();
}
}  // namespace

TEST(CApi, NamesTheBadArgument) {
  EXPECT_EQ(tileattn_sta_forward(nullptr, nullptr), TILEATTN_ERROR_ARGUMENT);
  auto a = valid_args();
  a.abi_version = 99;
  EXPECT_NE(run(a, TILEATTN_ERROR_ARGUMENT).find("abi_version"), std::string::npos);
  a = valid_args();
  a.dtype = 7;
  EXPECT_NE(run(a, TILEATTN_ERROR_ARGUMENT).find("dtype"), std::string::npos);
  a = valid_args();
  a.head_dim = 96;
  EXPECT_NE(run(a, TILEATTN_ERROR_ARGUMENT).find("head_dim"), std::string::npos);
  a = valid_args();
  a.kv_heads = 3;
  EXPECT_NE(run(a, TILEATTN_ERROR_ARGUMENT).find("kv_heads"), std::string::npos);
  a = valid_args();
  a.tile[1] = 6;  // 6 x 8 plane: not a GPU tile
  EXPECT_NE(run(a, TILEATTN_ERROR_ARGUMENT).find("tile"), std::string::npos);
  a = valid_args();
  int64_t windows[3] = {2, 1, 1};  // grid is 1x1x1
  a.windows = windows, a.num_windows = 1;
  EXPECT_NE(run(a, TILEATTN_ERROR_ARGUMENT).find("windows[0]"), std::string::npos);
  a = valid_args();
  a.num_windows = 2;  // NULL array
  EXPECT_NE(run(a, TILEATTN_ERROR_ARGUMENT).find("windows"), std::string::npos);
  a = valid_args();
  a.q.token_stride = 100;  // not a multiple of 8
  EXPECT_NE(run(a, TILEATTN_ERROR_ARGUMENT).find("'q'"), std::string::npos);
  a = valid_args();
  a.out.data = nullptr;
  EXPECT_NE(run(a, TILEATTN_ERROR_ARGUMENT).find("'out'"), std::string::npos);
  a = valid_args();
  a.layout = TILEATTN_TILE_MAJOR;
  a.video[2] = 9;  // partial tile
  EXPECT_NE(run(a, TILEATTN_ERROR_ARGUMENT).find("layout"), std::string::npos);
}

TEST(CApi, ValidCallWithoutGpuReportsCudaError) {
  if (tileattn_gpu_kernels_available()) GTEST_SKIP() << "a GPU is present; covered by the GPU tests";
  auto a = valid_args();
  EXPECT_EQ(tileattn_sta_forward(&a, nullptr), TILEATTN_ERROR_CUDA);
  EXPECT_NE(std::string(tileattn_last_error()).size(), 0u);
}

TEST(CApi, PrecisionIsChecked) {
  auto a = valid_args();
  a.precision = 2;
  EXPECT_TRUE(run(a, TILEATTN_ERROR_ARGUMENT).find("precision") != std::string::npos);
  int64_t bytes = -7;
  EXPECT_EQ(tileattn_sta_forward_workspace_bytes(&a, &bytes), TILEATTN_ERROR_ARGUMENT);
  EXPECT_NE(std::string(tileattn_last_error()).find("precision"), std::string::npos);
  EXPECT_EQ(bytes, -7);
  a = valid_args();
  EXPECT_EQ(tileattn_sta_forward_workspace_bytes(&a, nullptr), TILEATTN_ERROR_ARGUMENT);
  EXPECT_NE(std::string(tileattn_last_error()).find("bytes"), std::string::npos);
  ASSERT_EQ(tileattn_sta_forward_workspace_bytes(&a, &bytes), TILEATTN_OK) << tileattn_last_error();
  EXPECT_EQ(bytes, 0);  // native precision needs no workspace
  a.head_dim = 96;      // and the size query validates like the forward
  EXPECT_EQ(tileattn_sta_forward_workspace_bytes(&a, &bytes), TILEATTN_ERROR_ARGUMENT);
  EXPECT_NE(std::string(tileattn_last_error()).find("head_dim"), std::string::npos);
}

TEST(CApi, BackwardRefusesFp8Forward) {
  static float lse[2 * 384];
  tileattn_sta_backward_args b{};
  b.forward = valid_args();
  b.forward.lse = lse;
  int64_t bytes = 0;
  ASSERT_EQ(tileattn_sta_backward_workspace_bytes(&b.forward, &bytes), TILEATTN_OK) << tileattn_last_error();
  std::vector<char> storage(static_cast<size_t>(bytes) + 256);
  b.workspace = storage.data() + (256 - reinterpret_cast<uintptr_t>(storage.data()) % 256);
  b.workspace_bytes = bytes;
  b.grad_out = b.grad_q = b.grad_k = b.grad_v = b.forward.q;
  b.forward.precision = TILEATTN_FP8;
  EXPECT_EQ(tileattn_sta_backward(&b, nullptr), TILEATTN_ERROR_ARGUMENT);
  EXPECT_NE(std::string(tileattn_last_error()).find("precision"), std::string::npos) << tileattn_last_error();
  if (tileattn_gpu_kernels_available()) return;  // host pointers: only a build without kernels may go further
  b.forward.precision = TILEATTN_NATIVE;  // the same call at native precision passes the argument checks
  EXPECT_EQ(tileattn_sta_backward(&b, nullptr), TILEATTN_ERROR_CUDA) << tileattn_last_error();
}

TEST(CApi, StructSizesAreTheHeaders) {
  EXPECT_EQ(tileattn_struct_size("tileattn_sta_forward_args"), int64_t(sizeof(tileattn_sta_forward_args)));
  EXPECT_EQ(tileattn_struct_size("tileattn_sta_backward_args"), int64_t(sizeof(tileattn_sta_backward_args)));
  // ABI 2 appended the fp8 workspace (pointer + size) to the forward struct.
  EXPECT_EQ(sizeof(tileattn_sta_forward_args), offsetof(tileattn_sta_forward_args, workspace_bytes) + 8);
  EXPECT_EQ(offsetof(tileattn_sta_forward_args, precision), 12u);
}

namespace {
std::string fg_error(const tileattn_fg_forward_args* a, int expect_status) {
  EXPECT_EQ(tileattn_fg_forward(a, nullptr), expect_status);
  std::string forward_message = tileattn_last_error();
  int64_t bytes = -1;
  EXPECT_EQ(tileattn_fg_forward_workspace_bytes(a, &bytes), expect_status);  // same checks on the C struct
  return forward_message;
}
bool names(const std::string& message, const char* argument) {
  return message.find(argument) != std::string::npos;
}
}  // namespace

TEST(CApi, FgCallsNameTheBadArgument) {
  EXPECT_TRUE(names(fg_error(nullptr, TILEATTN_ERROR_ARGUMENT), "args"));
  auto a = valid_fg_args();
  a.abi_version = TILEATTN_ABI_VERSION + 1;
  EXPECT_TRUE(names(fg_error(&a, TILEATTN_ERROR_ARGUMENT), "abi_version"));
  a = valid_fg_args();
  a.dtype = 2;
  EXPECT_TRUE(names(fg_error(&a, TILEATTN_ERROR_ARGUMENT), "dtype"));
  a = valid_fg_args();
  a.plan.query_block = 48;
  EXPECT_TRUE(names(fg_error(&a, TILEATTN_ERROR_ARGUMENT), "query_block"));
  a = valid_fg_args();
  EXPECT_EQ(tileattn_fg_forward_workspace_bytes(&a, nullptr), TILEATTN_ERROR_ARGUMENT);
  EXPECT_TRUE(names(tileattn_last_error(), "bytes"));

  const tileattn_column_plan plan = valid_fg_args().plan;
  const int64_t video[3] = {1, 16, 16};
  EXPECT_EQ(tileattn_build_synthetic_column_plan(nullptr, TILEATTN_MASK_RANDOM, 0.5, 0, nullptr, 0, 1, nullptr),
            TILEATTN_ERROR_ARGUMENT);
  EXPECT_TRUE(names(tileattn_last_error(), "plan"));
  EXPECT_EQ(tileattn_build_synthetic_column_plan(&plan, 7, 0.5, 0, video, 0, 1, nullptr), TILEATTN_ERROR_ARGUMENT);
  EXPECT_TRUE(names(tileattn_last_error(), "kind"));
  EXPECT_EQ(tileattn_build_synthetic_column_plan(&plan, TILEATTN_MASK_LOCAL, 0.5, 0, nullptr, 0, 1, nullptr),
            TILEATTN_ERROR_ARGUMENT);
  EXPECT_TRUE(names(tileattn_last_error(), "video"));
  tileattn_column_plan bad = plan;
  bad.key_group = 0;
  EXPECT_EQ(tileattn_build_synthetic_column_plan(&bad, TILEATTN_MASK_RANDOM, 0.5, 0, nullptr, 0, 1, nullptr),
            TILEATTN_ERROR_ARGUMENT);
  EXPECT_TRUE(names(tileattn_last_error(), "key_group"));
  EXPECT_EQ(tileattn_check_column_plan(nullptr, nullptr), TILEATTN_ERROR_ARGUMENT);
  EXPECT_TRUE(names(tileattn_last_error(), "plan"));
  bad = plan;
  bad.tokens = 0;
  EXPECT_EQ(tileattn_check_column_plan(&bad, nullptr), TILEATTN_ERROR_ARGUMENT);
  EXPECT_TRUE(names(tileattn_last_error(), "tokens"));
}

TEST(CApi, FgValidCallsWithoutGpuReportCudaError) {
  if (tileattn_gpu_kernels_available()) GTEST_SKIP() << "a GPU is present; covered by the GPU tests";
  const auto a = valid_fg_args();
  EXPECT_EQ(tileattn_fg_forward(&a, nullptr), TILEATTN_ERROR_CUDA);
  EXPECT_TRUE(names(tileattn_last_error(), "fg_forward"));
  const int64_t video[3] = {1, 16, 16};
  EXPECT_EQ(tileattn_build_synthetic_column_plan(&a.plan, TILEATTN_MASK_LOCAL, 0.5, 0, video, 0, 1, nullptr),
            TILEATTN_ERROR_CUDA);
  EXPECT_EQ(tileattn_check_column_plan(&a.plan, nullptr), TILEATTN_ERROR_CUDA);
}

namespace {
// Both entry points on `a`, expecting `status` from each; returns the build's message.
std::string dyn_error(const tileattn_dynamic_mask_args* a, int expect_status) {
  const tileattn_column_plan out = valid_fg_args().plan;
  int64_t bytes = -1;
  EXPECT_EQ(tileattn_dynamic_mask_workspace_bytes(a, &out, 0, &bytes), expect_status);
  const std::string bytes_message = tileattn_last_error();
  EXPECT_EQ(tileattn_build_dynamic_column_plan(a, &out, nullptr), expect_status);
  std::string message = tileattn_last_error();
  if (expect_status == TILEATTN_ERROR_ARGUMENT) EXPECT_EQ(bytes_message, message);
  return message;
}
}  // namespace

TEST(CApi, DynamicMaskCallsNameTheBadArgument) {
  EXPECT_TRUE(names(dyn_error(nullptr, TILEATTN_ERROR_ARGUMENT), "args"));
  auto a = valid_dyn_args();
  a.abi_version = TILEATTN_ABI_VERSION + 1;
  EXPECT_TRUE(names(dyn_error(&a, TILEATTN_ERROR_ARGUMENT), "abi_version"));
  a = valid_dyn_args();
  a.dtype = 2;
  EXPECT_TRUE(names(dyn_error(&a, TILEATTN_ERROR_ARGUMENT), "dtype"));
  for (int32_t rule : {-1, 4}) {
    a = valid_dyn_args();
    a.rule = rule;
    EXPECT_TRUE(names(dyn_error(&a, TILEATTN_ERROR_ARGUMENT), "rule"));
  }
  a = valid_dyn_args();
  a.head_dim = 96;
  EXPECT_TRUE(names(dyn_error(&a, TILEATTN_ERROR_ARGUMENT), "head_dim"));
  a = valid_dyn_args();
  a.kv_heads = 3;
  EXPECT_TRUE(names(dyn_error(&a, TILEATTN_ERROR_ARGUMENT), "kv_heads"));

  // Checked by the build alone: the selection values, the output, the window, the workspace.
  const tileattn_column_plan out = valid_fg_args().plan;
  a = valid_dyn_args();
  a.top_k = -1;
  EXPECT_EQ(tileattn_build_dynamic_column_plan(&a, &out, nullptr), TILEATTN_ERROR_ARGUMENT);
  EXPECT_TRUE(names(tileattn_last_error(), "'k'"));
  a = valid_dyn_args();
  a.rule = TILEATTN_RULE_TOP_P, a.p = 0.0;
  EXPECT_EQ(tileattn_build_dynamic_column_plan(&a, &out, nullptr), TILEATTN_ERROR_ARGUMENT);
  EXPECT_TRUE(names(tileattn_last_error(), "'p'"));
  a = valid_dyn_args();
  EXPECT_EQ(tileattn_build_dynamic_column_plan(&a, nullptr, nullptr), TILEATTN_ERROR_ARGUMENT);
  EXPECT_TRUE(names(tileattn_last_error(), "'out'"));
  tileattn_column_plan window = out;
  window.tokens = 512;  // not the output's shape
  a.window = &window;
  EXPECT_EQ(tileattn_build_dynamic_column_plan(&a, &out, nullptr), TILEATTN_ERROR_ARGUMENT);
  EXPECT_TRUE(names(tileattn_last_error(), "'window'"));
  a = valid_dyn_args();
  a.workspace_bytes = 16;
  EXPECT_EQ(tileattn_build_dynamic_column_plan(&a, &out, nullptr), TILEATTN_ERROR_ARGUMENT);
  EXPECT_TRUE(names(tileattn_last_error(), "'workspace'"));
  a = valid_dyn_args();
  EXPECT_EQ(tileattn_dynamic_mask_workspace_bytes(&a, &out, 0, nullptr), TILEATTN_ERROR_ARGUMENT);
  EXPECT_TRUE(names(tileattn_last_error(), "'bytes'"));
  EXPECT_EQ(tileattn_dynamic_mask_workspace_bytes(&a, nullptr, 0, &window.capacity), TILEATTN_ERROR_ARGUMENT);
  EXPECT_TRUE(names(tileattn_last_error(), "'out_shape_plan'"));
  EXPECT_EQ(tileattn_dynamic_mask_workspace_bytes(&a, &out, 3, &window.capacity), TILEATTN_ERROR_ARGUMENT);
  EXPECT_TRUE(names(tileattn_last_error(), "'heads_per_pass'"));
}

TEST(CApi, DynamicMaskValidCallsWithoutGpuReportCudaError) {
  const auto a = valid_dyn_args();
  const tileattn_column_plan out = valid_fg_args().plan;
  int64_t all = 0, one = 0;
  ASSERT_EQ(tileattn_dynamic_mask_workspace_bytes(&a, &out, 0, &all), TILEATTN_OK) << tileattn_last_error();
  ASSERT_EQ(tileattn_dynamic_mask_workspace_bytes(&a, &out, 1, &one), TILEATTN_OK) << tileattn_last_error();
  EXPECT_GT(one, 0);
  EXPECT_GE(all, one);
  EXPECT_LE(all, a.workspace_bytes);
  if (tileattn_gpu_kernels_available()) GTEST_SKIP() << "a GPU is present; covered by the GPU tests";
  EXPECT_EQ(tileattn_build_dynamic_column_plan(&a, &out, nullptr), TILEATTN_ERROR_CUDA);
  EXPECT_TRUE(names(tileattn_last_error(), "build_dynamic_column_plan_gpu"));
}

TEST(CApi, ReadsAndNormalisesMaskStrategies) {
  const std::string path = ::testing::TempDir() + "/capi_strategy.json";
  {
    std::FILE* f = std::fopen(path.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs(R"({"0_1_2": [3, 3, 3]})", f);
    std::fclose(f);
  }
  int64_t needed = 0;
  EXPECT_EQ(tileattn_mask_strategy_read(path.c_str(), nullptr, 0, &needed), TILEATTN_ERROR_ARGUMENT);
  EXPECT_NE(std::string(tileattn_last_error()).find("capacity"), std::string::npos);
  std::string buffer(static_cast<size_t>(needed), '\0');
  ASSERT_EQ(tileattn_mask_strategy_read(path.c_str(), buffer.data(), needed, &needed), TILEATTN_OK);
  EXPECT_NE(buffer.find("\"0_1_2\""), std::string::npos);
  EXPECT_NE(buffer.find("tileattn.mask_strategy"), std::string::npos);
  EXPECT_EQ(tileattn_mask_strategy_read("/nonexistent.json", buffer.data(), needed, &needed), TILEATTN_ERROR_FILE);
  EXPECT_NE(std::string(tileattn_last_error()).find("/nonexistent.json"), std::string::npos);
  std::remove(path.c_str());
}

TEST(CApi, Version) {
  EXPECT_EQ(tileattn_abi_version(), TILEATTN_ABI_VERSION);
  EXPECT_STREQ(tileattn_version(), "0.1.0");
}
