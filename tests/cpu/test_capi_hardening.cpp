// The C ABI's bad-input matrix (issue 14): zero, negative, huge and wrapping sizes in every workspace query and
// forward struct, hostile files through the readers. Each case must return an error status (never OK with a wrong
// size, never a crash) whose message names the argument, and no message may dump unbounded input.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "capi_fixtures.hpp"
#include "tileattn/checked.hpp"
#include "tileattn/geometry.hpp"
#include "tileattn/tileattn.h"

namespace {

constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();
const int64_t kBad[] = {0, -1, -3, std::numeric_limits<int64_t>::min(), kI64Max, int64_t{1} << 62,
                        (int64_t{1} << 62) + 1, int64_t{1} << 32, (int64_t{1} << 31) + 1};

bool names(const char* argument) { return std::string(tileattn_last_error()).find(argument) != std::string::npos; }

tileattn_sta_forward_args sta_args() {
  tileattn_sta_forward_args a = capi_fixtures::valid_args();
  a.q.batch_stride = a.k.batch_stride = a.v.batch_stride = a.out.batch_stride = 384 * 128 * 2;  // batch > 1 is valid
  return a;
}

tileattn_fg_forward_args fg_args(int64_t query_block) {
  tileattn_fg_forward_args a = capi_fixtures::valid_fg_args();  // 2 query heads, 1 kv head
  a.q.head_stride = a.k.head_stride = a.v.head_stride = a.out.head_stride = 2048 * 128;
  a.plan.tokens = 2048, a.plan.query_block = query_block, a.plan.key_group = 32, a.plan.capacity = 1;
  return a;
}

tileattn_dynamic_mask_args dyn_args() {
  tileattn_dynamic_mask_args a = capi_fixtures::valid_dyn_args();
  a.workspace = nullptr, a.workspace_bytes = 0;  // the size queries read neither
  return a;
}

// The workspace query: an error naming something, or OK with a size that is positive and plausible.
void expect_error_or_sane(int status, int64_t bytes, const char* what) {
  if (status == TILEATTN_OK) {
    EXPECT_GT(bytes, 0) << what;
  } else {
    EXPECT_EQ(status, TILEATTN_ERROR_ARGUMENT) << what << ": " << tileattn_last_error();
    EXPECT_NE(std::string(tileattn_last_error()).find("invalid argument '"), std::string::npos) << what;
  }
}

}  // namespace

TEST(CApiHardening, StaBackwardWorkspaceNeverWrapsOrReturnsZero) {
  int cases = 0;
  for (int64_t v : kBad) {
    for (int field = 0; field < 6; ++field) {
      tileattn_sta_forward_args a = sta_args();
      int64_t* target[] = {&a.batch, &a.q_heads, &a.kv_heads, &a.video[0], &a.video[2], &a.text_len};
      *target[field] = v;
      if (field == 1) a.kv_heads = 1;
      int64_t bytes = -7;
      const int status = tileattn_sta_backward_workspace_bytes(&a, &bytes);
      expect_error_or_sane(status, bytes, "sta_backward_workspace_bytes");
      ++cases;
    }
  }
  // The case of the issue: a batch so large that batch * heads * blocks * 64 * 128 * 4 wraps to 0.
  tileattn_sta_forward_args a = sta_args();
  a.batch = int64_t{1} << 49;
  int64_t bytes = -7;
  EXPECT_EQ(tileattn_sta_backward_workspace_bytes(&a, &bytes), TILEATTN_ERROR_ARGUMENT);
  EXPECT_TRUE(names("batch")) << tileattn_last_error();
  EXPECT_GT(cases, 50);
}

TEST(CApiHardening, StaForwardChecksNumWindowsBeforeReadingTheArray) {
  int64_t one[3] = {1, 1, 1};
  for (int64_t n : {int64_t{-1}, int64_t{3}, int64_t{1} << 40, kI64Max, std::numeric_limits<int64_t>::min()}) {
    tileattn_sta_forward_args a = sta_args();
    a.windows = one, a.num_windows = n;  // an array of one triple: reading n of them would run past it
    EXPECT_EQ(tileattn_sta_forward(&a, nullptr), TILEATTN_ERROR_ARGUMENT) << n;
    EXPECT_TRUE(names("num_windows")) << tileattn_last_error();
    int64_t bytes = -7;
    EXPECT_EQ(tileattn_sta_backward_workspace_bytes(&a, &bytes), TILEATTN_ERROR_ARGUMENT) << n;
  }
}

TEST(CApiHardening, FgWorkspaceIsTheMergedPlanSize) {
  // 2048 tokens, 2 heads, M = 16, N = 32, capacity 1: 16 merged rows of min(64 groups, 8 sub-blocks x 1) entries.
  tileattn_fg_forward_args a = fg_args(16);
  int64_t bytes = -1;
  ASSERT_EQ(tileattn_fg_forward_workspace_bytes(&a, &bytes), TILEATTN_OK) << tileattn_last_error();
  const int64_t rows = 2 * 16, capacity = 8;
  auto align = [](int64_t x) { return (x + 255) / 256 * 256; };
  EXPECT_EQ(bytes, align(rows * capacity * 4) + align(rows * capacity) + align(rows * 4));
  a = fg_args(128);
  ASSERT_EQ(tileattn_fg_forward_workspace_bytes(&a, &bytes), TILEATTN_OK);
  EXPECT_EQ(bytes, 0);  // M = 128 reads the plan directly
  // A size for a call the forward refuses is refused too.
  a = fg_args(16);
  a.q_heads = 4;  // the plan has 2 heads
  EXPECT_EQ(tileattn_fg_forward_workspace_bytes(&a, &bytes), TILEATTN_ERROR_ARGUMENT);
  EXPECT_TRUE(names("plan")) << tileattn_last_error();
  a = fg_args(16);
  a.head_dim = 96;
  EXPECT_EQ(tileattn_fg_forward_workspace_bytes(&a, &bytes), TILEATTN_ERROR_ARGUMENT);
  EXPECT_TRUE(names("head_dim"));
}

TEST(CApiHardening, FgWorkspaceNeverWraps) {
  for (int64_t v : kBad) {
    for (int field = 0; field < 5; ++field) {
      tileattn_fg_forward_args a = fg_args(16);
      int64_t* target[] = {&a.plan.tokens, &a.plan.heads, &a.plan.key_group, &a.plan.capacity, &a.batch};
      *target[field] = v;
      if (field == 1) a.q_heads = v;
      int64_t bytes = -7;
      const int status = tileattn_fg_forward_workspace_bytes(&a, &bytes);
      if (status == TILEATTN_OK) {
        EXPECT_GE(bytes, 0);
        EXPECT_LT(bytes, int64_t{1} << 62) << "field " << field << " = " << v;
      } else {
        EXPECT_EQ(status, TILEATTN_ERROR_ARGUMENT) << tileattn_last_error();
      }
    }
  }
  tileattn_fg_forward_args a = fg_args(16);
  a.plan.capacity = int64_t{1} << 61;  // capacity * 8 wraps to 0: the merged capacity is every key group instead
  int64_t bytes = -7;
  ASSERT_EQ(tileattn_fg_forward_workspace_bytes(&a, &bytes), TILEATTN_OK);
  EXPECT_GE(bytes, 32 * 64 * 5);
}

TEST(CApiHardening, DynamicMaskWorkspaceNeverDividesByZeroOrWraps) {
  tileattn_column_plan out = fg_args(128).plan;
  out.tokens = 256, out.key_group = 16;
  for (int64_t v : kBad) {
    for (int field = 0; field < 6; ++field) {
      tileattn_dynamic_mask_args a = dyn_args();
      tileattn_column_plan shape = out;
      int64_t heads_per_pass = 0;
      int64_t* target[] = {&a.batch, &a.kv_heads, &a.q_heads, &shape.tokens, &shape.key_group, &heads_per_pass};
      *target[field] = v;
      if (field == 2) shape.heads = v;
      int64_t bytes = -7;
      const int status = tileattn_dynamic_mask_workspace_bytes(&a, &shape, heads_per_pass, &bytes);
      expect_error_or_sane(status, bytes, "dynamic_mask_workspace_bytes");
    }
  }
  // batch * kv_heads wrapping to 0 (the SIGFPE of the issue).
  tileattn_dynamic_mask_args a = dyn_args();
  a.batch = int64_t{1} << 62, a.kv_heads = 4, a.q_heads = 4;
  tileattn_column_plan shape = out;
  shape.heads = 4;
  int64_t bytes = -7;
  EXPECT_EQ(tileattn_dynamic_mask_workspace_bytes(&a, &shape, 0, &bytes), TILEATTN_ERROR_ARGUMENT);
  EXPECT_TRUE(names("batch")) << tileattn_last_error();
}

namespace {
std::string temp_file(const std::string& name, const std::string& content) {
  const std::string path = (std::filesystem::temp_directory_path() / ("tileattn_capi_" + name)).string();
  std::ofstream(path, std::ios::binary) << content;
  return path;
}
std::string read_status(int (*fn)(const char*, char*, int64_t, int64_t*), const std::string& path, int expect) {
  std::vector<char> buffer(1 << 16);
  int64_t needed = 0;
  EXPECT_EQ(fn(path.c_str(), buffer.data(), int64_t(buffer.size()), &needed), expect) << path;
  const std::string message = tileattn_last_error();
  EXPECT_LT(message.size(), 1000u) << "an unbounded message: " << message.substr(0, 200);
  return message;
}
std::string safetensors(const std::string& header, size_t data_bytes) {
  std::string s(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) s[i] = char((n >> (8 * i)) & 0xff);
  return s + header + std::string(data_bytes, '\0');
}
}  // namespace

TEST(CApiHardening, StrategyReaderRefusesHostileFiles) {
  const std::string deep = std::string(200000, '[') + "1" + std::string(200000, ']');
  const std::string cases[] = {deep, "{\"0_0_0\": " + deep + "}", "{\"0_0_0\": [1e400, 3, 3]}",
                               "{\"0_0_0\": [3, 3, 3.5]}", "{\"" + std::string(1 << 20, 'k') + "\": [3, 3, 3]}",
                               "{\"format\": \"" + std::string(1 << 20, 'x') + "\"}", "", "[", "{\"0_0_0\": [NaN]}"};
  for (const std::string& text : cases) {
    const std::string path = temp_file("strategy.json", text);
    const std::string message = read_status(tileattn_mask_strategy_read, path, TILEATTN_ERROR_FILE);
    EXPECT_NE(message.find(path), std::string::npos) << message;
    std::remove(path.c_str());
  }
  read_status(tileattn_mask_strategy_read, "/dev/zero", TILEATTN_ERROR_FILE);
  EXPECT_TRUE(names("limits::kMaxStrategyBytes")) << tileattn_last_error();
  read_status(tileattn_mask_strategy_read, "/nonexistent/strategy.json", TILEATTN_ERROR_FILE);
}

TEST(CApiHardening, CaptureReaderRefusesWrappingShapesBeforeAllocating) {
  const std::string meta =
      R"("__metadata__": {"video_shape": "1x1x1", "text_len": "0", "step": "0", "layer": "0", "prompt": "p"})";
  auto tensors = [](const std::string& shape, int64_t span) {
    std::string s;
    for (int i = 0; i < 3; ++i)
      s += ", \"" + std::string(1, "qkv"[i]) + "\": {\"dtype\": \"F32\", \"shape\": " + shape +
           ", \"data_offsets\": [" + std::to_string(i * span) + ", " + std::to_string((i + 1) * span) + "]}";
    return s;
  };
  const std::pair<std::string, int64_t> shapes[] = {
      {"[4611686018427387905, 1, 1, 1]", 4},  // (2^62 + 1) * 4 bytes wraps to 4
      {"[4611686018427387904, 4, 1, 1]", 0},  // wraps to 0
      {"[9223372036854775808, 1, 1, 1]", 4},  // past int64
      {"[18446744073709551615, 1, 1, 1]", 4},
      {"[1e400, 1, 1, 1]", 4},
      {"[1.5, 1, 1, 1]", 4},
      {"[-1, 1, 1, 1]", 4},
      {"[1, 1, 1]", 4},
  };
  for (const auto& [shape, span] : shapes) {
    const std::string path = temp_file("capture.safetensors", safetensors("{" + meta + tensors(shape, span) + "}",
                                                                          size_t(3 * span)));
    const std::string message = read_status(tileattn_capture_inspect, path, TILEATTN_ERROR_FILE);
    EXPECT_NE(message.find(path), std::string::npos) << message;
    std::remove(path.c_str());
  }
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  const std::string path = temp_file("capture.safetensors", safetensors(deep, 0));
  read_status(tileattn_capture_inspect, path, TILEATTN_ERROR_FILE);
  EXPECT_TRUE(names("limits::kMaxJsonDepth")) << tileattn_last_error();
  std::remove(path.c_str());
}

TEST(CheckedArithmetic, ThrowsNamingTheArgument) {
  using namespace tileattn;
  EXPECT_EQ(checked_mul(int64_t{1} << 31, int64_t{1} << 31, "x"), int64_t{1} << 62);
  EXPECT_THROW(checked_mul(int64_t{1} << 32, int64_t{1} << 31, "x"), ArgumentError);
  EXPECT_THROW(checked_add(kI64Max, 1, "x"), ArgumentError);
  EXPECT_THROW(checked_sub(std::numeric_limits<int64_t>::min(), 1, "x"), ArgumentError);
  EXPECT_EQ(checked_ceil_div(kI64Max, 2, "x"), int64_t{1} << 62);
  EXPECT_THROW(checked_ceil_div(1, 0, "x"), ArgumentError);
  EXPECT_EQ(checked_align_up(257, 256, "x"), 512);
  EXPECT_THROW(checked_align_up(kI64Max - 10, 256, "x"), ArgumentError);
  try {
    checked_product({int64_t{1} << 40, int64_t{1} << 40}, "batch");
    FAIL() << "no throw";
  } catch (const ArgumentError& e) {
    EXPECT_EQ(e.argument(), "batch");
  }
  EXPECT_THROW(checked_host_bytes({int64_t{1} << 30, int64_t{1} << 20}, "x"), ArgumentError);  // > 1 TiB
  EXPECT_THROW(Extent3({int64_t{1} << 32, int64_t{1} << 32, 1}).volume(), ArgumentError);
  EXPECT_EQ(quote_truncated(std::string(1000, 'a')).size(), 80u + std::string("... (1000 characters)").size());
  // Cut before a UTF-8 sequence, never inside one (the message stays valid UTF-8).
  EXPECT_EQ(quote_truncated(std::string(79, 'a') + "\xc3\xa9" + std::string(10, 'b')),
            std::string(79, 'a') + "... (91 characters)");
}
