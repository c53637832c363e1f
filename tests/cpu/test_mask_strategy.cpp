#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "tileattn/error.hpp"
#include "tileattn/mask_strategy.hpp"

using namespace tileattn;

namespace {
std::string expect_file_error(const std::string& json) {
  try {
    parse_mask_strategy(json, "strategy.json");
  } catch (const FileError& e) {
    EXPECT_NE(std::string(e.what()).find("strategy.json"), std::string::npos) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "accepted: " << json;
  return "";
}
}  // namespace

TEST(MaskStrategy, ReadsFastVideoFormat) {
  MaskStrategy s = parse_mask_strategy(R"({"0_0_0": [3, 3, 3], "12_3_7": [5, 6, 10]})", "fv.json");
  ASSERT_EQ(s.windows.size(), 2u);
  EXPECT_EQ(*s.window_for(12, 3, 7), (Window{5, 6, 10}));
  EXPECT_FALSE(s.window_for(1, 0, 0).has_value());
}

TEST(MaskStrategy, RoundTripsBothFormats) {
  MaskStrategy s;
  s.windows[{0, 1, 2}] = {3, 3, 3};
  s.windows[{4, 0, 23}] = {5, 3, 5};
  std::string fv = dump_mask_strategy(s, MaskStrategyFormat::fastvideo);
  EXPECT_EQ(parse_mask_strategy(fv, "a").windows, s.windows);

  s.geometry.emplace(Extent3{30, 48, 80}, Extent3{6, 8, 8}, 256);
  s.default_window = Window{3, 3, 3};
  s.dense_steps = 2;
  const auto path = (std::filesystem::temp_directory_path() / "tileattn_strategy_test.json").string();
  write_mask_strategy(s, path, MaskStrategyFormat::tileattn);
  MaskStrategy back = read_mask_strategy(path);
  std::remove(path.c_str());
  EXPECT_EQ(back.windows, s.windows);
  EXPECT_EQ(back.default_window, s.default_window);
  EXPECT_EQ(back.dense_steps, 2);
  ASSERT_TRUE(back.geometry.has_value());
  EXPECT_EQ(back.geometry->video(), (Extent3{30, 48, 80}));
  EXPECT_EQ(back.geometry->text_len(), 256);
  EXPECT_FALSE(back.window_for(1, 0, 2).has_value());        // dense step
  EXPECT_EQ(*back.window_for(5, 9, 9), (Window{3, 3, 3}));   // default
  EXPECT_THROW(write_mask_strategy(s, path, MaskStrategyFormat::fastvideo), ArgumentError);
}

TEST(MaskStrategy, PerLayerPrecision) {
  // Absent: every layer native (and FastVideo's format has no precision at all).
  EXPECT_EQ(parse_mask_strategy(R"({"0_0_0": [3, 3, 3]})", "fv.json").precision_for(5), Precision::native);
  const MaskStrategy s = parse_mask_strategy(R"({"format": "tileattn.mask_strategy", "version": 1,
      "default": [3, 3, 3], "layer_precision": {"2": "fp8", "7": "native"}})", "p.json");
  EXPECT_EQ(s.precision_for(2), Precision::fp8);
  EXPECT_EQ(s.precision_for(7), Precision::native);
  EXPECT_EQ(s.precision_for(0), Precision::native);
  const MaskStrategy g = parse_mask_strategy(R"({"format": "tileattn.mask_strategy", "version": 1,
      "precision": "fp8", "layer_precision": {"0": "native"}})", "g.json");
  EXPECT_EQ(g.precision_for(0), Precision::native);
  EXPECT_EQ(g.precision_for(1), Precision::fp8);
  // The normalised dump keeps it; a strategy without it dumps as before (no precision keys).
  const MaskStrategy back = parse_mask_strategy(dump_mask_strategy(g, MaskStrategyFormat::tileattn), "again");
  EXPECT_EQ(back.precision, Precision::fp8);
  EXPECT_EQ(back.layer_precision, g.layer_precision);
  EXPECT_EQ(dump_mask_strategy(MaskStrategy{}, MaskStrategyFormat::tileattn).find("precision"), std::string::npos);
  const auto path = (std::filesystem::temp_directory_path() / "tileattn_strategy_fp8.json").string();
  EXPECT_THROW(write_mask_strategy(s, path, MaskStrategyFormat::fastvideo), ArgumentError);
  EXPECT_NE(expect_file_error(R"({"format": "tileattn.mask_strategy", "version": 1, "precision": "fp16"})")
                .find("key 'precision'"), std::string::npos);
  EXPECT_NE(expect_file_error(R"({"format": "tileattn.mask_strategy", "version": 1,
      "layer_precision": {"3": 8}})").find("key 'layer_precision.3'"), std::string::npos);
  EXPECT_NE(expect_file_error(R"({"format": "tileattn.mask_strategy", "version": 1,
      "layer_precision": {"x": "fp8"}})").find("layer index"), std::string::npos);
  EXPECT_NE(expect_file_error(R"({"format": "tileattn.mask_strategy", "version": 1, "layer_precision": ["fp8"]})")
                .find("key 'layer_precision'"), std::string::npos);
}

TEST(MaskStrategy, MalformedFilesNameTheKeyAndProblem) {
  EXPECT_NE(expect_file_error("{not json").find("not valid JSON"), std::string::npos);
  EXPECT_NE(expect_file_error("[1,2]").find("object"), std::string::npos);
  EXPECT_NE(expect_file_error(R"({"0_0": [3,3,3]})").find("key '0_0'"), std::string::npos);
  EXPECT_NE(expect_file_error(R"({"0_0_x": [3,3,3]})").find("key '0_0_x'"), std::string::npos);
  EXPECT_NE(expect_file_error(R"({"0_0_0": [3,3]})").find("key '0_0_0'"), std::string::npos);
  EXPECT_NE(expect_file_error(R"({"0_0_0": [3,0,3]})").find("positive"), std::string::npos);
  EXPECT_NE(expect_file_error(R"({"0_0_0": "3x3x3"})").find("key '0_0_0'"), std::string::npos);
  EXPECT_NE(expect_file_error(R"({"format": "other"})").find("key 'format'"), std::string::npos);
  EXPECT_NE(expect_file_error(R"({"format": "tileattn.mask_strategy", "version": 2})").find("version"),
            std::string::npos);
  EXPECT_NE(expect_file_error(R"({"format": "tileattn.mask_strategy", "version": 1, "bogus": 1})").find("key 'bogus'"),
            std::string::npos);
  // A window larger than the grid of the file's own geometry (grid 5x6x10).
  EXPECT_NE(expect_file_error(R"({"format": "tileattn.mask_strategy", "version": 1, "video_shape": [30,48,80],
      "tile": [6,8,8], "windows": {"0_0_1": [7,3,3]}})").find("0_0_1"), std::string::npos);
  EXPECT_NE(expect_file_error(R"({"format": "tileattn.mask_strategy", "version": 1, "video_shape": [30,48,80]})")
                .find("tile"), std::string::npos);
  try {
    read_mask_strategy("/nonexistent/dir/strategy.json");
    FAIL();
  } catch (const FileError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/dir/strategy.json"), std::string::npos);
  }
}
