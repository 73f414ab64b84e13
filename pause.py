"""
The paper in code: Goyal et al., "Think before you speak: Training Language Models With Pause
Tokens" (ICLR 2024). Everything the paper adds to ordinary language-model training lives here, as
pure functions on token tensors. The model (model.py) is a plain GPT; it never hears of pauses.

    pause-pretraining (PausePT)   num_pretrain_pauses -> insert_pauses -> pause_targets
    pause-finetuning  (PauseFT)   finetune_example   (M_ft pauses after the prompt, loss on answer)
    pause-inference               pause_generate     (M_inf pauses after the prompt, pause banned)

IGNORE = -1 marks a target that carries no loss (the cross-entropy's ignore_index in model.py).
"""
import torch

IGNORE = -1


def _check_num_pauses(num_pauses):
    if not isinstance(num_pauses, int) or num_pauses < 0:
        raise ValueError("num_pauses must be an integer >= 0 (0 means no pauses), "
                         f"got {num_pauses!r}")


def _check_pause_id(pause_id, vocab_size=None):
    outside = vocab_size is not None and pause_id >= vocab_size
    if not isinstance(pause_id, int) or pause_id < 0 or outside:
        allowed = f"0..{vocab_size - 1}" if vocab_size is not None else "a non-negative integer"
        raise ValueError(f"pause_id {pause_id!r} is outside the vocabulary; allowed: {allowed} "
                         "(get it from the tokenizer: get_tokenizer(name).pause_id)")


def num_pretrain_pauses(pause_frac, seq_len):
    """M_pt for pause-pretraining: pause_frac of the sequence length (paper: 10% of 2048 -> 205)."""
    if not 0.0 <= pause_frac < 1.0:
        raise ValueError(f"pause_frac must be in [0, 1) (the paper uses 0.1), got {pause_frac}")
    return round(pause_frac * seq_len)


def insert_pauses(tokens, num_pauses, pause_id, generator=None):
    """Paper Sec. 3.1: put `num_pauses` pauses at uniformly random places among the N + num_pauses
    slots of each row, keep the real tokens in order, and trim back to N.

    tokens: (N,) or (B, N) integer tensor. Returns a tensor of the same shape and dtype whose
    non-pause entries in each row are the first tokens of the input row, in order. Each row gets its
    own random slots. Vectorized: a few tensor ops, no Python loop over rows or tokens.
    """
    _check_num_pauses(num_pauses)
    _check_pause_id(pause_id)
    if num_pauses == 0:
        return tokens.clone()
    rows = tokens.unsqueeze(0) if tokens.dim() == 1 else tokens
    B, N = rows.shape
    # A uniformly random set of num_pauses slots out of N + M: the slots with the M largest
    # i.i.d. uniform keys. Only the first N slots survive the trim, so only they are materialized.
    keys = torch.rand(B, N + num_pauses, generator=generator, device=rows.device)
    chosen = keys.topk(num_pauses, dim=1, sorted=False).indices
    is_pause = torch.zeros(B, N + num_pauses, dtype=torch.bool, device=rows.device)
    is_pause.scatter_(1, chosen, True)
    is_pause = is_pause[:, :N]
    # A real slot holds input token number (real slots so far - 1): the tokens shift right past
    # the pauses, and the last ones fall off the end.
    src = (~is_pause).cumsum(1).sub_(1)
    out = rows.gather(1, src.clamp_(min=0)).masked_fill_(is_pause, pause_id)
    return out.view_as(tokens)


def pause_targets(targets, pause_id):
    """Paper's S_ignore: no loss where the *target* is a pause (predicting where random pauses fall
    would be a pointless distraction). Positions whose *input* is a pause keep their targets."""
    return targets.masked_fill(targets == pause_id, IGNORE)


def pause_pretrain_batch(windows, num_pauses, pause_id, generator=None):
    """Paper Sec. 3.1, pause-pretraining: inputs x and targets y from windows of real tokens, with
    num_pauses (M_pt) pauses inserted at uniformly random places of each window.

    windows: (B, T + 1) long tensor of real tokens. The pauses go into the whole window before it
    is shifted (insert_pauses keeps T + 1 tokens), so a pause can be an input and a target;
    a pause target carries no loss (S_ignore, pause_targets), since where random pauses fall
    cannot be predicted. num_pauses 0 gives the plain shift x = windows[:, :-1], y = windows[:, 1:].
    Returns (x, y), two contiguous (B, T) long tensors.
    """
    if num_pauses == 0:
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
    w = insert_pauses(windows, num_pauses, pause_id, generator=generator)
    return w[:, :-1].contiguous(), pause_targets(w[:, 1:], pause_id).contiguous()


def append_pauses(prefix, num_pauses, pause_id, where="append"):
    """The prompt followed by M pauses (or preceded by them: the paper's 'prepend' ablation).
    Also used with a filler id such as '.' for the paper's filler baseline."""
    _check_num_pauses(num_pauses)
    prefix = torch.as_tensor(prefix, dtype=torch.long)
    pauses = torch.full((num_pauses,), pause_id, dtype=torch.long)
    if where == "append":
        return torch.cat([prefix, pauses])
    if where == "prepend":
        return torch.cat([pauses, prefix])
    raise ValueError(f"where must be 'append' or 'prepend', got {where!r}")


def finetune_example(prefix, target, num_pauses, pause_id, where="append", block_size=None):
    """Paper Sec. 3.2, pause-finetuning: one training row (x, y) for the loss
    sum_k CE(t_{k+1}, f([p_{1:N+M_ft}, t_{1:k}])): the prompt, M_ft pauses, then the answer, with
    loss on the answer only. num_pauses=0 is standard finetuning (StdFT).

    prefix [5,6,7], target [8,9], 3 pauses P:  x = [5,6,7,P,P,P,8],  y = [-1,-1,-1,-1,-1,8,9]
    """
    _check_num_pauses(num_pauses)
    _check_pause_id(pause_id)
    target = torch.as_tensor(target, dtype=torch.long)
    if target.numel() == 0:
        raise ValueError("the target (answer) is empty: finetuning needs at least one answer "
                         "token")
    prompt = append_pauses(prefix, num_pauses, pause_id, where)
    if prompt.numel() == 0:
        raise ValueError("the prefix is empty and there are no pauses: nothing to predict the "
                         "answer from")
    x = torch.cat([prompt, target[:-1]])
    if block_size is not None and x.numel() > block_size:
        raise ValueError(f"prefix ({prompt.numel() - num_pauses}) + pauses ({num_pauses}) + "
                         f"target ({target.numel()}) needs {x.numel()} positions, more than the "
                         f"context of {block_size}; shorten the prefix from the left or use fewer "
                         "pauses")
    y = torch.full_like(x, IGNORE)
    y[prompt.numel() - 1:] = target  # the last prompt position (the last pause) predicts target[0]
    return x, y


@torch.no_grad()
def pause_generate(model, prefix, num_pauses, pause_id, max_new_tokens, where="append",
                   temperature=0.0, top_k=None, stop_ids=(), banned_ids=()):
    """Paper Sec. 3.3, pause-inference: append M_inf pauses to the prompt, ignore every output until
    the last pause has been seen, then decode. The pause is never a training target, so it is banned
    from the output. Returns only the new tokens, up to (not including) the first stop token.

    prefix: one prompt (a list of ids or a 1-D tensor) -> a list of new ids; or a list of prompts
    -> a list of such lists, decoded as one batch (the same tokens as one by one, in float32)."""
    _check_pause_id(pause_id, model.config.vocab_size)
    batch = len(prefix) > 0 and torch.as_tensor(prefix[0]).dim() == 1
    rows = [append_pauses(p, num_pauses, pause_id, where) for p in (prefix if batch else [prefix])]
    # Left padding: every row ends in the last column, where decoding continues, and pad_lens
    # keeps the padding out of attention and positions.
    T = max(len(r) for r in rows)
    pad_lens = [T - len(r) for r in rows]
    idx = torch.stack([torch.cat([r.new_full((n,), pause_id), r]) for r, n in zip(rows, pad_lens)])
    out = model.generate(idx.to(model.device), max_new_tokens, temperature=temperature, top_k=top_k,
                         stop_ids=stop_ids, banned_ids={pause_id, *banned_ids},
                         pad_lens=pad_lens if any(pad_lens) else None)
    news = []
    for new in out[:, T:].tolist():
        stop = next((i for i, t in enumerate(new) if t in stop_ids), len(new))
        news.append(new[:stop])
    return news if batch else news[0]
