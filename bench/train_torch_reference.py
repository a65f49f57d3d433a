#!/usr/bin/python3
"""Training speed of tandem's Llama written in plain PyTorch from Python: the reference that
tandem-train-bench's tokens/s is compared with (same LibTorch, threads, model, batch and
sequence length).

The model is tandem's LlamaTrainNet (models/llama/llama_train_net.cc) in its ATen formulation
(on the CPU tandem fuses attention, RMSNorm, SwiGLU and RoPE into kernels of its own), which is
llama2.c's model.py architecture: token embedding; per layer RMSNorm, wq/wk/wv, rotary
embedding on interleaved pairs, grouped-query causal attention, wo, RMSNorm, SwiGLU (w1, w3,
w2); final RMSNorm and the output projection (untied unless --tie_embeddings). Initialised
as tandem does (normal 0.02; wo and w2 scaled by 1/sqrt(2 * layers); norms at 1). One step:
forward, next-token cross-entropy, backward, global-norm clipping at 1, AdamW (betas 0.9 and
0.95, decoupled weight decay on the matrices only). The tokens are uniform random ids: the
speed of a step does not depend on them.

Use Debian's interpreter, which has python3-torch (the same libtorch 1.13 tandem links):
  /usr/bin/python3 bench/train_torch_reference.py --threads=2 --steps=60
and compare its tokens/s with
  build/bin/tandem-train-bench --kind=text --dataset=run/data/fortunes.txt --threads=2 \\
      --vocab_size=1024 --dim=192 --layers=4 --heads=6 --kv_heads=3 --seq_len=128 \\
      --batch_size=16 --minutes=1
"""
import argparse
import math
import time

import torch
import torch.nn.functional as F


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--vocab_size", type=int, default=1024)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--kv_heads", type=int, default=3)
    p.add_argument("--hidden_dim", type=int, default=0, help="0: llama2.c's rule")
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--tie_embeddings", action="store_true")
    p.add_argument("--steps", type=int, default=60, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight_decay", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args()


def hidden_dim(dim):
    # llama2.c's rule, as LlamaConfig::Normalize: 4 * dim * 2 / 3, rounded up to 32.
    h = int(2 * (4 * dim) / 3)
    return 32 * ((h + 31) // 32)


def make_params(a):
    hd = a.dim // a.heads
    hidden = a.hidden_dim or hidden_dim(a.dim)
    out_std = 0.02 / math.sqrt(2 * a.layers)
    g = torch.Generator().manual_seed(a.seed)

    def normal(shape, std):
        return (torch.randn(shape, generator=g) * std).requires_grad_(True)

    p = {"tok_embeddings.weight": normal((a.vocab_size, a.dim), 0.02)}
    for l in range(a.layers):
        pre = f"layers.{l}."
        p[pre + "attention_norm.weight"] = torch.ones(a.dim, requires_grad=True)
        p[pre + "attention.wq.weight"] = normal((a.heads * hd, a.dim), 0.02)
        p[pre + "attention.wk.weight"] = normal((a.kv_heads * hd, a.dim), 0.02)
        p[pre + "attention.wv.weight"] = normal((a.kv_heads * hd, a.dim), 0.02)
        p[pre + "attention.wo.weight"] = normal((a.dim, a.heads * hd), out_std)
        p[pre + "ffn_norm.weight"] = torch.ones(a.dim, requires_grad=True)
        p[pre + "feed_forward.w1.weight"] = normal((hidden, a.dim), 0.02)
        p[pre + "feed_forward.w2.weight"] = normal((a.dim, hidden), out_std)
        p[pre + "feed_forward.w3.weight"] = normal((hidden, a.dim), 0.02)
    p["norm.weight"] = torch.ones(a.dim, requires_grad=True)
    if not a.tie_embeddings:
        p["output.weight"] = normal((a.vocab_size, a.dim), 0.02)
    return p


def rms_norm(x, gain, eps=1e-5):
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * gain


def rope(x, cos, sin):
    b, t, h, hd = x.shape
    pairs = x.reshape(b, t, h, hd // 2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    c, s = cos.view(1, t, 1, hd // 2), sin.view(1, t, 1, hd // 2)
    return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], -1).reshape(b, t, h, hd)


def forward(p, a, tokens, cos, sin, mask):
    b, t = tokens.shape
    hd, h, kv = a.dim // a.heads, a.heads, a.kv_heads
    g = h // kv
    scale = 1.0 / math.sqrt(hd)
    x = F.embedding(tokens, p["tok_embeddings.weight"])
    for l in range(a.layers):
        pre = f"layers.{l}."
        hn = rms_norm(x, p[pre + "attention_norm.weight"])
        q = F.linear(hn, p[pre + "attention.wq.weight"]).view(b, t, h, hd)
        k = F.linear(hn, p[pre + "attention.wk.weight"]).view(b, t, kv, hd)
        v = F.linear(hn, p[pre + "attention.wv.weight"]).view(b, t, kv, hd)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        qg = q.view(b, t, kv, g, hd).permute(0, 2, 3, 1, 4).reshape(b, kv, g * t, hd)
        scores = torch.matmul(qg, k.permute(0, 2, 3, 1)).mul(scale).view(b, kv, g, t, t) + mask
        probs = torch.softmax(scores, -1).view(b, kv, g * t, t)
        att = torch.matmul(probs, v.permute(0, 2, 1, 3))
        att = att.view(b, kv, g, t, hd).permute(0, 3, 1, 2, 4).reshape(b, t, h * hd)
        x = x + F.linear(att, p[pre + "attention.wo.weight"])
        hn = rms_norm(x, p[pre + "ffn_norm.weight"])
        gate = F.silu(F.linear(hn, p[pre + "feed_forward.w1.weight"]))
        up = F.linear(hn, p[pre + "feed_forward.w3.weight"])
        x = x + F.linear(gate * up, p[pre + "feed_forward.w2.weight"])
    x = rms_norm(x, p["norm.weight"])
    out = p["tok_embeddings.weight"] if a.tie_embeddings else p["output.weight"]
    return F.linear(x, out)


def main():
    a = parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    p = make_params(a)
    hd = a.dim // a.heads
    inv_freq = 10000.0 ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    angle = torch.outer(torch.arange(a.seq_len, dtype=torch.float64), inv_freq)
    cos, sin = angle.cos().float(), angle.sin().float()
    mask = torch.full((a.seq_len, a.seq_len), float("-inf")).triu(1)
    decay = [v for k, v in p.items() if v.dim() == 2 and k != "tok_embeddings.weight"]
    no_decay = [v for k, v in p.items() if v.dim() != 2 or k == "tok_embeddings.weight"]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": a.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    params = list(p.values())
    n_params = sum(v.numel() for v in params)
    tokens_per_step = a.batch_size * a.seq_len

    def step():
        data = torch.randint(0, a.vocab_size, (a.batch_size, a.seq_len + 1))
        logits = forward(p, a, data[:, :-1], cos, sin, mask)
        loss = F.cross_entropy(logits.reshape(-1, a.vocab_size), data[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    for _ in range(a.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    seconds = time.perf_counter() - t0
    print(f"pytorch {torch.__version__}, {torch.get_num_threads()} threads: {n_params} parameters, "
          f"batch {a.batch_size} x {a.seq_len} tokens")
    print(f"trained {seconds:.1f} s: {a.steps} steps, {a.steps * tokens_per_step / seconds:.0f} "
          f"tokens/s, last loss {loss:.4f}")


if __name__ == "__main__":
    main()
