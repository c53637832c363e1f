#pragma once
// Validation of attention inputs shared by the CPU reference and the CPU mask builders.
#include <cstddef>

#include "tileattn/reference.hpp"

namespace tileattn::detail {

// Checks the shape's fields and the sizes of q [batch, q_heads, tokens, head_dim] and k [batch, kv_heads, tokens,
// head_dim]; throws ArgumentError naming the field or tensor.
void check_attention_inputs(const AttentionShape& shape, size_t q, size_t k);

}  // namespace tileattn::detail
