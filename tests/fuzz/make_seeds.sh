#!/usr/bin/env bash
# Writes the fuzzers' seed files into corpus/ (committed, beside the inputs fuzzing runs added
# with -merge=1 and the regressions they found): small valid inputs of each format,
# from which libFuzzer mutates; the tokenizer seed is the tokenizer the request fuzzer trains.
# Needs protoc.
#   tests/fuzz/make_seeds.sh
set -euo pipefail
cd "$(dirname "$0")"
C=corpus
mkdir -p "$C"/{safetensors,png,checkpoint,dataset,tokenizer,config,generate_request}
le64() { printf "%016x" "$1" | sed 's/\(..\)/\1 /g' | awk '{for (i = 8; i >= 1; i--) printf "\\x%s", $i}'; }
safetensors() {  # safetensors FILE HEADER DATA
  printf "$(le64 ${#2})" > "$1"; printf '%s' "$2" >> "$1"; printf "$3" >> "$1"
}
safetensors $C/safetensors/f32 '{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}' '\x00\x00\x80\x3f\x00\x00\x00\x40'
safetensors $C/safetensors/two '{"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[1,2],"data_offsets":[0,4]},"b":{"dtype":"I64","shape":[],"data_offsets":[4,12]}}' '\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c'
safetensors $C/safetensors/empty '{}' ''
# PNG: 1x1 grey and 2x1 RGB.
printf '\x89\x50\x4e\x47\x0d\x0a\x1a\x0a\x00\x00\x00\x0d\x49\x48\x44\x52\x00\x00\x00\x01\x00\x00\x00\x01\x08\x00\x00\x00\x00\x3a\x7e\x9b\x55\x00\x00\x00\x0a\x49\x44\x41\x54\x78\x9c\x63\x68\x00\x00\x00\x82\x00\x81\x77\xcd\x72\xb6\x00\x00\x00\x00\x49\x45\x4e\x44\xae\x42\x60\x82' > $C/png/grey1x1
printf '\x89\x50\x4e\x47\x0d\x0a\x1a\x0a\x00\x00\x00\x0d\x49\x48\x44\x52\x00\x00\x00\x02\x00\x00\x00\x01\x08\x02\x00\x00\x00\x7b\x40\xe8\xdd\x00\x00\x00\x0f\x49\x44\x41\x54\x78\x9c\x63\xf8\xcf\xc0\xc0\xf0\x9f\x01\x00\x07\xff\x01\xff\x01\x7f\x89\xa7\x00\x00\x00\x00\x49\x45\x4e\x44\xae\x42\x60\x82' > $C/png/rgb2x1
printf '%s' '{"step": 3, "state": {"kind": "text", "seed": "1"}, "files": {"model.safetensors": {"bytes": 80, "crc32": 1}, "optimizer.safetensors": {"bytes": 80, "crc32": 2}}}' > $C/checkpoint/manifest
printf '%s' '{"step": 0, "files": {}}' > $C/checkpoint/empty
# dataset: the first byte picks the reader (0 IDX images, 1 IDX labels, 2 metadata.jsonl, 3 text).
printf '\x00\x00\x00\x08\x03\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x02\x01\x02\x03\x04' > $C/dataset/idx-images
printf '\x01\x00\x00\x08\x01\x00\x00\x00\x01\x03' > $C/dataset/idx-labels
printf '\x02{"file_name": "a.png", "text": "a grey square"}\n{"file_name": "a.png", "text": "again"}\n' > $C/dataset/metadata
printf '\x03The cat sleeps.\n%%\nThe dog runs.\n%%\n' > $C/dataset/fortunes
printf '\x03First paragraph.\n\nSecond \xc3\xa9 paragraph.\n' > $C/dataset/paragraphs
# config: the first byte picks the parser (0 llama, 1 diffusion, 2 job row, 3 job event, 4 tokens).
printf '\x00%s' '{"kind": "text", "architecture": "llama", "dim": 32, "hidden_dim": 96, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 300, "seq_len": 64, "norm_eps": 1e-5, "rope_theta": 10000.0, "tie_embeddings": false, "bos_id": 1, "eos_id": 2}' > $C/config/llama
printf '\x01%s' '{"kind": "image", "architecture": "unet-cross-attention", "image_size": 16, "channels": 1, "unet_widths": [8, 16], "res_blocks": 1, "attention_levels": [1], "attention_heads": 2, "groups": 4, "vocab_size": 64, "text_dim": 16, "text_layers": 1, "text_heads": 2, "text_seq_len": 8, "diffusion_steps": 100, "prediction": "eps", "default_steps": 20, "default_guidance": 3.0}' > $C/config/diffusion
printf '\x02%s' '{"id": "job-000001", "spec": {"name": "j", "kind": "text", "dataset": "f.txt", "hyper": {"steps": 10}, "owner": "alice"}, "state": "RUNNING", "created": 1700000000000000000, "latest": {"step": 3, "loss": 2.5}, "attempt": 1}' > $C/config/job
printf '\x03%s' '{"time": 1700000000000000000, "eval": {"step": 10, "loss": 1.5, "image_sample_png": "iVBORw0KGgo="}}' > $C/config/event
printf '\x04%s\n' '# clients' 'alice inference,train alice-secret-token-1234' 'root admin sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef' > $C/config/tokens
# generate_request: GenerateRequest messages, encoded by protoc from text.
P=../../proto
enc() { protoc --encode=tandem.v1.GenerateRequest -I "$P" "$P/tandem/v1/inference.proto" > "$1"; }
printf '%s\n' 'prompt: "the cat sat"' 'text { max_tokens: 8 temperature: 0.8 top_k: 5 top_p: 0.9 seed: 3 stop: "\n" include_token_ids: true }' 'request_id: "r1"' 'priority: 3' | enc $C/generate_request/text
printf '%s\n' 'model: "image"' 'prompt: "a bright square on a dark ground"' 'image { steps: 4 guidance_scale: 3 num_images: 2 negative_prompt: "dark" sampler: SAMPLER_DDIM eta: 0.5 preview_every: 1 seed: 9 }' | enc $C/generate_request/image
printf '%s\n' 'prompt: "x"' 'text { }' | enc $C/generate_request/minimal
echo "seeds written: $(find "$C" -type f | wc -l) files"
