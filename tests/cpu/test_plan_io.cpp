#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tileattn/error.hpp"
#include "tileattn/plan_io.hpp"

using namespace tileattn;
using nlohmann::json;

TEST(PlanIo, JsonHasTheDocumentedShape) {
  const VideoGeometry g({7, 9, 17}, {6, 8, 8}, 3);  // grid 2x2x3, partial tiles
  const BlockPlan plan = build_sta_plan(BlockPartition(g), std::vector<Window>{{1, 1, 3}});
  const json doc = json::parse(tile_plan_json(plan, false));
  EXPECT_EQ(doc["grid"], json::array({2, 2, 3}));
  EXPECT_NEAR(doc["sparsity"].get<double>(), plan.sparsity().total, 1e-15);
  ASSERT_EQ(doc["query_tiles"].size(), 12u);
  const json& first = doc["query_tiles"][0];
  EXPECT_EQ(first["tile"], json::array({0, 0, 0}));
  EXPECT_EQ(first["keys"], json::parse("[[0,0,0],[0,0,1],[0,0,2]]"));
  EXPECT_EQ(doc["query_tiles"][11]["tile"], json::array({1, 1, 2}));
}

TEST(PlanIo, PerHeadJsonNestsOneObjectPerHead) {
  const VideoGeometry g({12, 16, 24}, {6, 8, 8});
  const BlockPlan plan = build_sta_plan(BlockPartition(g), std::vector<Window>{{1, 1, 1}, {2, 2, 3}});
  const json doc = json::parse(tile_plan_json(plan, true));
  ASSERT_EQ(doc["heads"].size(), 2u);
  EXPECT_EQ(doc["heads"][0]["query_tiles"][0]["keys"].size(), 1u);
  EXPECT_EQ(doc["heads"][1]["query_tiles"][0]["keys"].size(), 12u);
  EXPECT_DOUBLE_EQ(doc["heads"][1]["sparsity"].get<double>(), 0.0);
  EXPECT_NEAR(doc["sparsity"].get<double>(), plan.sparsity().total, 1e-15);
  EXPECT_THROW(tile_plan_json(plan, false), ArgumentError);
}

TEST(PlanIo, SvgDrawsOneRectanglePerRunOfVisitedTiles) {
  const VideoGeometry g({3, 1, 1}, {1, 1, 1}, 2);  // 3 tiles in a row + one text block
  const BlockPlan plan = build_sta_plan(BlockPartition(g), std::vector<Window>{{1, 1, 1}});
  const std::string svg = tile_plan_svg(plan, 0, "a <title> & more");
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  EXPECT_NE(svg.find("a &lt;title&gt; &amp; more"), std::string::npos);
  // rows: 3 video rows x (own tile + text) = 6 runs, text row: video run + text run = 2 -> 8 filled rectangles
  size_t count = 0;
  for (size_t pos = 0; (pos = svg.find("fill=\"#", pos)) != std::string::npos; ++pos) ++count;
  EXPECT_EQ(count, 1u + 8u);  // + the background of the matrix
}

TEST(PlanIo, RequiresWholeTileBlocks) {
  const BlockPlan plan = build_dense_plan(BlockPartition(VideoGeometry({4, 2, 2}, {2, 2, 2}), 1), 1);
  EXPECT_THROW(tile_plan_json(plan, false), ArgumentError);
}
