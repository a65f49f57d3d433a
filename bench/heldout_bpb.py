#!/usr/bin/python3
"""Held-out bits per byte of a tandem text model, computed independently of tandem's C++: the
model directory's weights (model.safetensors, read here by hand) and SentencePiece tokenizer
run through the plain-PyTorch Llama of bench/train_torch_reference.py.

The held-out text is what a text job holds out: the corpus cut into documents at lines holding a
single "%" (the fortune format), every k-th document (k = 10: the 10th, 20th, ...). The bits are
the nats of every held-out token, each document encoded as BOS + its ids and ended by the next
document's BOS (the last one by nothing), over the documents' UTF-8 bytes. Two ways to give the
tokens their context:
  documents  each document from its own BOS (a document longer than the context in windows whose
             later half is scored: every token has at least half the context of its document),
             the same windows as trainer/data/text_dataset.h's HeldOutWindows, written again
             here on purpose so that the check does not share tandem's code;
  stream     the documents concatenated, cut into windows of seq_len + 1 tokens at stride
             seq_len (a window's first token has no context; a cut falls inside a document).
tandem's jobs report the first since 2026-12-07 (earlier sessions' figures are the second).

  /usr/bin/python3 bench/heldout_bpb.py --model=run/models/fortunes --corpus=run/data/fortunes.txt
"""
import argparse
import json
import math
import os
import struct
import sys

import sentencepiece
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_torch_reference as ref  # noqa: E402  (the Llama forward)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[base + lo:base + hi]), dtype=dtypes[info["dtype"]])
        out[name] = t.reshape(info["shape"]).float()
    return out


def heldout_documents(corpus, every):
    docs, cur = [], []
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            if line.rstrip("\r\n") == "%":
                docs.append("".join(cur))
                cur = []
            else:
                cur.append(line)
    if cur:
        docs.append("".join(cur))
    docs = [d for d in docs if d.strip()]
    return [d for i, d in enumerate(docs) if (i + 1) % every == 0]


def windows_documents(docs_ids, t):
    """(tokens, first scored target) per window; every document's targets scored once."""
    out = []
    for ids in docs_ids:  # ids: BOS + document + the next BOS
        if len(ids) <= t + 1:
            out.append((ids, 0))
            continue
        out.append((ids[:t + 1], 0))
        scored = t  # targets 0..t-1 of the document done
        while scored < len(ids) - 1:
            end = min(len(ids) - 1, scored + t // 2)  # score targets [scored, end)
            start = end - t
            out.append((ids[start:end + 1], scored - start))
            scored = end
    return out


def windows_stream(docs_ids, t):
    stream = [i for ids in docs_ids[:-1] for i in ids[:-1]] + docs_ids[-1]  # as a job packs them
    return [(stream[s:s + t + 1], 0) for s in range(0, len(stream) - 1, t)]


def nats(p, a, windows, rows):
    total = 0.0
    windows = sorted(windows, key=lambda w: len(w[0]))
    hd = a.dim // a.heads
    inv_freq = a.rope_theta ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    for g in range(0, len(windows), rows):
        group = windows[g:g + rows]
        t = max(len(w[0]) for w in group) - 1
        inputs = torch.zeros(len(group), t, dtype=torch.long)
        targets = torch.full((len(group), t), -100, dtype=torch.long)
        for r, (ids, first) in enumerate(group):
            n = len(ids) - 1
            inputs[r, :n] = torch.tensor(ids[:-1])
            targets[r, first:n] = torch.tensor(ids[1 + first:])
        angle = torch.outer(torch.arange(t, dtype=torch.float64), inv_freq)
        mask = torch.full((t, t), float("-inf")).triu(1)
        with torch.no_grad():
            logits = ref.forward(p, a, inputs, angle.cos().float(), angle.sin().float(), mask)
            total += F.cross_entropy(logits.reshape(-1, a.vocab_size), targets.reshape(-1),
                                     ignore_index=-100, reduction="sum").item()
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a tandem text model directory")
    ap.add_argument("--corpus", required=True, help="the fortune-format corpus it trained on")
    ap.add_argument("--every", type=int, default=10, help="every k-th document is held out")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=16, help="windows in one forward")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with open(os.path.join(args.model, "config.json")) as f:
        c = json.load(f)
    a = argparse.Namespace(dim=c["dim"], heads=c["n_heads"], kv_heads=c.get("n_kv_heads") or
                           c["n_heads"], layers=c["n_layers"], vocab_size=c["vocab_size"],
                           tie_embeddings=c.get("tie_embeddings", False),
                           rope_theta=c.get("rope_theta", 10000.0))
    if abs(c.get("norm_eps", 1e-5) - 1e-5) > 1e-12:
        sys.exit("heldout_bpb: only norm_eps 1e-5 (the forward's) is supported")
    p = read_safetensors(os.path.join(args.model, "model.safetensors"))
    sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(args.model,
                                                                      "tokenizer.model"))
    bos = c.get("bos_id", 1)
    docs = heldout_documents(args.corpus, args.every)
    ids = [[bos] + sp.encode(d) for d in docs]
    # Each document ended by the next one's BOS; the last has none after it (as a job packs them).
    docs_ids = [ids[i] + ([ids[i + 1][0]] if i + 1 < len(ids) else []) for i in range(len(ids))]
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    t = c["seq_len"]
    for name, windows in (("documents", windows_documents(docs_ids, t)),
                          ("stream", windows_stream(docs_ids, t))):
        bits = nats(p, a, windows, args.rows) / math.log(2)
        print(f"{name}: {bits / n_bytes:.4f} bits per byte ({len(docs)} documents, {n_bytes} "
              f"bytes, {len(windows)} windows of up to {t + 1} tokens)")


if __name__ == "__main__":
    main()
