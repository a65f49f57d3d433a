// Turning generated token ids into streamed text: incremental detokenization that never emits
// half a UTF-8 character or a piece whose leading space depends on what follows, and stop-string
// filtering that holds back text which might be the start of a stop string. Torch-free.
#ifndef TANDEM_MODELS_TEXT_TEXT_STREAM_H_
#define TANDEM_MODELS_TEXT_TEXT_STREAM_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "models/text/tokenizer.h"

namespace tandem {

// Decodes a growing id sequence window by window (O(window) per token, not O(length)): the text
// appended by token i is Decode(ids[prefix..i]) minus Decode(ids[prefix..read]), emitted only once
// it ends in a complete UTF-8 character. Concatenating every Push result and Flush() equals
// tokenizer.Decode(all ids) (the tokenizer must outlive this).
class IncrementalDetokenizer {
 public:
  // `context`: the ids the stream continues (a prompt, BOS first), of which only the last is
  // kept: the first generated piece then shows the leading space it has after that id (none
  // after BOS), so prompt text + streamed text is the decoded whole. Without a context the
  // stream is decoded as a text of its own (its first piece loses its leading space).
  explicit IncrementalDetokenizer(const Tokenizer* tokenizer,
                                  absl::Span<const int32_t> context = {});
  // Adds one generated id; returns the newly completed text (possibly empty).
  std::string Push(int32_t id);
  // Whatever is still held back (an incomplete character at the very end).
  std::string Flush();

 private:
  const Tokenizer* tokenizer_;
  std::vector<int32_t> ids_;
  size_t prefix_offset_ = 0;  // start of the decode window
  size_t read_offset_ = 0;    // ids before this have been emitted
};

// Holds back text that might be the start of a stop string; reports the first full match.
class StopStringFilter {
 public:
  explicit StopStringFilter(std::vector<std::string> stops);
  // Appends `text`; returns the part that is now safe to emit. Once a stop string is matched,
  // *stopped is set, the returned text ends just before it, and later calls return nothing.
  std::string Push(absl::string_view text, bool* stopped);
  // At the end of generation: the held-back text (never part of a full stop match).
  std::string Flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  size_t max_stop_len_ = 0;
  std::string pending_;
  bool stopped_ = false;
};

// True when `text` is well-formed UTF-8 (no overlongs, surrogates or code points past U+10FFFF).
bool IsValidUtf8(absl::string_view text);
// The length of the well-formed UTF-8 character starting at text[i] (1 to 4), or 0 when none
// does (or i is past the end).
size_t Utf8SequenceAt(absl::string_view text, size_t i);
// `text` with every byte that is not part of a well-formed character replaced by U+FFFD.
std::string ReplaceInvalidUtf8(absl::string_view text);

}  // namespace tandem

#endif  // TANDEM_MODELS_TEXT_TEXT_STREAM_H_
