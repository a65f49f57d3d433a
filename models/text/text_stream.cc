#include "models/text/text_stream.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace tandem {
namespace {

constexpr absl::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// Length of the UTF-8 sequence introduced by `lead`, or 0 if it cannot start one.
int SequenceLength(unsigned char lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

// True when `text` stops in the middle of a multi-byte character.
bool EndsWithIncompleteUtf8(absl::string_view text) {
  // Find the start of the last character: at most 3 continuation bytes back.
  size_t i = text.size();
  int continuation = 0;
  while (i > 0 && continuation < 4) {
    unsigned char c = static_cast<unsigned char>(text[i - 1]);
    if ((c & 0xC0) != 0x80) break;
    --i;
    ++continuation;
  }
  if (i == 0) return continuation > 0;
  int need = SequenceLength(static_cast<unsigned char>(text[i - 1]));
  return need > continuation + 1;
}

// A decode ending in U+FFFD usually means a byte-fallback character whose remaining bytes have
// not been generated yet (SentencePiece renders each dangling byte as U+FFFD).
bool MayBeIncomplete(absl::string_view text) {
  return EndsWithIncompleteUtf8(text) ||
         (text.size() >= kReplacementChar.size() &&
          text.substr(text.size() - kReplacementChar.size()) == kReplacementChar);
}

}  // namespace

// ---- IncrementalDetokenizer ------------------------------------------------------------------
//
// Tokenizer::Decode strips the leading space of the first piece it decodes (SentencePiece's "▁";
// llama2.c's space after BOS), so decoding a window ids[prefix..] on its own would lose the space
// that the same piece shows in the middle of the full text. Every window is therefore decoded
// together with an anchor: the last id before it that Decode would render (it skips special
// and out-of-range ids, which would otherwise leave the window's first piece first again). The
// anchor absorbs the stripping, and the texts compared below both start with the anchor's own
// text, which cancels out. With no renderable id before the window, the window's first piece is
// the first piece of the whole text and must lose its space: decoding without an anchor does
// exactly that.

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer* tokenizer,
                                               absl::Span<const int32_t> context)
    : tokenizer_(tokenizer) {
  // The context's last id becomes the first window's anchor; it is never emitted.
  if (!context.empty()) {
    ids_.push_back(context.back());
    prefix_offset_ = read_offset_ = 1;
  }
}

namespace {

// Index of the anchor for a window starting at `prefix`, or `prefix` when there is none.
size_t AnchorFor(const Tokenizer& tokenizer, const std::vector<int32_t>& ids, size_t prefix) {
  for (size_t i = prefix; i > 0; --i) {
    if (!tokenizer.IsSpecial(ids[i - 1])) return i - 1;
  }
  return prefix;
}

}  // namespace

std::string IncrementalDetokenizer::Push(int32_t id) {
  ids_.push_back(id);
  const size_t anchor = AnchorFor(*tokenizer_, ids_, prefix_offset_);
  absl::Span<const int32_t> all(ids_);
  const std::string prefix_text = tokenizer_->Decode(all.subspan(anchor, read_offset_ - anchor));
  const std::string new_text = tokenizer_->Decode(all.subspan(anchor));
  if (new_text.size() > prefix_text.size() && !MayBeIncomplete(new_text) &&
      absl::string_view(new_text).substr(0, prefix_text.size()) == prefix_text) {
    std::string delta = new_text.substr(prefix_text.size());
    prefix_offset_ = read_offset_;
    read_offset_ = ids_.size();
    return delta;
  }
  return std::string();
}

std::string IncrementalDetokenizer::Flush() {
  const size_t anchor = AnchorFor(*tokenizer_, ids_, prefix_offset_);
  absl::Span<const int32_t> all(ids_);
  const std::string prefix_text = tokenizer_->Decode(all.subspan(anchor, read_offset_ - anchor));
  const std::string new_text = tokenizer_->Decode(all.subspan(anchor));
  prefix_offset_ = read_offset_ = ids_.size();
  if (new_text.size() <= prefix_text.size()) return std::string();
  return new_text.substr(prefix_text.size());
}

// ---- StopStringFilter ------------------------------------------------------------------------

StopStringFilter::StopStringFilter(std::vector<std::string> stops) {
  for (std::string& stop : stops) {
    if (stop.empty()) continue;  // would match everywhere and stop before the first byte
    max_stop_len_ = std::max(max_stop_len_, stop.size());
    stops_.push_back(std::move(stop));
  }
}

std::string StopStringFilter::Push(absl::string_view text, bool* stopped) {
  if (stopped_) {
    if (stopped != nullptr) *stopped = true;
    return std::string();
  }
  pending_.append(text.data(), text.size());

  // The earliest full match wins; everything before it is released, the rest is dropped.
  size_t match = std::string::npos;
  for (const std::string& stop : stops_) {
    size_t pos = pending_.find(stop);
    if (pos < match) match = pos;
  }
  if (match != std::string::npos) {
    std::string out = pending_.substr(0, match);
    pending_.clear();
    stopped_ = true;
    if (stopped != nullptr) *stopped = true;
    return out;
  }
  if (stopped != nullptr) *stopped = false;

  // Hold back the longest suffix that could still grow into a stop string. No full match exists
  // now, so only suffixes shorter than the longest stop need checking.
  size_t hold = 0;
  const size_t longest = std::min(pending_.size(), max_stop_len_ > 0 ? max_stop_len_ - 1 : 0);
  for (size_t len = longest; len > 0 && hold == 0; --len) {
    absl::string_view suffix = absl::string_view(pending_).substr(pending_.size() - len);
    for (const std::string& stop : stops_) {
      if (stop.size() > len && absl::string_view(stop).substr(0, len) == suffix) {
        hold = len;
        break;
      }
    }
  }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  return out;
}

std::string StopStringFilter::Flush() {
  std::string out = std::move(pending_);
  pending_.clear();
  return out;
}

// ---- UTF-8 -----------------------------------------------------------------------------------

size_t Utf8SequenceAt(absl::string_view text, size_t i) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  if (i >= n) return 0;
  const unsigned char c = s[i];
  if (c < 0x80) return 1;
  const size_t len = SequenceLength(c);  // rejects C0, C1 (overlong 2-byte) and F5..FF
  if (len == 0 || i + len > n) return 0;
  for (size_t k = 1; k < len; ++k) {
    if ((s[i + k] & 0xC0) != 0x80) return 0;
  }
  const unsigned char c1 = s[i + 1];
  // The second byte's range rules out overlong 3/4-byte forms, surrogates (ED A0..BF) and
  // code points past U+10FFFF (F4 90..).
  if (c == 0xE0 && c1 < 0xA0) return 0;
  if (c == 0xED && c1 > 0x9F) return 0;
  if (c == 0xF0 && c1 < 0x90) return 0;
  if (c == 0xF4 && c1 > 0x8F) return 0;
  return len;
}

bool IsValidUtf8(absl::string_view text) {
  for (size_t i = 0; i < text.size();) {
    const size_t len = Utf8SequenceAt(text, i);
    if (len == 0) return false;
    i += len;
  }
  return true;
}

std::string ReplaceInvalidUtf8(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const size_t len = Utf8SequenceAt(text, i);
    if (len == 0) {
      out.append(kReplacementChar.data(), kReplacementChar.size());
      ++i;
    } else {
      out.append(text.data() + i, len);
      i += len;
    }
  }
  return out;
}

}  // namespace tandem
