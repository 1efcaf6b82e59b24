// Apply packed allowed-token bitmasks to logits on CPU, in place.
//
// Registered as torch.ops.corral_cpu.apply_token_bitmask (built and loaded by
// corral/kernels/cpu_extension.py). Layouts: logits [batch, vocab] with a unit stride on
// vocab, float32, bfloat16 or float16; bitmask int32 [num_rows, num_words], contiguous, bit j
// of word i set = token 32*i + j allowed; rows int64 [num_rows] (empty: bitmask row r applies
// to logits row r), the logits row each bitmask row applies to. Disallowed tokens, and those
// past the mask's width, get -inf.
//
// Only the -inf bit pattern is written, so one loop serves every dtype. A grammar's mask is
// mostly all-zero words (a run of 32 -inf stores, vectorized) and all-one words (nothing to
// do); the few mixed words walk their zero bits. Rows are spread over torch's intra-op
// threads (stable C shim, as in paged_decode_attention_cpu.cpp).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/csrc/stable/c/shim.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <string>

namespace corral_cpu {
namespace {

struct MaskProblem {
  char* logits;
  int64_t logits_stride_bytes;  // bytes between logits rows
  int64_t batch;
  int64_t vocab;
  const int32_t* bitmask;
  int64_t num_words;
  const int64_t* rows;  // nullptr: identity
};

template <typename Bits>
void mask_row(Bits* dst, const int32_t* words, int64_t num_words, int64_t vocab,
              Bits neg_inf) {
  const int64_t full_words = std::min(num_words, vocab / 32);
  for (int64_t w = 0; w < full_words; ++w) {
    const uint32_t bits = static_cast<uint32_t>(words[w]);
    Bits* out = dst + w * 32;
    if (bits == 0xffffffffu) continue;
    if (bits == 0) {
#pragma omp simd
      for (int j = 0; j < 32; ++j) out[j] = neg_inf;
      continue;
    }
    for (uint32_t blocked = ~bits; blocked != 0; blocked &= blocked - 1) {
      out[__builtin_ctz(blocked)] = neg_inf;
    }
  }
  // A last, partial word (vocab not a multiple of 32), then tokens past the mask's width.
  int64_t token = full_words * 32;
  if (full_words < num_words && token < vocab) {
    const uint32_t bits = static_cast<uint32_t>(words[full_words]);
    for (; token < std::min(vocab, (full_words + 1) * 32); ++token) {
      if (!((bits >> (token - full_words * 32)) & 1u)) dst[token] = neg_inf;
    }
  }
  for (; token < vocab; ++token) dst[token] = neg_inf;
}

template <typename Bits>
void run_rows(const MaskProblem& p, int64_t begin, int64_t end, Bits neg_inf) {
  for (int64_t r = begin; r < end; ++r) {
    const int64_t row = p.rows != nullptr ? p.rows[r] : r;
    Bits* dst = reinterpret_cast<Bits*>(p.logits + row * p.logits_stride_bytes);
    mask_row<Bits>(dst, p.bitmask + r * p.num_words, p.num_words, p.vocab, neg_inf);
  }
}

template <typename Bits>
void run(const MaskProblem& p, int64_t num_rows, Bits neg_inf) {
  struct Context {
    const MaskProblem* p;
    Bits neg_inf;
  } ctx{&p, neg_inf};
  auto range = [](int64_t begin, int64_t end, void* raw) {
    const Context& c = *static_cast<const Context*>(raw);
    run_rows<Bits>(*c.p, begin, end, c.neg_inf);
  };
  // A row is ~50-400 KB of stores: worth a thread from a few rows on.
  if (num_rows < 4 || at::get_num_threads() <= 1) {
    range(0, num_rows, &ctx);
    return;
  }
  const AOTITorchError err = torch_parallel_for(0, num_rows, 2, range, &ctx);
  TORCH_CHECK(err == AOTI_TORCH_SUCCESS, "apply_token_bitmask: parallel_for failed");
}

// Input errors come back as a message (empty when the inputs are fine) that the Python
// wrapper raises, as in paged_decode_attention_cpu.cpp.
std::string apply_token_bitmask(const at::Tensor& logits, const at::Tensor& bitmask,
                                const at::Tensor& rows) {
  const std::string where = "apply_token_bitmask: ";
  if (logits.dim() != 2 || bitmask.dim() != 2 || rows.dim() != 1) {
    return where + "logits and bitmask must be 2-D and rows 1-D";
  }
  if (!logits.device().is_cpu() || !bitmask.device().is_cpu() || !rows.device().is_cpu()) {
    return where + "all tensors must be on the CPU";
  }
  if (logits.size(1) > 1 && logits.stride(1) != 1) {
    return where + "logits need a unit stride on the vocabulary";
  }
  if (bitmask.scalar_type() != at::kInt || !bitmask.is_contiguous()) {
    return where + "bitmask must be a contiguous int32 tensor";
  }
  const bool has_rows = rows.numel() > 0;
  if (has_rows && (rows.scalar_type() != at::kLong || !rows.is_contiguous() ||
                   rows.size(0) != bitmask.size(0))) {
    return where + "rows must be a contiguous int64 tensor with one entry per bitmask row";
  }
  const int64_t num_rows = bitmask.size(0);
  const int64_t batch = logits.size(0);
  if (!has_rows && num_rows > batch) return where + "more bitmask rows than logits rows";
  const int64_t* row_ids = has_rows ? rows.data_ptr<int64_t>() : nullptr;
  for (int64_t r = 0; has_rows && r < num_rows; ++r) {
    if (row_ids[r] < 0 || row_ids[r] >= batch) {
      return where + "rows[" + std::to_string(r) + "] = " + std::to_string(row_ids[r]) +
             " is out of range for " + std::to_string(batch) + " logits rows";
    }
  }
  if (num_rows == 0 || logits.size(1) == 0) return {};
  const MaskProblem p{static_cast<char*>(logits.data_ptr()),
                      logits.stride(0) * static_cast<int64_t>(logits.element_size()),
                      batch,
                      logits.size(1),
                      bitmask.data_ptr<int32_t>(),
                      bitmask.size(1),
                      row_ids};
  switch (logits.scalar_type()) {
    case at::kFloat:
      run<uint32_t>(p, num_rows, 0xff800000u);
      return {};
    case at::kBFloat16:
      run<uint16_t>(p, num_rows, static_cast<uint16_t>(0xff80u));
      return {};
    case at::kHalf:
      run<uint16_t>(p, num_rows, static_cast<uint16_t>(0xfc00u));
      return {};
    default:
      return where + "logits must be float32, bfloat16 or float16";
  }
}

}  // namespace
}  // namespace corral_cpu

TORCH_LIBRARY_FRAGMENT(corral_cpu, m) {
  m.def("apply_token_bitmask(Tensor(a!) logits, Tensor bitmask, Tensor rows) -> str");
}

TORCH_LIBRARY_IMPL(corral_cpu, CPU, m) {
  m.impl("apply_token_bitmask", &corral_cpu::apply_token_bitmask);
}
