// `tandem import` and `tandem export`: converting model files on this machine, no server
// involved (models/llama2c_model.h does the work; torch-free). Each returns the process exit
// code: 0 on success, 1 when the conversion failed (a missing, corrupt or unsuitable file), 2 for
// bad arguments. Errors are one line on stderr: "tandem: CODE: message".
#ifndef TANDEM_CLIENT_MODEL_FILE_COMMANDS_H_
#define TANDEM_CLIENT_MODEL_FILE_COMMANDS_H_

#include <string>

namespace tandem::client {

struct ImportOptions {
  std::string format;      // "llama2c"
  std::string checkpoint;  // model.bin (any llama2.c version)
  std::string tokenizer;   // tokenizer.bin
  std::string out_dir;     // the model directory to create
};

struct ExportOptions {
  std::string format;   // "llama2c"
  std::string model;    // a model directory
  std::string out_dir;  // receives model.bin and tokenizer.bin
  int version = 0;      // llama2.c checkpoint version: 0 (run.c), 1, 2 (Q8_0, runq.c)
  int group_size = 0;   // version 2; 0: the default rule
};

int Import(const ImportOptions& options);
int Export(const ExportOptions& options);

}  // namespace tandem::client

#endif  // TANDEM_CLIENT_MODEL_FILE_COMMANDS_H_
