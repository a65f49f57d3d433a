#include "tests/testing/base/run_c_reference.h"

#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "tests/testing/base/files.h"

namespace tandem::testing {
namespace {

void rmsnorm(float* o, const float* x, const float* weight, int size) {
  float ss = 0.0f;
  for (int j = 0; j < size; j++) ss += x[j] * x[j];
  ss /= size;
  ss += 1e-5f;
  ss = 1.0f / sqrtf(ss);
  for (int j = 0; j < size; j++) o[j] = weight[j] * (ss * x[j]);
}

void softmax(float* x, int size) {
  float max_val = x[0];
  for (int i = 1; i < size; i++) {
    if (x[i] > max_val) max_val = x[i];
  }
  float sum = 0.0f;
  for (int i = 0; i < size; i++) {
    x[i] = expf(x[i] - max_val);
    sum += x[i];
  }
  for (int i = 0; i < size; i++) x[i] /= sum;
}

// W (d,n) @ x (n,) -> xout (d,)
void matmul(float* xout, const float* x, const float* w, int n, int d) {
  for (int i = 0; i < d; i++) {
    float val = 0.0f;
    for (int j = 0; j < n; j++) val += w[i * n + j] * x[j];
    xout[i] = val;
  }
}

int sample_argmax(const float* probabilities, int n) {
  int max_i = 0;
  float max_p = probabilities[0];
  for (int i = 1; i < n; i++) {
    if (probabilities[i] > max_p) {
      max_i = i;
      max_p = probabilities[i];
    }
  }
  return max_i;
}

}  // namespace

// ---- Transformer ---------------------------------------------------------------------------

RunCTransformer::RunCTransformer(const std::string& checkpoint_path) {
  const std::string bytes = ReadAll(checkpoint_path);
  std::memcpy(&p_, bytes.data(), sizeof(p_));
  const bool shared_weights = p_.vocab_size > 0;
  p_.vocab_size = std::abs(p_.vocab_size);
  data_.resize((bytes.size() - sizeof(p_)) / sizeof(float));
  std::memcpy(data_.data(), bytes.data() + sizeof(p_), data_.size() * sizeof(float));
  // memory_map_weights
  const int head_size = p_.dim / p_.n_heads;
  const uint64_t n_layers = p_.n_layers;
  float* ptr = data_.data();
  token_embedding_table_ = ptr;
  ptr += p_.vocab_size * p_.dim;
  rms_att_weight_ = ptr;
  ptr += n_layers * p_.dim;
  wq_ = ptr;
  ptr += n_layers * p_.dim * (p_.n_heads * head_size);
  wk_ = ptr;
  ptr += n_layers * p_.dim * (p_.n_kv_heads * head_size);
  wv_ = ptr;
  ptr += n_layers * p_.dim * (p_.n_kv_heads * head_size);
  wo_ = ptr;
  ptr += n_layers * (p_.n_heads * head_size) * p_.dim;
  rms_ffn_weight_ = ptr;
  ptr += n_layers * p_.dim;
  w1_ = ptr;
  ptr += n_layers * p_.dim * p_.hidden_dim;
  w2_ = ptr;
  ptr += n_layers * p_.hidden_dim * p_.dim;
  w3_ = ptr;
  ptr += n_layers * p_.dim * p_.hidden_dim;
  rms_final_weight_ = ptr;
  ptr += p_.dim;
  ptr += p_.seq_len * head_size / 2;  // freq_cis_real
  ptr += p_.seq_len * head_size / 2;  // freq_cis_imag
  wcls_ = shared_weights ? token_embedding_table_ : ptr;
  // malloc_run_state
  const int kv_dim = (p_.dim * p_.n_kv_heads) / p_.n_heads;
  x_.resize(p_.dim);
  xb_.resize(p_.dim);
  xb2_.resize(p_.dim);
  hb_.resize(p_.hidden_dim);
  hb2_.resize(p_.hidden_dim);
  q_.resize(p_.dim);
  key_cache_.resize(n_layers * p_.seq_len * kv_dim);
  value_cache_.resize(n_layers * p_.seq_len * kv_dim);
  att_.resize(p_.n_heads * p_.seq_len);
  logits_.resize(p_.vocab_size);
}

const std::vector<float>& RunCTransformer::Forward(int token, int pos) {
  const RunCConfig* p = &p_;
  float* x = x_.data();
  const int dim = p->dim;
  const int kv_dim = (p->dim * p->n_kv_heads) / p->n_heads;
  const int kv_mul = p->n_heads / p->n_kv_heads;
  const int hidden_dim = p->hidden_dim;
  const int head_size = dim / p->n_heads;
  std::memcpy(x, token_embedding_table_ + token * dim, dim * sizeof(*x));
  for (uint64_t l = 0; l < static_cast<uint64_t>(p->n_layers); l++) {
    rmsnorm(xb_.data(), x, rms_att_weight_ + l * dim, dim);
    const int loff = l * p->seq_len * kv_dim;
    float* k = key_cache_.data() + loff + pos * kv_dim;
    float* v = value_cache_.data() + loff + pos * kv_dim;
    matmul(q_.data(), xb_.data(), wq_ + l * dim * dim, dim, dim);
    matmul(k, xb_.data(), wk_ + l * dim * kv_dim, dim, kv_dim);
    matmul(v, xb_.data(), wv_ + l * dim * kv_dim, dim, kv_dim);
    // RoPE relative positional encoding: complex-valued rotate q and k in each head
    for (int i = 0; i < dim; i += 2) {
      const int head_dim = i % head_size;
      const float freq = 1.0f / powf(10000.0f, head_dim / static_cast<float>(head_size));
      const float val = pos * freq;
      const float fcr = cosf(val);
      const float fci = sinf(val);
      const int rotn = i < kv_dim ? 2 : 1;
      for (int r = 0; r < rotn; r++) {
        float* vec = r == 0 ? q_.data() : k;
        const float v0 = vec[i];
        const float v1 = vec[i + 1];
        vec[i] = v0 * fcr - v1 * fci;
        vec[i + 1] = v0 * fci + v1 * fcr;
      }
    }
    // multihead attention
    for (int h = 0; h < p->n_heads; h++) {
      const float* q = q_.data() + h * head_size;
      float* att = att_.data() + h * p->seq_len;
      for (int t = 0; t <= pos; t++) {
        const float* kt = key_cache_.data() + loff + t * kv_dim + (h / kv_mul) * head_size;
        float score = 0.0f;
        for (int i = 0; i < head_size; i++) score += q[i] * kt[i];
        score /= sqrtf(head_size);
        att[t] = score;
      }
      softmax(att, pos + 1);
      float* xb = xb_.data() + h * head_size;
      std::memset(xb, 0, head_size * sizeof(float));
      for (int t = 0; t <= pos; t++) {
        const float* vt = value_cache_.data() + loff + t * kv_dim + (h / kv_mul) * head_size;
        const float a = att[t];
        for (int i = 0; i < head_size; i++) xb[i] += a * vt[i];
      }
    }
    matmul(xb2_.data(), xb_.data(), wo_ + l * dim * dim, dim, dim);
    for (int i = 0; i < dim; i++) x[i] += xb2_[i];
    rmsnorm(xb_.data(), x, rms_ffn_weight_ + l * dim, dim);
    matmul(hb_.data(), xb_.data(), w1_ + l * dim * hidden_dim, dim, hidden_dim);
    matmul(hb2_.data(), xb_.data(), w3_ + l * dim * hidden_dim, dim, hidden_dim);
    // SwiGLU non-linearity
    for (int i = 0; i < hidden_dim; i++) {
      float val = hb_[i];
      val *= (1.0f / (1.0f + expf(-val)));
      val *= hb2_[i];
      hb_[i] = val;
    }
    matmul(xb_.data(), hb_.data(), w2_ + l * dim * hidden_dim, hidden_dim, dim);
    for (int i = 0; i < dim; i++) x[i] += xb_[i];
  }
  rmsnorm(x, x, rms_final_weight_, dim);
  matmul(logits_.data(), x, wcls_, p->dim, p->vocab_size);
  return logits_;
}

// ---- Tokenizer -----------------------------------------------------------------------------

namespace {

int compare_tokens(const void* a, const void* b) {
  return std::strcmp(static_cast<const char* const*>(a)[0], static_cast<const char* const*>(b)[0]);
}

}  // namespace

RunCTokenizer::RunCTokenizer(const std::string& bytes, int vocab_size) : vocab_size_(vocab_size) {
  vocab_.resize(vocab_size);
  vocab_scores_.resize(vocab_size);
  for (int i = 0; i < 256; i++) {
    byte_pieces_[i * 2] = static_cast<unsigned char>(i);
    byte_pieces_[i * 2 + 1] = '\0';
  }
  size_t at = 0;
  auto read = [&](void* out, size_t n) {
    if (at + n <= bytes.size()) std::memcpy(out, bytes.data() + at, n);
    at += n;
  };
  read(&max_token_length_, sizeof(int));
  int len = 0;
  for (int i = 0; i < vocab_size; i++) {
    read(&vocab_scores_[i], sizeof(float));
    read(&len, sizeof(int));
    vocab_[i] = static_cast<char*>(std::malloc(len + 1));
    read(vocab_[i], len);
    vocab_[i][len] = '\0';
  }
}

RunCTokenizer::~RunCTokenizer() {
  for (char* p : vocab_) std::free(p);
}

const char* RunCTokenizer::Decode(int prev_token, int token) {
  const char* piece = vocab_[token];
  // following BOS (1) token, sentencepiece decoder strips any leading whitespace (see PR #89)
  if (prev_token == 1 && piece[0] == ' ') piece++;
  unsigned char byte_val;
  if (std::sscanf(piece, "<0x%02hhX>", &byte_val) == 1) {
    piece = reinterpret_cast<const char*>(byte_pieces_) + byte_val * 2;
  }
  return piece;
}

std::string RunCTokenizer::SafePrintf(const char* piece) {
  if (piece == nullptr) return "";
  if (piece[0] == '\0') return "";
  if (piece[1] == '\0') {
    const unsigned char byte_val = piece[0];
    if (!(std::isprint(byte_val) || std::isspace(byte_val))) return "";
  }
  return piece;
}

std::vector<int> RunCTokenizer::Encode(const std::string& input, bool bos, bool eos) {
  const char* text = input.c_str();
  if (sorted_vocab_.empty()) {
    sorted_vocab_.resize(vocab_size_);
    for (int i = 0; i < vocab_size_; i++) {
      sorted_vocab_[i].str = vocab_[i];
      sorted_vocab_[i].id = i;
    }
    std::qsort(sorted_vocab_.data(), vocab_size_, sizeof(TokenIndex), compare_tokens);
  }
  auto str_lookup = [&](char* str) {
    TokenIndex tok = {str, 0};
    auto* res = static_cast<TokenIndex*>(
        std::bsearch(&tok, sorted_vocab_.data(), vocab_size_, sizeof(TokenIndex), compare_tokens));
    return res != nullptr ? res->id : -1;
  };
  std::vector<char> str_buffer(max_token_length_ * 2 + 1 + 2);
  size_t str_len = 0;
  std::vector<int> tokens(input.size() + 3);
  int n_tokens = 0;
  if (bos) tokens[n_tokens++] = 1;
  if (text[0] != '\0') {
    char space[] = " ";
    tokens[n_tokens++] = str_lookup(space);
  }
  for (const char* c = text; *c != '\0'; c++) {
    if ((*c & 0xC0) != 0x80) str_len = 0;
    str_buffer[str_len++] = *c;
    str_buffer[str_len] = '\0';
    if ((*(c + 1) & 0xC0) == 0x80 && str_len < 4) continue;
    const int id = str_lookup(str_buffer.data());
    if (id != -1) {
      tokens[n_tokens++] = id;
    } else {
      for (size_t i = 0; i < str_len; i++) {
        tokens[n_tokens++] = static_cast<unsigned char>(str_buffer[i]) + 3;
      }
    }
    str_len = 0;
  }
  while (true) {
    float best_score = -1e10;
    int best_id = -1;
    int best_idx = -1;
    for (int i = 0; i < (n_tokens - 1); i++) {
      std::snprintf(str_buffer.data(), str_buffer.size(), "%s%s", vocab_[tokens[i]],
                    vocab_[tokens[i + 1]]);
      const int id = str_lookup(str_buffer.data());
      if (id != -1 && vocab_scores_[id] > best_score) {
        best_score = vocab_scores_[id];
        best_id = id;
        best_idx = i;
      }
    }
    if (best_idx == -1) break;
    tokens[best_idx] = best_id;
    for (int i = best_idx + 1; i < (n_tokens - 1); i++) tokens[i] = tokens[i + 1];
    n_tokens--;
  }
  if (eos) tokens[n_tokens++] = 2;
  tokens.resize(n_tokens);
  return tokens;
}

// ---- generate ------------------------------------------------------------------------------

RunCOutput RunCGenerate(RunCTransformer& transformer, RunCTokenizer& tokenizer,
                        const std::string& prompt, int steps) {
  RunCOutput out;
  const std::vector<int> prompt_tokens = tokenizer.Encode(prompt, true, false);
  const int num_prompt_tokens = static_cast<int>(prompt_tokens.size());
  out.tokens.push_back(prompt_tokens[0]);
  int next;
  int token = prompt_tokens[0];
  int pos = 0;
  while (pos < steps) {
    const std::vector<float>& logits = transformer.Forward(token, pos);
    if (pos < num_prompt_tokens - 1) {
      next = prompt_tokens[pos + 1];
    } else {
      next = sample_argmax(logits.data(), transformer.config().vocab_size);
    }
    pos++;
    if (next == 1) break;
    const char* piece = tokenizer.Decode(token, next);
    out.text += RunCTokenizer::SafePrintf(piece);
    out.pieces += piece;
    out.tokens.push_back(next);
    token = next;
  }
  out.text += "\n";
  return out;
}

}  // namespace tandem::testing
