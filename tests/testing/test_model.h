// Tiny, seeded, randomly initialised models written to model directories (real tokenizer
// training, real safetensors), and the corpora they are trained on: for the tests that need a
// servable model — the end-to-end suites and the trainers'. Needs the LibTorch model libraries
// (tandem_testing); the torch-free helpers are in tests/testing/base/. Failures are test failures
// (EXPECT), not statuses.
#ifndef TANDEM_TESTS_TESTING_TEST_MODEL_H_
#define TANDEM_TESTS_TESTING_TEST_MODEL_H_

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

// The suites that include this header have long used these through it, as they did when it
// defined everything inline.
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "models/image_model.h"
#include "models/llama/llama.h"
#include "models/model_dir.h"
#include "models/text/tokenizer.h"
#include "tests/testing/base/files.h"
#include "tests/testing/base/tiny_configs.h"

namespace tandem::testing {

// Writes a few thousand words of deterministic English-like text (600 lines) to `path` and
// returns it.
std::string WriteCorpus(const std::string& path);

// Writes a text model directory `dir` (created; its corpus and tokenizer beside it) of `spec`'s
// sizes and seed, and returns its path.
std::string WriteTinyModel(const std::string& dir, const TinyModelSpec& spec = {});

// Writes a tiny seeded diffusion model (16x16 grey; its captions corpus and tokenizer beside it)
// to `dir` (created) and returns its path.
std::string WriteTinyImageModel(const std::string& dir, uint64_t seed = 11);

}  // namespace tandem::testing

#endif  // TANDEM_TESTS_TESTING_TEST_MODEL_H_
