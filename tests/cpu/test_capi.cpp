// The C ABI reports bad arguments as status codes with a message naming the argument (no GPU needed).
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "tileattn/tileattn.h"

namespace {
tileattn_sta_forward_args valid_args() {
  static char buffer[1 << 12] alignas(16);
  tileattn_sta_forward_args a{};
  a.abi_version = TILEATTN_ABI_VERSION;
  a.dtype = TILEATTN_BF16;
  a.layout = TILEATTN_NATURAL;
  a.batch = 1, a.q_heads = 2, a.kv_heads = 1, a.head_dim = 128;
  a.video[0] = 6, a.video[1] = 8, a.video[2] = 8;
  a.tile[0] = 6, a.tile[1] = 8, a.tile[2] = 8;
  tileattn_tensor t{buffer, 0, 384 * 128, 128};
  a.q = a.k = a.v = a.out = t;
  return a;
}
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
