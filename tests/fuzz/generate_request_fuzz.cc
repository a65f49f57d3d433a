// Request validation (server/api/validation.cc) on arbitrary GenerateRequest bytes, as gRPC
// would hand them to the service: every request is either refused with INVALID_ARGUMENT or
// becomes a device request inside the model's limits (prompt plus completion within the
// context, caption within the text encoder's), never a crash. The models are tiny configs with
// a real tokenizer trained at start-up.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/time/clock.h"
#include "google/protobuf/stubs/logging.h"
#include "server/api/validation.h"
#include "tests/fuzz/fuzz_files.h"
#include "models/text/sentencepiece_tokenizer.h"

namespace {

struct Models {
  std::shared_ptr<tandem::ModelEntry> text, image;
};

const Models& GetModels() {
  static const Models* models = [] {
    const std::string corpus = tandem::fuzz::ScratchDir() + "/corpus.txt";
    std::string text;
    for (int i = 0; i < 200; ++i) {
      text += "the cat sat on the mat number " + std::to_string(i) + " and the dog ran away\n";
    }
    tandem::fuzz::WriteBytes(corpus, reinterpret_cast<const uint8_t*>(text.data()), text.size());
    tandem::TokenizerTrainOptions options;
    options.vocab_size = 300;
    options.num_threads = 1;
    options.hard_vocab_limit = false;
    const std::string model = tandem::fuzz::ScratchDir() + "/tokenizer.model";
    if (!tandem::SentencePieceTokenizer::Train(corpus, model, options).ok()) std::abort();
    std::shared_ptr<const tandem::Tokenizer> tok = *tandem::SentencePieceTokenizer::Load(model);
    auto* m = new Models();
    m->text = std::make_shared<tandem::ModelEntry>();
    m->text->name = "text";
    m->text->tokenizer = tok;
    m->text->dir.kind = tandem::ModelKind::kText;
    m->text->dir.llama.vocab_size = tok->vocab_size();
    m->text->dir.llama.dim = 32;
    m->text->dir.llama.n_layers = 1;
    m->text->dir.llama.n_heads = 4;
    m->text->dir.llama.n_kv_heads = 4;
    m->text->dir.llama.seq_len = 64;
    if (!m->text->dir.llama.Normalize().ok()) std::abort();
    m->image = std::make_shared<tandem::ModelEntry>();
    m->image->name = "image";
    m->image->tokenizer = tok;
    m->image->dir.kind = tandem::ModelKind::kImage;
    m->image->dir.diffusion.text_seq_len = 8;
    m->image->dir.diffusion.vocab_size = tok->vocab_size();
    if (!m->image->dir.diffusion.Normalize().ok()) std::abort();
    return m;
  }();
  return *models;
}

}  // namespace

// Protobuf logs every string field that is not UTF-8 (such a message does not parse): silence.
extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tandem::v1::GenerateRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  const Models& models = GetModels();
  tandem::RequestLimits limits;
  limits.max_prompt_bytes = 4096;  // keeps each run fast; the checks are the same
  if (request.has_image()) {
    auto built = tandem::BuildImageRequest(request, models.image, limits, absl::Now());
    if (!built.ok()) {
      if (built.status().code() != absl::StatusCode::kInvalidArgument) std::abort();
      return 0;
    }
    const int room = models.image->dir.diffusion.text_seq_len - 1;
    if (static_cast<int>((*built)->spec.caption.size()) > room) std::abort();
    if ((*built)->num_images < 1 || (*built)->num_images > limits.max_images) std::abort();
    return 0;
  }
  auto built = tandem::BuildTextRequest(request, models.text, limits, absl::Now());
  if (!built.ok()) {
    if (built.status().code() != absl::StatusCode::kInvalidArgument) std::abort();
    return 0;
  }
  const int context = models.text->dir.llama.seq_len;
  if ((*built)->max_tokens < 1 ||
      static_cast<int>((*built)->prompt.size()) + (*built)->max_tokens > context) {
    std::abort();
  }
  return 0;
}
