#pragma once
// CPU reference attention: the oracle every GPU kernel is tested against. Written for clarity, not speed;
// multi-threaded over (batch, head, query block).
//
// Tensors are contiguous float arrays in SDPA's layout [batch, heads, tokens, head_dim], natural token order.
// Outputs: out [batch, q_heads, tokens, head_dim] and lse [batch, q_heads, tokens] (natural log of the softmax
// denominator of the scaled scores). A query that may see no key gets out = 0 and lse = -inf.
#include <cstdint>
#include <functional>
#include <span>

#include "tileattn/column_plan.hpp"
#include "tileattn/plan.hpp"
#include "tileattn/export.hpp"

TILEATTN_PUBLIC_BEGIN
namespace tileattn {

enum class Accumulation { fp32, fp64 };

struct AttentionShape {
  int64_t batch = 1;
  int64_t q_heads = 1;
  int64_t kv_heads = 1;  // q_heads must be a multiple (GQA); query head h reads kv head h / (q_heads / kv_heads)
  int64_t tokens = 0;
  int64_t head_dim = 0;
};

struct ReferenceOptions {
  float scale = 0.0f;  // 0: 1 / sqrt(head_dim)
  Accumulation accumulation = Accumulation::fp32;
  int threads = 0;  // 0: hardware concurrency
};

// Throws ArgumentError on inconsistent shapes or span sizes.
void reference_attention_dense(const AttentionShape& shape, std::span<const float> q, std::span<const float> k,
                               std::span<const float> v, std::span<float> out, std::span<float> lse,
                               const ReferenceOptions& options = {});

// Attention restricted by a plan: query token i of head h sees the tokens of the key blocks listed for its block.
// text_valid (optional, one count per batch element, clamped to [0, text_len]) removes text keys at positions
// >= text_valid[b]. shape.tokens must equal the plan geometry's token count and shape.q_heads the plan's heads.
void reference_attention_plan(const AttentionShape& shape, const BlockPlan& plan, std::span<const int32_t> text_valid,
                              std::span<const float> q, std::span<const float> k, std::span<const float> v,
                              std::span<float> out, std::span<float> lse, const ReferenceOptions& options = {});

// Gradients of reference_attention_plan for the upstream gradient grad_out (= dL/d out): grad_q has q's shape,
// grad_k / grad_v k's and v's (summed over the query heads of each GQA group). Keys no query sees get zero gradient.
void reference_attention_plan_backward(const AttentionShape& shape, const BlockPlan& plan,
                                       std::span<const int32_t> text_valid, std::span<const float> q,
                                       std::span<const float> k, std::span<const float> v,
                                       std::span<const float> grad_out, std::span<float> grad_q,
                                       std::span<float> grad_k, std::span<float> grad_v,
                                       const ReferenceOptions& options = {});

// Attention restricted by an element predicate allowed(batch, head, query, key); O(tokens^2) calls.
using ElementMask = std::function<bool(int64_t batch, int64_t head, int64_t query, int64_t key)>;
void reference_attention_masked(const AttentionShape& shape, const ElementMask& allowed, std::span<const float> q,
                                std::span<const float> k, std::span<const float> v, std::span<float> out,
                                std::span<float> lse, const ReferenceOptions& options = {});

// Attention restricted by a fine-grained plan: query position i of head h sees the key positions of the key groups
// listed for its query block. Positions are the tensors' rows as laid out (the plan's token order), so this works for
// natural and tile-major tensors alike. shape.tokens must equal plan.tokens() and shape.q_heads plan.heads().
void reference_attention_columns(const AttentionShape& shape, const ColumnPlan& plan, std::span<const float> q,
                                 std::span<const float> k, std::span<const float> v, std::span<float> out,
                                 std::span<float> lse, const ReferenceOptions& options = {});

}  // namespace tileattn
TILEATTN_PUBLIC_END
