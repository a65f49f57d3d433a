#include "models/text/llama2c_tokenizer.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <queue>
#include <set>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "models/text/text_stream.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "tokenizer.bin I/O assumes little-endian");

namespace tandem {
namespace {

// run.c's best_score starts here: a pair scoring this or less is never merged.
constexpr float kNoMerge = -1e10f;
// The piece Llama2cVocabFrom gives ids past the source tokenizer's vocabulary.
constexpr char kPaddingPiece[] = "\xFF";

template <typename T>
void Append(std::string* out, T v) {
  out->append(reinterpret_cast<const char*>(&v), sizeof(v));
}

// The byte of a piece run.c's decode turns into a raw byte ("<0x" and one or two hex digits, as
// its sscanf("<0x%02hhX>") accepts), or -1.
int BytePiece(absl::string_view piece) {
  if (piece.size() < 4 || piece.substr(0, 3) != "<0x") return -1;
  int value = 0, digits = 0;
  for (size_t i = 3; i < piece.size() && digits < 2; ++i, ++digits) {
    const char c = piece[i];
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else {
      break;
    }
    value = value * 16 + d;
  }
  return digits == 0 ? -1 : value;
}

absl::Status Invalid(absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("not a llama2.c tokenizer.bin: ", what));
}

}  // namespace

absl::StatusOr<Llama2cVocab> ParseLlama2cVocab(absl::string_view bytes) {
  Llama2cVocab vocab;
  if (bytes.size() < sizeof(uint32_t)) {
    return Invalid(absl::StrCat(bytes.size(), " bytes, shorter than its 4-byte header"));
  }
  std::memcpy(&vocab.max_token_length, bytes.data(), sizeof(uint32_t));
  size_t at = sizeof(uint32_t);
  while (at < bytes.size()) {
    const size_t id = vocab.pieces.size();
    if (bytes.size() - at < sizeof(float) + sizeof(int32_t)) {
      return Invalid(absl::StrCat("token ", id, " is cut short at byte ", at));
    }
    float score;
    int32_t len;
    std::memcpy(&score, bytes.data() + at, sizeof(score));
    std::memcpy(&len, bytes.data() + at + sizeof(score), sizeof(len));
    at += sizeof(score) + sizeof(len);
    if (len <= 0) return Invalid(absl::StrCat("token ", id, " has length ", len));
    if (static_cast<uint32_t>(len) > vocab.max_token_length) {
      return Invalid(absl::StrCat("token ", id, " is ", len, " bytes, longer than the ",
                                  "max_token_length ", vocab.max_token_length));
    }
    if (bytes.size() - at < static_cast<size_t>(len)) {
      return Invalid(absl::StrCat("token ", id, " is cut short at byte ", at));
    }
    vocab.pieces.emplace_back(bytes.substr(at, len));
    vocab.scores.push_back(score);
    at += len;
  }
  return vocab;
}

std::string SerializeLlama2cVocab(const Llama2cVocab& vocab) {
  std::string out;
  Append(&out, vocab.max_token_length);
  for (size_t i = 0; i < vocab.pieces.size(); ++i) {
    Append(&out, i < vocab.scores.size() ? vocab.scores[i] : 0.0f);
    Append(&out, static_cast<int32_t>(vocab.pieces[i].size()));
    out += vocab.pieces[i];
  }
  return out;
}

absl::StatusOr<Llama2cVocab> Llama2cVocabFrom(const Tokenizer& tokenizer, int vocab_size) {
  const int n = tokenizer.vocab_size();
  if (vocab_size < n) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocab_size ", vocab_size, " is below the ", n, " pieces of the tokenizer"));
  }
  if (tokenizer.bos_id() != kLlama2cBosId || tokenizer.eos_id() != kLlama2cEosId) {
    return absl::FailedPreconditionError(
        absl::StrCat("run.c needs BOS = 1 and EOS = 2; this tokenizer has BOS ", tokenizer.bos_id(),
                     " and EOS ", tokenizer.eos_id()));
  }
  if (n < kLlama2cMinVocab) {
    return absl::FailedPreconditionError(absl::StrCat(
        "run.c needs the 256 byte pieces at ids 3..258; this tokenizer has ", n, " pieces"));
  }
  for (int b = 0; b < 256; ++b) {
    const std::string want = absl::StrFormat("<0x%02X>", b);
    if (tokenizer.IdToPiece(kLlama2cByteOffset + b) != want) {
      return absl::FailedPreconditionError(absl::StrCat(
          "run.c's byte fallback encodes byte ", b, " as id ", kLlama2cByteOffset + b,
          ", but this tokenizer's piece there is \"", tokenizer.IdToPiece(kLlama2cByteOffset + b),
          "\", not ", want, " (a tokenizer trained without byte fallback)"));
    }
  }
  const bool sentencepiece = tokenizer.kind() == TokenizerKind::kSentencePiece;
  Llama2cVocab vocab;
  for (int id = 0; id < vocab_size; ++id) {
    std::string piece;
    if (id >= n) {
      piece = kPaddingPiece;
    } else if (sentencepiece && id == kLlama2cBosId) {
      piece = "\n<s>\n";
    } else if (sentencepiece && id == kLlama2cEosId) {
      piece = "\n</s>\n";
    } else if (sentencepiece) {
      piece = absl::StrReplaceAll(tokenizer.IdToPiece(id), {{"\xE2\x96\x81", " "}});  // "▁"
    } else {
      piece = tokenizer.IdToPiece(id);
    }
    vocab.max_token_length = std::max<uint32_t>(vocab.max_token_length, piece.size());
    vocab.pieces.push_back(std::move(piece));
    vocab.scores.push_back(id < n ? tokenizer.Score(id) : 0.0f);
  }
  return vocab;
}

namespace {

constexpr char kSyntheticText[] =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
    "sunshine with her friend, a big brown dog called Max. One day, they found a shiny red ball "
    "under the old tree in the park. Lily said, \"Look, Max! It is so pretty!\" Max wagged his "
    "tail and ran after the ball. They played and laughed all day long, and when the sun went "
    "down, they walked home together. Her mom made them a warm dinner, and then Lily went to "
    "bed. She was very happy, because she had the best friend in the whole world. The next "
    "morning, the birds were singing and the sky was blue. Lily and Max went back to the park "
    "to play with the red ball again, and they had a wonderful time.";

// The most frequent adjacent pair of `symbols` (ties: the lexicographically smallest), with
// its count.
std::pair<std::pair<std::string, std::string>, int> MostFrequentPair(
    const std::vector<std::string>& symbols) {
  std::map<std::pair<std::string, std::string>, int> counts;
  for (size_t i = 0; i + 1 < symbols.size(); ++i) ++counts[{symbols[i], symbols[i + 1]}];
  std::pair<std::pair<std::string, std::string>, int> best{{}, 0};
  for (const auto& [pair, count] : counts) {
    if (count > best.second) best = {pair, count};
  }
  return best;
}

}  // namespace

Llama2cVocab SyntheticLlama2cVocab(int vocab_size, uint64_t seed) {
  Llama2cVocab vocab;
  std::set<std::string> seen;
  auto add = [&](std::string piece, float score) {
    if (static_cast<int>(vocab.pieces.size()) >= vocab_size || !seen.insert(piece).second) return;
    vocab.max_token_length = std::max<uint32_t>(vocab.max_token_length, piece.size());
    vocab.pieces.push_back(std::move(piece));
    vocab.scores.push_back(score);
  };
  add("<unk>", 0.0f);
  add("\n<s>\n", 0.0f);
  add("\n</s>\n", 0.0f);
  for (int b = 0; b < 256; ++b) add(absl::StrFormat("<0x%02X>", b), 0.0f);
  std::vector<std::string> chars = {" ", "\xC3\xA9", "\xC3\xBC", "\xE6\x97\xA5"};  // é ü 日
  for (char c = '!'; c <= '~'; ++c) chars.push_back(std::string(1, c));
  for (size_t i = 0; i < chars.size(); ++i) add(chars[i], -1e6f - static_cast<float>(i));
  // BPE on the built-in text, which starts with run.c's dummy-prefix space.
  std::vector<std::string> symbols;
  for (char c : absl::StrCat(" ", kSyntheticText)) symbols.push_back(std::string(1, c));
  int merges = 0;
  while (static_cast<int>(vocab.pieces.size()) < vocab_size) {
    const auto [pair, count] = MostFrequentPair(symbols);
    if (count < 2) break;
    const std::string merged = pair.first + pair.second;
    add(merged, -static_cast<float>(merges++));
    std::vector<std::string> next;
    for (size_t i = 0; i < symbols.size(); ++i) {
      if (i + 1 < symbols.size() && symbols[i] == pair.first && symbols[i + 1] == pair.second) {
        next.push_back(merged);
        ++i;
      } else {
        next.push_back(symbols[i]);
      }
    }
    symbols = std::move(next);
  }
  // Then concatenations of two earlier learned or character pieces, up to 16 bytes.
  const size_t first_text_piece = kLlama2cByteOffset + 256;
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
  auto draw = [&](size_t n) {
    x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
    return static_cast<size_t>((x * 0x2545F4914F6CDD1Dull) >> 33) % n;
  };
  while (static_cast<int>(vocab.pieces.size()) < vocab_size) {
    const size_t n = vocab.pieces.size() - first_text_piece;
    const std::string a = vocab.pieces[first_text_piece + draw(n)];
    const std::string b = vocab.pieces[first_text_piece + draw(n)];
    if (a.size() + b.size() > 16 || b[0] == ' ') continue;
    add(a + b, -static_cast<float>(merges++));
  }
  return vocab;
}

// ---- Llama2cTokenizer ------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> Llama2cTokenizer::FromVocab(Llama2cVocab vocab) {
  if (vocab.pieces.size() < static_cast<size_t>(kLlama2cMinVocab)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a llama2.c tokenizer needs at least ", kLlama2cMinVocab, " pieces (<unk>, BOS, EOS and ",
        "the 256 byte pieces run.c's byte fallback uses); this one has ", vocab.pieces.size()));
  }
  if (vocab.scores.size() != vocab.pieces.size()) {
    return absl::InvalidArgumentError(absl::StrCat("a llama2.c vocabulary of ", vocab.pieces.size(),
                                                   " pieces has ", vocab.scores.size(), " scores"));
  }
  return std::unique_ptr<Llama2cTokenizer>(new Llama2cTokenizer(std::move(vocab)));
}

absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> Llama2cTokenizer::FromSerialized(
    absl::string_view bytes) {
  absl::StatusOr<Llama2cVocab> vocab = ParseLlama2cVocab(bytes);
  if (!vocab.ok()) return vocab.status();
  return FromVocab(*std::move(vocab));
}

absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> Llama2cTokenizer::Load(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    return absl::NotFoundError(absl::StrCat("llama2.c tokenizer not found: ", path));
  }
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in.good() && !in.eof()) {
    return absl::PermissionDeniedError(absl::StrCat("cannot read ", path));
  }
  absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> t = FromSerialized(bytes);
  if (!t.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": ", t.status().message()));
  return t;
}

Llama2cTokenizer::Llama2cTokenizer(Llama2cVocab vocab) : vocab_(std::move(vocab)) {
  const int32_t n = vocab_size();
  c_pieces_.reserve(n);
  special_.assign(n, false);
  for (int32_t id = 0; id < n; ++id) {
    const std::string& p = vocab_.pieces[id];
    c_pieces_.push_back(absl::string_view(p).substr(0, p.find('\0')));
    special_[id] = id == kLlama2cUnkId || id == kLlama2cBosId || id == kLlama2cEosId ||
                   !IsValidUtf8(c_pieces_[id]);
  }
  sorted_.resize(n);
  for (int32_t id = 0; id < n; ++id) sorted_[id] = id;
  std::stable_sort(sorted_.begin(), sorted_.end(),
                   [&](int32_t a, int32_t b) { return c_pieces_[a] < c_pieces_[b]; });
  space_id_ = Lookup(" ");
}

int32_t Llama2cTokenizer::Lookup(absl::string_view s) const {
  // glibc's bsearch, step for step, so that a duplicated piece resolves to the same id.
  size_t lo = 0, hi = sorted_.size();
  while (lo < hi) {
    const size_t mid = (lo + hi) / 2;
    const int cmp = s.compare(c_pieces_[sorted_[mid]]);
    if (cmp < 0) {
      hi = mid;
    } else if (cmp > 0) {
      lo = mid + 1;
    } else {
      return sorted_[mid];
    }
  }
  return -1;
}

void Llama2cTokenizer::AppendCodePoints(absl::string_view text, std::vector<int32_t>* ids) const {
  auto continuation = [&](size_t i) {
    return (static_cast<unsigned char>(text[i]) & 0xC0) == 0x80;
  };
  size_t i = 0;
  while (i < text.size()) {
    const size_t start = i++;
    while (i < text.size() && continuation(i) && i - start < 4) ++i;
    const absl::string_view point = text.substr(start, i - start);
    const int32_t id = point.find('\0') == absl::string_view::npos ? Lookup(point) : -1;
    if (id >= 0) {
      ids->push_back(id);
      continue;
    }
    for (char c : point) ids->push_back(static_cast<unsigned char>(c) + kLlama2cByteOffset);
  }
}

void Llama2cTokenizer::MergePairs(std::vector<int32_t>* ids) const {
  const int n = static_cast<int>(ids->size());
  std::vector<int32_t>& id = *ids;
  // A doubly linked list over the positions; a merge keeps the left position and unlinks the
  // right one. A position's generation changes whenever its id does, which retires every queued
  // candidate that still names the old id.
  std::vector<int> prev(n), next(n), generation(n, 0);
  for (int i = 0; i < n; ++i) prev[i] = i - 1, next[i] = i + 1;
  struct Candidate {
    float score;
    int left, right;
    int left_generation, right_generation;
    int32_t merged;
  };
  // Best score first; on equal scores the leftmost pair, as run.c's left-to-right scan keeps the
  // first maximum.
  auto worse = [](const Candidate& a, const Candidate& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(worse)> queue(worse);
  std::string buffer;
  auto consider = [&](int left) {
    if (left < 0) return;
    const int right = next[left];
    if (right >= n) return;
    buffer.assign(CPiece(id[left]).data(), CPiece(id[left]).size());
    buffer.append(CPiece(id[right]).data(), CPiece(id[right]).size());
    const int32_t merged = Lookup(buffer);
    if (merged < 0 || !(vocab_.scores[merged] > kNoMerge)) return;  // NaN never merges either
    queue.push({vocab_.scores[merged], left, right, generation[left], generation[right], merged});
  };
  for (int i = 0; i + 1 < n; ++i) consider(i);
  std::vector<bool> alive(n, true);
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    if (!alive[c.left] || !alive[c.right] || next[c.left] != c.right ||
        generation[c.left] != c.left_generation || generation[c.right] != c.right_generation) {
      continue;  // stale: one side merged since
    }
    id[c.left] = c.merged;
    ++generation[c.left];
    alive[c.right] = false;
    next[c.left] = next[c.right];
    if (next[c.right] < n) prev[next[c.right]] = c.left;
    consider(prev[c.left]);
    consider(c.left);
  }
  std::vector<int32_t> out;
  for (int i = 0; i < n; i = next[i]) out.push_back(id[i]);
  id = std::move(out);
}

std::vector<int32_t> Llama2cTokenizer::Encode(absl::string_view text) const {
  std::vector<int32_t> ids;
  if (text.empty()) return ids;
  // run.c's dummy prefix. (Without a " " piece run.c would store -1; the byte token of the space
  // is the nearest sane thing.)
  ids.push_back(space_id_ >= 0 ? space_id_ : ' ' + kLlama2cByteOffset);
  AppendCodePoints(text, &ids);
  MergePairs(&ids);
  return ids;
}

std::string Llama2cTokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::string raw;
  int32_t prev = kLlama2cBosId;
  for (int32_t id : ids) {
    const int32_t before = prev;
    prev = id;
    if (IsSpecial(id)) continue;
    absl::string_view piece = CPiece(id);
    if (before == kLlama2cBosId && !piece.empty() && piece[0] == ' ') piece.remove_prefix(1);
    const int byte = BytePiece(piece);
    if (byte >= 0) {
      raw.push_back(static_cast<char>(byte));
    } else {
      raw.append(piece.data(), piece.size());
    }
  }
  return ReplaceInvalidUtf8(raw);
}

bool Llama2cTokenizer::IsSpecial(int32_t id) const {
  return id < 0 || id >= vocab_size() || special_[id];
}

std::string Llama2cTokenizer::IdToPiece(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return std::string();
  return vocab_.pieces[id];
}

float Llama2cTokenizer::Score(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return 0.0f;
  return vocab_.scores[id];
}

}  // namespace tandem
