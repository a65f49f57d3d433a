// The pure parts of `tandem train`: assembling a TrainJobSpec from a JSON file and flags, parsing
// state and kind names, and formatting jobs, progress lines and durations. No gRPC calls and no
// I/O here (client/train_commands.cc does those), so tests/unit covers it.
#ifndef TANDEM_CLIENT_TRAIN_FORMAT_H_
#define TANDEM_CLIENT_TRAIN_FORMAT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "tandem/v1/training.pb.h"

namespace tandem::client {

// Between the parts of a summary or progress line: " · ".
inline constexpr char kDot[] = " \xC2\xB7 ";

// TrainJobSpec fields given on the command line. Only the fields that are set (the user passed
// the flag) are written into the spec, over what a --spec file says.
struct TrainSpecFlags {
  std::optional<std::string> name;
  std::optional<std::string> kind;  // text | image
  std::optional<std::string> dataset;
  std::optional<std::string> init_from;
  std::optional<std::string> deploy_as;
  std::optional<bool> deploy_on_improvement;
  std::optional<int> priority;
  // Hyperparameters.
  std::optional<int64_t> steps;
  std::optional<int> batch_size;
  std::optional<int> grad_accum;
  std::optional<int> chunk_rows;
  std::optional<double> max_seconds;
  std::optional<double> ema_decay;
  std::optional<double> min_snr_gamma;
  std::optional<double> dropout;
  std::optional<std::string> optimizer;  // adamw | muon
  std::optional<std::string> precision;  // fp32 | bf16-mixed | auto
  std::optional<double> lr;
  std::optional<double> min_lr;
  std::optional<int64_t> warmup_steps;
  std::optional<double> weight_decay;
  std::optional<double> beta1;
  std::optional<double> beta2;
  std::optional<double> grad_clip;
  std::optional<int64_t> eval_every;
  std::optional<int64_t> checkpoint_every;
  std::optional<uint64_t> seed;
  std::optional<double> caption_dropout;
  std::optional<double> holdout_fraction;
  // Both model kinds: the tokenizer's vocabulary.
  std::optional<int> vocab_size;
  // Text model.
  std::optional<int> layers;
  std::optional<int> dim;
  std::optional<int> heads;
  std::optional<int> kv_heads;
  std::optional<int> seq_len;
  std::optional<int> hidden_dim;
  std::optional<bool> tie_embeddings;
  // Image model.
  std::optional<int> image_size;
  std::optional<int> channels;
  std::optional<std::string> unet_widths;       // "32,64,128"
  std::optional<int> res_blocks;
  std::optional<std::string> attention_levels;  // "1,2"
  std::optional<int> text_dim;
  std::optional<int> text_layers;
  std::optional<int> text_heads;
  std::optional<int> text_seq_len;
  std::optional<int> diffusion_steps;
  std::optional<bool> v_prediction;
};

// A TrainJobSpec in protobuf JSON (field names as in the .proto or lowerCamelCase; enums by name
// or number). `source` names the input in errors (the file name).
absl::StatusOr<tandem::v1::TrainJobSpec> ParseTrainJobSpecJson(const std::string& json,
                                                               const std::string& source);
// The same from a file (`tandem train submit --spec`, the benchmarks' recipes in
// scripts/recipes/): NOT_FOUND / PERMISSION_DENIED naming it when it cannot be read.
absl::StatusOr<tandem::v1::TrainJobSpec> ReadTrainJobSpecFile(const std::string& path);

// Writes the set flags into `spec`. The kind comes from --kind, else the spec, else the model
// config (the spec's, or which model flags were given). INVALID_ARGUMENT for a bad --kind or list,
// model flags of the other kind, or a kind that contradicts the spec's model config.
absl::Status ApplyTrainSpecFlags(const TrainSpecFlags& flags, tandem::v1::TrainJobSpec* spec);

// "32,64,128" -> {32, 64, 128}; every entry a positive integer (0 allowed if allow_zero).
absl::StatusOr<std::vector<int>> ParseIntList(const std::string& text, const std::string& flag,
                                              bool allow_zero = false);
// "text" | "image" (also the enum names).
absl::StatusOr<tandem::v1::TrainKind> ParseTrainKind(const std::string& text);
// "running,queued" -> {RUNNING, QUEUED}; case-insensitive; empty -> {}.
absl::StatusOr<std::vector<tandem::v1::TrainJobState>> ParseStateList(const std::string& text);

std::string StateName(tandem::v1::TrainJobState state);  // "RUNNING"
std::string KindName(tandem::v1::TrainKind kind);         // "text", "image", "-"
bool IsFinalState(tandem::v1::TrainJobState state);

// ETA-style: "42s", "3m05s", "1h02m", "2d03h"; "?" for negative or non-finite values.
std::string FormatDuration(double seconds);
// "950 tok/s", "12.3k tok/s", "1.20M tok/s".
std::string FormatRate(double per_second, const std::string& unit);
// "step 120/1000 [####............]  12% · loss 3.4120 · lr 3.00e-04 · 1.23k tok/s · ETA 4m12s"
// (no bar without a total; the rate is tokens or images by `kind`, else whichever is set).
std::string FormatProgressLine(const tandem::v1::TrainMetrics& m, tandem::v1::TrainKind kind,
                               int bar_width = 20);
// FormatProgressLine fitted to a terminal `columns` wide (it must not wrap, or \r redraws break):
// the bar shrinks (up to 20 wide) or goes, then the line is cut to columns - 1 characters.
std::string FitProgressLine(const tandem::v1::TrainMetrics& m, tandem::v1::TrainKind kind,
                            int columns);
// Characters (UTF-8 code points) in `s`.
size_t DisplayWidth(const std::string& s);
// "eval step 500: loss 2.3450 · 1.2340 bits/byte · improved" (no sample).
std::string FormatEvalLine(const tandem::v1::EvalResult& eval);
// The text sample, every line prefixed with `prefix`.
std::string IndentSample(const std::string& text, const std::string& prefix = "  | ");
// <dir>/<job>-step<N>.png
std::string SamplePath(const std::string& dir, const std::string& job_id, int64_t step);

// The `train list` table: ID NAME KIND STATE STEP LOSS DEPLOYED, columns sized to fit.
std::string FormatJobTable(const std::vector<tandem::v1::TrainJob>& jobs);
// The `train get` details, several lines; times in `tz`.
std::string FormatJobDetails(const tandem::v1::TrainJob& job, absl::TimeZone tz);
// "step loss lr grad_norm" then one line per history entry.
std::string FormatHistory(const tandem::v1::TrainJob& job);
// The set (non-default) fields of a message, "name value · name value" (repeated: "a,b,c").
std::string FormatSetFields(const google::protobuf::Message& message);

}  // namespace tandem::client

#endif  // TANDEM_CLIENT_TRAIN_FORMAT_H_
