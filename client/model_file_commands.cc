#include "client/model_file_commands.h"

#include <cstdio>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "models/llama2c_model.h"

namespace tandem::client {
namespace {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "tandem: %s: %s\n", absl::StatusCodeToString(s.code()).c_str(),
               std::string(s.message()).c_str());
  return 1;
}

int BadArguments(const std::string& message) {
  std::fprintf(stderr, "tandem: %s\n", message.c_str());
  return 2;
}

bool CheckFormat(const char* command, const std::string& format) {
  if (format == "llama2c") return true;
  BadArguments(absl::StrCat(command, " --format=", format.empty() ? "(missing)" : format,
                            ": the one format is llama2c"));
  return false;
}

}  // namespace

int Import(const ImportOptions& o) {
  if (!CheckFormat("import", o.format)) return 2;
  if (o.checkpoint.empty() || o.tokenizer.empty() || o.out_dir.empty()) {
    return BadArguments(
        "import needs --checkpoint=model.bin --tokenizer=tokenizer.bin and one OUT_DIR");
  }
  absl::StatusOr<Llama2cImportSummary> s = ImportLlama2c(o.checkpoint, o.tokenizer, o.out_dir);
  if (!s.ok()) return Fail(s.status());
  const LlamaConfig& c = s->config;
  std::fprintf(stderr,
               "tandem: imported %s (llama2.c version %d: dim %d, hidden %d, %d layers, %d heads, "
               "%d kv heads, vocab %d, seq_len %d, %s classifier; %lld parameters) with %s "
               "(%d pieces) into %s\n",
               o.checkpoint.c_str(), s->version, c.dim, c.hidden_dim, c.n_layers, c.n_heads,
               c.n_kv_heads, c.vocab_size, c.seq_len, c.tie_embeddings ? "shared" : "own",
               static_cast<long long>(c.ParameterCount()), o.tokenizer.c_str(), s->tokenizer_pieces,
               o.out_dir.c_str());
  return 0;
}

int Export(const ExportOptions& o) {
  if (!CheckFormat("export", o.format)) return 2;
  if (o.model.empty() || o.out_dir.empty()) {
    return BadArguments("export needs a MODEL directory and an OUT_DIR");
  }
  if (o.version < 0 || o.version > 2) {
    return BadArguments(
        absl::StrCat("--llama2c_version=", o.version, ": 0 (run.c), 1 or 2 ", "(Q8_0, runq.c)"));
  }
  if (o.group_size < 0) {
    return BadArguments(absl::StrCat("--group_size=", o.group_size, " must be >= 0"));
  }
  Llama2cExportOptions options;
  options.version = o.version;
  options.group_size = o.group_size;
  absl::StatusOr<Llama2cExportSummary> s = ExportLlama2c(o.model, o.out_dir, options);
  if (!s.ok()) return Fail(s.status());
  std::fprintf(stderr, "tandem: exported %s as %s (llama2.c version %d) and %s (%d pieces)\n",
               o.model.c_str(), s->checkpoint_path.c_str(), o.version, s->tokenizer_path.c_str(),
               s->tokenizer_pieces);
  return 0;
}

}  // namespace tandem::client
