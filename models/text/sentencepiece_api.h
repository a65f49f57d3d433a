/* The C interface of libtandem_sentencepiece, the one module that links SentencePiece.
 *
 * Why a separate module: Debian's libsentencepiece bundles its own protobuf (3.14) and exports
 * those symbols. In a process that also loads libprotobuf 3.21 (gRPC, LibTorch) one of the two
 * crashes at start-up, whichever is loaded first. tokenizer.cc therefore dlopen()s this module
 * with RTLD_LOCAL | RTLD_DEEPBIND: SentencePiece binds to its own protobuf, and nothing else in the
 * process sees it. Buffers returned here are malloc'd; release them with free_buf. */
#ifndef TANDEM_MODELS_TEXT_SENTENCEPIECE_API_H_
#define TANDEM_MODELS_TEXT_SENTENCEPIECE_API_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TANDEM_SENTENCEPIECE_API_VERSION 2

typedef struct tandem_spm_api {
  int version;
  /* Returns a processor, or NULL with *code (absl/SentencePiece status code) and *err set. */
  void* (*load)(const char* path, int* code, char** err);
  void* (*load_serialized)(const char* data, size_t n, int* code, char** err);
  void (*destroy)(void* sp);
  /* 0 on success; *ids malloc'd. */
  int (*encode)(void* sp, const char* text, size_t n, int32_t** ids, size_t* count);
  /* malloc'd UTF-8, length in *len; NULL on failure. */
  char* (*decode)(void* sp, const int32_t* ids, size_t n, size_t* len);
  char* (*id_to_piece)(void* sp, int32_t id, size_t* len);
  float (*score)(void* sp, int32_t id);
  int (*piece_size)(void* sp);
  int (*bos_id)(void* sp);
  int (*eos_id)(void* sp);
  /* Control, unknown or unused piece: nothing a user should see. */
  int (*is_special)(void* sp, int32_t id);
  char* (*serialized)(void* sp, size_t* len);
  /* Trains from key=value arguments; returns a status code (0 ok), the model in *model. */
  int (*train)(const char* const* keys, const char* const* values, size_t n, unsigned seed,
               char** model, size_t* model_len, char** err);
  void (*free_buf)(void* p);
} tandem_spm_api;

const tandem_spm_api* tandem_sentencepiece_api(void);

#ifdef __cplusplus
}
#endif

#endif /* TANDEM_MODELS_TEXT_SENTENCEPIECE_API_H_ */
