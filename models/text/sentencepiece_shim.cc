// libtandem_sentencepiece: SentencePiece behind a C interface (see sentencepiece_api.h for why).
// No Abseil and no protobuf here but SentencePiece's own copy.
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

// SentencePiece 0.1.97's header declares `namespace absl { using std::string_view; }`; nothing
// else here uses Abseil, so it is harmless in this module.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include "models/text/sentencepiece_api.h"

namespace {

using sentencepiece::SentencePieceProcessor;

char* CopyOut(const std::string& s, size_t* len) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  if (p == nullptr) return nullptr;
  std::memcpy(p, s.data(), s.size());
  p[s.size()] = '\0';
  if (len) *len = s.size();
  return p;
}

void* Finish(SentencePieceProcessor* sp, const sentencepiece::util::Status& s, int* code,
             char** err) {
  if (s.ok()) return sp;
  *code = static_cast<int>(s.code());
  *err = CopyOut(s.message(), nullptr);
  delete sp;
  return nullptr;
}

// SentencePiece throws from deep inside some malformed models (its trie builder: "failed to
// insert key: zero-length key", found by tests/fuzz/tokenizer_fuzz); an exception must not
// cross this C interface, so it becomes an error like any other.
template <typename LoadFn>
void* LoadCatching(LoadFn load, int* code, char** err) {
  auto* sp = new SentencePieceProcessor();
  try {
    return Finish(sp, load(sp), code, err);
  } catch (const std::exception& e) {
    delete sp;
    *code = static_cast<int>(sentencepiece::util::StatusCode::kInternal);
    *err = CopyOut(std::string("the tokenizer model is malformed: ") + e.what(), nullptr);
    return nullptr;
  }
}

void* Load(const char* path, int* code, char** err) {
  return LoadCatching([&](SentencePieceProcessor* sp) { return sp->Load(std::string_view(path)); },
                      code, err);
}

void* LoadSerialized(const char* data, size_t n, int* code, char** err) {
  return LoadCatching(
      [&](SentencePieceProcessor* sp) {
        return sp->LoadFromSerializedProto(std::string_view(data, n));
      },
      code, err);
}

void Destroy(void* sp) { delete static_cast<SentencePieceProcessor*>(sp); }

int Encode(void* sp, const char* text, size_t n, int32_t** ids, size_t* count) {
  std::vector<int> out;
  auto s = static_cast<SentencePieceProcessor*>(sp)->Encode(std::string_view(text, n), &out);
  if (!s.ok()) return static_cast<int>(s.code());
  *ids = static_cast<int32_t*>(std::malloc(sizeof(int32_t) * (out.size() + 1)));
  for (size_t i = 0; i < out.size(); ++i) (*ids)[i] = out[i];
  *count = out.size();
  return 0;
}

char* Decode(void* sp, const int32_t* ids, size_t n, size_t* len) {
  std::vector<int> in(ids, ids + n);
  std::string text;
  auto s = static_cast<SentencePieceProcessor*>(sp)->Decode(in, &text);
  if (!s.ok()) return nullptr;
  return CopyOut(text, len);
}

char* IdToPiece(void* sp, int32_t id, size_t* len) {
  return CopyOut(static_cast<SentencePieceProcessor*>(sp)->IdToPiece(id), len);
}

float Score(void* sp, int32_t id) {
  return static_cast<SentencePieceProcessor*>(sp)->GetScore(id);
}

int PieceSize(void* sp) { return static_cast<SentencePieceProcessor*>(sp)->GetPieceSize(); }
int BosId(void* sp) { return static_cast<SentencePieceProcessor*>(sp)->bos_id(); }
int EosId(void* sp) { return static_cast<SentencePieceProcessor*>(sp)->eos_id(); }

int IsSpecial(void* sp, int32_t id) {
  auto* p = static_cast<SentencePieceProcessor*>(sp);
  return p->IsControl(id) || p->IsUnknown(id) || p->IsUnused(id);
}

char* Serialized(void* sp, size_t* len) {
  return CopyOut(static_cast<SentencePieceProcessor*>(sp)->serialized_model_proto(), len);
}

int Train(const char* const* keys, const char* const* values, size_t n, unsigned seed,
          char** model, size_t* model_len, char** err) {
  std::unordered_map<std::string, std::string> args;
  for (size_t i = 0; i < n; ++i) args[keys[i]] = values[i];
  sentencepiece::SetRandomGeneratorSeed(seed);
  std::string out;
  auto s = sentencepiece::SentencePieceTrainer::Train(args, /*sentence_iterator=*/nullptr, &out);
  if (!s.ok()) {
    *err = CopyOut(s.message(), nullptr);
    return static_cast<int>(s.code());
  }
  *model = CopyOut(out, model_len);
  return 0;
}

void FreeBuf(void* p) { std::free(p); }

const tandem_spm_api kApi = {
    TANDEM_SENTENCEPIECE_API_VERSION, Load, LoadSerialized, Destroy, Encode, Decode, IdToPiece,
    Score,    PieceSize, BosId, EosId, IsSpecial, Serialized, Train, FreeBuf};

}  // namespace

extern "C" __attribute__((visibility("default"))) const tandem_spm_api*
tandem_sentencepiece_api(void) {
  return &kApi;
}
