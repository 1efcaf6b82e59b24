// Work split for CPU decode attention: equal token counts per thread.
//
// The (sequence, KV head) items, in order, each cost their context length plus a fixed
// overhead; laid end to end, they are cut into one equal span per thread. A span's pieces are
// its share of the items it overlaps, so an item cut by a span boundary (a long context) is
// attended in parts on several threads and merged afterwards by log-sum-exp.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

namespace corral_cpu {

// One (sequence, KV head) over context tokens [begin, end). `slot` < 0: the piece covers the
// whole context and writes the output; otherwise it leaves partial results in that slot.
struct Piece {
  int32_t seq, kv_head, begin, end;
  int64_t slot;
};

struct Plan {
  std::vector<Piece> pieces;         // chunk by chunk, items in order
  std::vector<int64_t> chunk_start;  // [num_chunks + 1] into pieces
  std::vector<int64_t> max_tokens;   // [num_chunks] the longest piece
  std::vector<std::array<int64_t, 4>> cut;  // cut items: seq, kv_head, first slot, slots
  int64_t num_slots = 0;

  int64_t num_chunks() const { return static_cast<int64_t>(max_tokens.size()); }
};

constexpr int64_t kPieceOverhead = 16;  // per-piece fixed cost, in tokens
constexpr int64_t kMinChunkCost = 1024;  // less work than this per thread: fewer threads

// Pieces for `num_threads` threads; contexts of length <= 0 get none.
inline Plan make_plan(const int32_t* seq_lens, int64_t num_seqs, int64_t num_kv_heads,
                      int64_t num_threads) {
  const int64_t num_items = num_seqs * num_kv_heads;
  auto length = [&](int64_t item) -> int64_t {
    return std::max<int64_t>(seq_lens[item / num_kv_heads], 0);
  };
  auto cost = [&](int64_t item) -> int64_t {
    const int64_t len = length(item);
    return len > 0 ? len + kPieceOverhead : 0;
  };
  int64_t total = 0;
  for (int64_t item = 0; item < num_items; ++item) total += cost(item);
  const int64_t num_chunks =
      std::max<int64_t>(1, std::min<int64_t>(num_threads, total / kMinChunkCost));

  Plan plan;
  plan.chunk_start.push_back(0);
  int64_t item = 0, item_start = 0;
  for (int64_t c = 0; c < num_chunks; ++c) {
    const int64_t lo = total * c / num_chunks, hi = total * (c + 1) / num_chunks;
    int64_t longest = 0;
    while (item < num_items) {
      const int64_t item_end = item_start + cost(item);
      const int64_t len = length(item);
      const int64_t a = std::min(std::max(lo, item_start) - item_start, len);
      const int64_t b = std::min(std::min(hi, item_end) - item_start, len);
      if (b > a) {
        plan.pieces.push_back(Piece{static_cast<int32_t>(item / num_kv_heads),
                                    static_cast<int32_t>(item % num_kv_heads),
                                    static_cast<int32_t>(a), static_cast<int32_t>(b), -1});
        longest = std::max(longest, b - a);
      }
      if (item_end > hi) break;  // the rest of this item belongs to the next chunk
      item_start = item_end;
      ++item;
    }
    plan.chunk_start.push_back(static_cast<int64_t>(plan.pieces.size()));
    plan.max_tokens.push_back(longest);
  }

  // The pieces of one item are adjacent; an item with several gets consecutive slots.
  for (size_t i = 0; i < plan.pieces.size();) {
    size_t j = i + 1;
    while (j < plan.pieces.size() && plan.pieces[j].seq == plan.pieces[i].seq &&
           plan.pieces[j].kv_head == plan.pieces[i].kv_head) {
      ++j;
    }
    if (j - i > 1) {
      plan.cut.push_back({plan.pieces[i].seq, plan.pieces[i].kv_head, plan.num_slots,
                          static_cast<int64_t>(j - i)});
      for (size_t k = i; k < j; ++k) plan.pieces[k].slot = plan.num_slots++;
    }
    i = j;
  }
  return plan;
}

}  // namespace corral_cpu
