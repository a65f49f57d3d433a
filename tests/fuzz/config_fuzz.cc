// Model configs (config.json of a text or image model), job rows of the job store and the
// tokens file on arbitrary text: each parser answers a status or a value, never crashes. The
// first byte picks the parser.
#include <cstdint>
#include <string>

#include "models/diffusion/diffusion_config.h"
#include "models/llama/llama_config.h"
#include "server/api/auth.h"
#include "server/jobs/job_json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 5) {
    case 0: {
      absl::StatusOr<tandem::LlamaConfig> c = tandem::LlamaConfig::FromJson(text);
      if (c.ok()) (void)c->ParameterCount();
      break;
    }
    case 1: {
      absl::StatusOr<tandem::DiffusionConfig> c = tandem::DiffusionConfig::FromJson(text);
      if (c.ok()) (void)c->ParameterCount();
      break;
    }
    case 2: (void)tandem::JobFromJson(text); break;
    case 3: (void)tandem::JobEventFromJson(text); break;
    default: (void)tandem::ParseTokens(text); break;
  }
  return 0;
}
