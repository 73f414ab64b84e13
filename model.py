"""
A plain GPT decoder in one file, in the style of nanoGPT: token and
position embeddings, pre-norm transformer blocks (causal self-attention,
MLP), a final LayerNorm, and an output layer that shares its weights
with the token embedding. It knows nothing about the method of this
project: special tokens are just ids in its vocabulary.
"""
import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    block_size: int = 256  # context length
    vocab_size: int = 258  # real vocabulary: ids 0..vocab_size-1
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False  # in Linear and LayerNorm (GPT-2 had them)
    gelu: str = "none"  # "none": exact; "tanh": GPT-2's approximation

    @property
    def padded_vocab_size(self):
        # The embedding table is padded to a multiple of 64: matmuls of
        # such shapes run faster on GPUs. GPT-2's 50257 ids + 1 special
        # give 50304. Padding ids are never targets and never sampled.
        return (self.vocab_size + 63) // 64 * 64


# Model shapes are data. block_size is the default context; vocab_size
# comes from the tokenizer.
PRESETS = {
    # Fast enough for a laptop CPU: a training step well under a second.
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=256),
    # GPT-2 small's shape (12 x 768) with the paper's 2048 context:
    # about 126M parameters.
    "130m": dict(n_layer=12, n_head=12, n_embd=768, block_size=2048),
    # About 1.0B parameters. The paper says only that its one added
    # token embedding has 1024 numbers, which hints at d_model 1024; a
    # plain GPT that wide needs ~76 layers to reach 1B, an unusual shape
    # that keeps matmuls small (poor GPU efficiency). We take the common
    # 1B shape instead: d_model 2048, 18 layers, 16 heads of 128, i.e.
    # 50.3M parameters per block x 18 + 107M embeddings.
    "1b": dict(n_layer=18, n_head=16, n_embd=2048, block_size=2048),
}


def config_from_preset(preset, vocab_size, **overrides):
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: one of {sorted(PRESETS)}")
    shape = PRESETS[preset]
    return GPTConfig(**{**shape, "vocab_size": vocab_size, **overrides})


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x, cache=None, pos=0, mask=None):
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        if cache is not None:
            # A prompt at position 0, then one token at a time.
            assert T == 1 or pos == 0
            # KV cache: store this step's keys and values, attend over
            # everything stored so far.
            cache[0][:, :, pos:pos + T] = k
            cache[1][:, :, pos:pos + T] = v
            k = cache[0][:, :, :pos + T]
            v = cache[1][:, :, :pos + T]
        # Without a mask, causality only matters when several queries are
        # new (the prompt); a single new query may see every cached
        # position. A mask (left padding) says it all.
        causal = mask is None and T > 1
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           is_causal=causal,
                                           dropout_p=dropout)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.gelu = config.gelu

    def forward(self, x):
        x = F.gelu(self.c_fc(x), approximate=self.gelu)
        return self.dropout(self.c_proj(x))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, pos=0, mask=None):
        x = x + self.attn(self.ln_1(x), cache, pos, mask)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size,
                                 bias=False)
        # tied input and output embeddings
        self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # GPT-2: scale the init of projections into the residual stream
        # by 1/sqrt(2 * n_layer), so that the residual's variance does
        # not grow with depth (two additions per block).
        proj_std = 0.02 / math.sqrt(2 * config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=proj_std)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def device(self):
        return self.wte.weight.device

    def num_params(self, non_embedding=True):
        # Position embeddings do no matmul work, so they are left out
        # of FLOP counts; the token embedding stays in, since it is also
        # the output layer.
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding else n

    def forward(self, idx, targets=None, cache=None, pos=0,
                last_only=False, pad_lens=None):
        """idx (B, T) token ids -> logits (B, T, padded_vocab_size) and
        the mean cross-entropy over the targets that are not -1 (None
        without targets). cache (from new_cache) and pos: keys and
        values of earlier positions are kept there, and idx holds the
        positions pos..pos+T-1. last_only: the logits of the last
        position only (all that sampling needs; the output layer is the
        largest matmul). pad_lens (B,) long tensor: row b's first
        pad_lens[b] columns are left padding (generate)."""
        T = idx.size(1)
        assert pos + T <= self.config.block_size, "longer than the context"
        cols = torch.arange(pos, pos + T, device=idx.device)
        positions, mask = cols, None
        if pad_lens is not None:
            # Each row counts positions from its first real token, and a
            # query sees the real keys up to itself: padding changes
            # nothing for the real tokens. A padding query also sees its
            # own key, so that its (unused) output stays finite, not 0/0.
            positions = (cols - pad_lens[:, None]).clamp(min=0)
            keys = torch.arange(pos + T, device=idx.device)
            real = keys >= pad_lens[:, None, None]
            seen = real & (keys <= cols[:, None])
            mask = (seen | (keys == cols[:, None])).unsqueeze(1)
        x = self.drop(self.wte(idx) + self.wpe(positions))
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache[i], pos, mask)
        if last_only:
            x = x[:, -1:]
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            flat = logits.view(-1, logits.size(-1)).float()
            loss = F.cross_entropy(flat, targets.reshape(-1),
                                   ignore_index=-1)
        return logits, loss

    def new_cache(self, batch_size, max_len):
        """Empty key and value buffers for every layer: a list of n_layer
        pairs of (batch_size, n_head, max_len, head size) tensors,
        preallocated so that decoding never copies them."""
        c = self.config
        shape = (batch_size, c.n_head, max_len, c.n_embd // c.n_head)
        kw = dict(device=self.device, dtype=self.wte.weight.dtype)
        return [(torch.empty(shape, **kw), torch.empty(shape, **kw))
                for _ in range(c.n_layer)]

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None,
                 stop_ids=(), banned_ids=(), use_cache=True,
                 pad_lens=None):
        """Continue each row of idx by up to max_new_tokens tokens.

        idx: (B, T) long tensor of prompts; T + max_new_tokens must fit
        in block_size. temperature: float >= 0; 0 is greedy (argmax).
        top_k: None, or sample among the k most likely allowed ids.
        stop_ids, banned_ids: sets of ids. use_cache: decode with the
        KV cache (True) or re-run the whole sequence each step (the
        slow twin the cache is tested against). pad_lens: None, or B
        ints: row b's first pad_lens[b] columns are left padding (any
        ids), so that prompts of different lengths end in the last
        column; 0 <= pad_lens[b] < T.
        Returns a (B, T + n) long tensor: idx, then n new tokens per
        row, where n = max_new_tokens, or fewer when every row has
        produced a stop id (then decoding ends at once).

        What is graded:
        - greedy: each new token is the argmax of the logits of the
          last position over the allowed ids, exactly as a re-run of
          the whole sequence gives;
        - sampling: the next token is drawn (torch.multinomial, torch's
          global generator) from softmax(logits / temperature) over the
          allowed ids; with top_k, over the k allowed ids of the largest
          logits only (renormalized);
        - never a banned id, nor a padding id (>= vocab_size);
        - a row that has produced a stop id repeats it after that;
        - with pad_lens, every row gets the tokens it would get alone;
        - the KV cache (use_cache=True): the prompt goes through the
          model once (self(idx, cache=..., pos=0, ...)), then each call
          gets only the one new token of each row (pos = its position),
          so the positions processed grow linearly with n, not
          quadratically.
        """
        B, T = idx.shape
        assert T + max_new_tokens <= self.config.block_size
        if pad_lens is not None:
            pad_lens = torch.as_tensor(pad_lens, dtype=torch.long,
                                       device=idx.device)
            assert pad_lens.shape == (B,), "one pad_len per row"
            assert 0 <= pad_lens.min() <= pad_lens.max() < T
        V = self.config.padded_vocab_size
        banned = torch.zeros(V, dtype=torch.bool, device=idx.device)
        banned[self.config.vocab_size:] = True
        banned[list(banned_ids)] = True
        stops = torch.tensor(sorted(stop_ids), dtype=torch.long,
                             device=idx.device)
        done = torch.zeros(B, dtype=torch.bool, device=idx.device)
        cache = None
        if use_cache:
            cache = self.new_cache(B, T + max_new_tokens)
        x, pos = idx, 0
        for _ in range(max_new_tokens):
            logits, _ = self(x, cache=cache, pos=pos, last_only=True,
                             pad_lens=pad_lens)
            logits = logits[:, -1, :].float()
            logits = logits.masked_fill(banned, float("-inf"))
            if temperature == 0:
                nxt = logits.argmax(-1)
            else:
                logits = logits / temperature
                if top_k is not None:
                    k = min(top_k, logits.size(-1))
                    kth = torch.topk(logits, k).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                nxt = torch.multinomial(probs, 1).squeeze(1)
            # finished rows repeat their stop id
            nxt = torch.where(done, idx[:, -1], nxt)
            idx = torch.cat([idx, nxt[:, None]], dim=1)
            # checking stops waits for the GPU, so only when there are any
            if stop_ids:
                done |= torch.isin(nxt, stops)
                if done.all():
                    break
            if use_cache:
                x, pos = idx[:, -1:], idx.size(1) - 1
            else:
                x = idx
        return idx

    def configure_optimizers(self, weight_decay, learning_rate,
                             betas=(0.9, 0.95), device_type="cpu"):
        # Weight decay on matrices (matmul weights, embeddings) only;
        # never on gains and biases.
        params = [p for p in self.parameters() if p.requires_grad]
        matrices = [p for p in params if p.dim() >= 2]
        others = [p for p in params if p.dim() < 2]
        groups = [{"params": matrices, "weight_decay": weight_decay},
                  {"params": others, "weight_decay": 0.0}]
        can_fuse = "fused" in inspect.signature(torch.optim.AdamW).parameters
        fused = device_type == "cuda" and can_fuse
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas,
                                 **({"fused": True} if fused else {}))

    def flops_per_token(self, seq_len):
        """Training FLOPs per token (forward + backward), as in the PaLM
        paper's appendix B: 6 per parameter-token for the matmuls, plus
        attention's 12 * layers * width * seq_len."""
        c = self.config
        attention = 12 * c.n_layer * c.n_embd * seq_len
        return 6 * self.num_params() + attention

    def estimate_mfu(self, tokens_per_s, peak_flops, seq_len=None):
        """Model FLOPs utilization: achieved training FLOP/s over the
        accelerator's peak FLOP/s (pass the peak of the card and dtype
        you run on, measured or from its datasheet)."""
        seq_len = seq_len or self.config.block_size
        flops = self.flops_per_token(seq_len) * tokens_per_s
        return flops / peak_flops
