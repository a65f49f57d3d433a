// Training checkpoints on disk. A checkpoint is a folder <dir>/step-<10-digit step>/ holding
//   model.safetensors      the parameters (safetensors names of the model)
//   optimizer.safetensors  the optimizer state (AdamW moments; Muon momentum)
//   manifest.json          {"step", "state": {...small values: seed, data position...},
//                           "files": {name: {"bytes", "crc32"}}}
// It is written into a temporary sibling folder, every file fsynced, then renamed into place and
// the parent fsynced: a crash leaves either the whole checkpoint or none. Loading verifies sizes
// and CRC-32s, so a corrupt or truncated checkpoint is detected and the previous good one is used.
// Torch-free.
#ifndef TANDEM_TRAINER_CHECKPOINT_H_
#define TANDEM_TRAINER_CHECKPOINT_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/formats/safetensors.h"

namespace tandem {

struct Checkpoint {
  int64_t step = 0;
  TensorMap model;
  TensorMap optimizer;
  std::map<std::string, std::string> state;
};

// Writes `ckpt` as <dir>/step-NNNNNNNNNN (creating `dir`); replaces an existing one of that step.
absl::Status WriteCheckpoint(const std::string& dir, const Checkpoint& ckpt);

// Steps of the checkpoint folders in `dir` (complete or not), ascending.
std::vector<int64_t> ListCheckpointSteps(const std::string& dir);

// Reads and verifies one checkpoint folder. DATA_LOSS when a file is missing, truncated or fails
// its checksum.
absl::StatusOr<Checkpoint> ReadCheckpoint(const std::string& folder);

// The newest checkpoint of `dir` that verifies; each one skipped is described in `*skipped`
// (may be null). NOT_FOUND when there is none.
absl::StatusOr<Checkpoint> LoadLatestCheckpoint(const std::string& dir,
                                                std::vector<std::string>* skipped);

// Deletes all but the newest `keep` (>= 1) checkpoints, and leftover temporary folders.
absl::Status PruneCheckpoints(const std::string& dir, int keep);

}  // namespace tandem

#endif  // TANDEM_TRAINER_CHECKPOINT_H_
