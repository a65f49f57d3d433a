// The demo's training recipes (scripts/recipes/*.json) as the benchmarks that train "the demo's
// job" read them: the spec, or a message on stderr and exit status 2 (a benchmark without its
// recipe has nothing to measure).
#ifndef TANDEM_BENCH_RECIPE_H_
#define TANDEM_BENCH_RECIPE_H_

#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/status/statusor.h"
#include "client/train_format.h"
#include "tandem/v1/training.pb.h"

namespace tandem::bench {

inline tandem::v1::TrainJobSpec ReadRecipeOrExit(const char* program, const std::string& file) {
  absl::StatusOr<tandem::v1::TrainJobSpec> recipe = tandem::client::ReadTrainJobSpecFile(file);
  if (!recipe.ok()) {
    std::fprintf(stderr, "%s: %s\n", program, recipe.status().ToString().c_str());
    std::exit(2);
  }
  return *std::move(recipe);
}

}  // namespace tandem::bench

#endif  // TANDEM_BENCH_RECIPE_H_
