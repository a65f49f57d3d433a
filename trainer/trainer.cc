// The Trainer interface's non-virtual pieces: writing snapshots (checkpoints, model exports),
// tiling sample grids, and the in-process conveniences that run a whole micro-step, a whole
// evaluation with its samples, a checkpoint or an export right here. Torch-free: the samples are
// drawn through the serving models' factories.
#include "trainer/trainer.h"

#include <algorithm>
#include <filesystem>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "models/formats/png.h"
#include "models/llama/llama.h"
#include "models/text/tokenizer.h"
#include "trainer/checkpoint.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;

// The text sample, decoded: up to max_tokens from the prompt with the samples' sampler, through
// the serving model (one KV slot) built from the snapshot's weights.
absl::StatusOr<std::string> SampleTextHere(const TrainSnapshot& snap, const std::string& device,
                                           const Tokenizer& tokenizer) {
  absl::StatusOr<std::unique_ptr<TextModel>> model =
      CreateLlamaModel(snap.llama, snap.serving.empty() ? snap.model : snap.serving,
                       TextModelOptions{device, 1});
  if (!model.ok()) return model.status();
  absl::StatusOr<int> slot = (*model)->AcquireSlot();
  if (!slot.ok()) return slot.status();
  const EvalSamples& es = snap.samples;
  const int vocab = snap.llama.vocab_size;
  std::vector<float> logits(vocab);
  if (absl::Status s = (*model)->Prefill(*slot, es.prompt, logits.data()); !s.ok()) return s;
  Sampler sampler(es.sampling);
  std::vector<int32_t> out;
  int length = static_cast<int>(es.prompt.size());
  for (int i = 0; i < es.max_tokens; ++i) {
    const int32_t token = sampler.Sample(logits.data(), vocab);
    if (token == snap.llama.eos_id || token == snap.llama.bos_id) break;
    out.push_back(token);
    if (++length >= snap.llama.seq_len || i + 1 == es.max_tokens) break;
    const int slots[] = {*slot};
    const int32_t tokens[] = {token};
    if (absl::Status s = (*model)->Decode(slots, tokens, logits.data()); !s.ok()) return s;
  }
  return tokenizer.Decode(out);
}

// The image grid: every spec denoised in one batch through the serving model.
absl::StatusOr<std::string> SampleImagesHere(const TrainSnapshot& snap,
                                             const std::string& device) {
  const EvalSamples& es = snap.samples;
  const int n = static_cast<int>(es.images.size());
  absl::StatusOr<std::unique_ptr<ImageModel>> model =
      CreateDiffusionModel(snap.diffusion, snap.serving.empty() ? snap.model : snap.serving,
                           ImageModelOptions{device, std::max(1, n)});
  if (!model.ok()) return model.status();
  std::vector<int> samples;
  for (const ImageSampleSpec& spec : es.images) {
    absl::StatusOr<int> sample = (*model)->StartSample(spec);
    if (!sample.ok()) return sample.status();
    samples.push_back(*sample);
  }
  if (samples.empty()) return std::string();
  for (int k = 0; k < (*model)->TotalSteps(samples[0]); ++k) {
    if (absl::Status s = (*model)->Step(samples); !s.ok()) return s;
  }
  std::vector<std::vector<uint8_t>> pixels(samples.size());
  for (size_t i = 0; i < samples.size(); ++i) {
    if (absl::Status s = (*model)->Pixels(samples[i], &pixels[i]); !s.ok()) return s;
  }
  return TileSamples(snap.diffusion, pixels, es.columns);
}

}  // namespace

absl::Status WriteCheckpoint(const TrainSnapshot& snapshot, const std::string& checkpoints_dir) {
  Checkpoint ckpt;
  ckpt.step = snapshot.step;
  ckpt.model = snapshot.model;
  ckpt.optimizer = snapshot.optimizer;
  ckpt.state = snapshot.state;
  if (absl::Status s = WriteCheckpoint(checkpoints_dir, ckpt); !s.ok()) return s;
  return PruneCheckpoints(checkpoints_dir, std::max(1, snapshot.keep_checkpoints));
}

absl::Status ExportModel(const TrainSnapshot& snapshot, const std::string& dir,
                         const ModelProvenance& provenance) {
  std::error_code ec;
  if (fs::exists(dir, ec)) return absl::AlreadyExistsError(absl::StrCat(dir, " already exists"));
  SafetensorsFile weights;
  weights.tensors = snapshot.serving.empty() ? snapshot.model : snapshot.serving;
  if (snapshot.kind == ModelKind::kText) {
    return WriteTextModelDir(dir, snapshot.llama, weights, snapshot.tokenizer, provenance);
  }
  weights.metadata["format"] = "pt";
  weights.metadata["tandem.config"] = snapshot.diffusion.ToJson();
  return WriteImageModelDir(dir, snapshot.diffusion, weights, snapshot.tokenizer, provenance);
}

absl::StatusOr<std::string> TileSamples(const DiffusionConfig& config,
                                        const std::vector<std::vector<uint8_t>>& pixels,
                                        int columns) {
  std::vector<RawImage> images;
  for (const auto& p : pixels) {
    RawImage image;
    image.width = image.height = config.image_size;
    image.channels = config.channels;
    image.pixels = p;
    images.push_back(std::move(image));
  }
  absl::StatusOr<RawImage> grid = TileImages(images, std::max(1, columns));
  if (!grid.ok()) return grid.status();
  return EncodePng(*grid);
}

absl::StatusOr<std::optional<StepMetrics>> Trainer::MicroStep() {
  while (true) {
    absl::StatusOr<std::optional<StepMetrics>> m = RunChunk();
    if (!m.ok() || m->has_value() || at_micro_boundary()) return m;
  }
}

absl::StatusOr<EvalMetrics> Trainer::Evaluate() {
  StartEvaluation();
  std::optional<EvalMetrics> e;
  while (!e) {
    absl::StatusOr<std::optional<EvalMetrics>> m = RunEvalChunk();
    if (!m.ok()) return m.status();
    e = *std::move(m);
  }
  absl::StatusOr<TrainSnapshot> snap = Snapshot();
  if (!snap.ok()) return snap.status();
  if (snap->kind == ModelKind::kText) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok = TokenizerFromFile(snap->tokenizer);
    if (!tok.ok()) return tok.status();
    absl::StatusOr<std::string> text = SampleTextHere(*snap, options().device, **tok);
    if (!text.ok()) return text.status();
    e->text_sample = *std::move(text);
  } else {
    absl::StatusOr<std::string> png = SampleImagesHere(*snap, options().device);
    if (!png.ok()) return png.status();
    e->image_png = *std::move(png);
  }
  return *std::move(e);
}

absl::Status Trainer::SaveCheckpoint(const std::string& checkpoints_dir) {
  absl::StatusOr<TrainSnapshot> snap = Snapshot();
  if (!snap.ok()) return snap.status();
  return WriteCheckpoint(*snap, checkpoints_dir);
}

absl::Status Trainer::ExportModel(const std::string& dir, const ModelProvenance& provenance) {
  absl::StatusOr<TrainSnapshot> snap = Snapshot();
  if (!snap.ok()) return snap.status();
  return tandem::ExportModel(*snap, dir, provenance);
}

}  // namespace tandem
