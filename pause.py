"""
The paper in code: Goyal et al., "Think before you speak: Training
Language Models With Pause Tokens" (ICLR 2024). Everything the paper
adds to ordinary language-model training lives here, as pure functions
on token tensors. The model (model.py) is a plain GPT; it never hears
of pauses.

    pause-pretraining (PausePT)  num_pretrain_pauses, insert_pauses,
                                 pause_targets, pause_pretrain_batch
    pause-finetuning (PauseFT)   finetune_example: M_ft pauses after
                                 the prompt, loss on the answer only
    pause-inference              pause_generate: M_inf pauses after
                                 the prompt, the pause never emitted

IGNORE = -1 marks a target that carries no loss (the cross-entropy's
ignore_index in model.py). The pause token belongs to the tokenizer;
these functions take its id as an argument.
"""
import torch

IGNORE = -1


# -----------------------------------------------------------------------------
# Pause-pretraining (paper Sec. 3.1)

def num_pretrain_pauses(pause_frac, seq_len):
    """M_pt: pause_frac (in [0, 1)) of the sequence length seq_len
    (the paper: 10% of 2048 -> 205)."""
    return round(pause_frac * seq_len)


def insert_pauses(tokens, num_pauses, pause_id, generator=None):
    """Paper Sec. 3.1: put M = num_pauses pauses at uniformly random
    places among the N + M slots of each row, keep the real tokens in
    order, and trim back to N.

    tokens: (N,) or (B, N) integer tensor, left unchanged. num_pauses:
    int M >= 0 (a negative M is refused with an AssertionError).
    pause_id: int. generator: a torch.Generator for every random draw
    (None: torch's global one), so that the same seed gives the same
    pauses.
    Returns a new tensor of the same shape and dtype. In each row the
    entries that are not pause_id are the row's first tokens, in order.
    Every set of M slots out of the N + M is equally likely and each
    row draws its own; so a row keeps N M / (N + M) pauses on average
    and every position is a pause with probability M / (N + M).
    M = 0 returns a copy of the tokens.
    """
    assert num_pauses >= 0, "num_pauses is M >= 0"
    if num_pauses == 0:
        return tokens.clone()
    rows = tokens.unsqueeze(0) if tokens.dim() == 1 else tokens
    B, N = rows.shape
    S = N + num_pauses
    # A uniformly random set of M slots out of N + M: the slots with the
    # M largest i.i.d. uniform keys. Only the first N survive the trim.
    keys = torch.rand(B, S, generator=generator, device=rows.device)
    chosen = keys.topk(num_pauses, dim=1, sorted=False).indices
    is_pause = torch.zeros(B, S, dtype=torch.bool, device=rows.device)
    is_pause.scatter_(1, chosen, True)
    is_pause = is_pause[:, :N]
    # A real slot holds input token number (real slots so far - 1): the
    # tokens shift right past the pauses, and the last ones fall off.
    src = (~is_pause).cumsum(1).sub_(1).clamp_(min=0)
    out = rows.gather(1, src).masked_fill_(is_pause, pause_id)
    return out.view_as(tokens)


def pause_targets(targets, pause_id):
    """Paper's S_ignore: no loss where the *target* is a pause, since
    where random pauses fall cannot be predicted. Positions whose
    *input* is a pause keep their targets.

    targets: integer tensor of any shape, left unchanged. Returns a new
    tensor of its shape and dtype: IGNORE exactly where targets equals
    pause_id, the target everywhere else.
    """
    return targets.masked_fill(targets == pause_id, IGNORE)


def pause_pretrain_batch(windows, num_pauses, pause_id, generator=None):
    """Paper Sec. 3.1, one pause-pretraining batch: inputs and targets
    from windows of real tokens, with M_pt pauses in each window.

    windows: (B, T + 1) long tensor of real tokens, left unchanged.
    num_pauses: M_pt >= 0. generator: as for insert_pauses.
    Returns (x, y), two contiguous (B, T) long tensors. The pauses go
    into the whole window (insert_pauses, T + 1 kept) before the shift:
    x is the pause-injected window without its last entry, y without
    its first, with pause targets set to IGNORE (pause_targets). So a
    pause can be an input, y never holds pause_id, and the pauses
    follow insert_pauses' law over all T + 1 slots. M_pt = 0 gives the
    plain shift x = windows[:, :-1], y = windows[:, 1:].
    """
    if num_pauses == 0:
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
    w = insert_pauses(windows, num_pauses, pause_id, generator)
    x = w[:, :-1].contiguous()
    y = pause_targets(w[:, 1:], pause_id).contiguous()
    return x, y


# -----------------------------------------------------------------------------
# Pause-finetuning (paper Sec. 3.2)

def append_pauses(prefix, num_pauses, pause_id, where="append"):
    """The prompt followed by M pauses: a 1-D long tensor. where
    "prepend" puts them before it instead (the paper's ablation). Also
    used with a filler id such as '.' for the filler baseline."""
    assert where in ("append", "prepend"), where
    prefix = torch.as_tensor(prefix, dtype=torch.long)
    pauses = torch.full((num_pauses,), pause_id, dtype=torch.long)
    if where == "prepend":
        return torch.cat([pauses, prefix])
    return torch.cat([prefix, pauses])


def finetune_example(prefix, target, num_pauses, pause_id,
                     where="append", block_size=None):
    """Paper Sec. 3.2, pause-finetuning: one training row (x, y) for
    the loss sum_k CE(t_{k+1}, f([p_{1:N+M_ft}, t_{1:k}])): the prompt,
    M_ft pauses, then the answer, with loss on the answer only.
    M_ft = 0 is standard finetuning (StdFT).

    prefix, target: lists of ids or 1-D tensors (prompt and answer).
    num_pauses: M_ft >= 0 (negative: AssertionError). where: "append"
    (pauses after the prompt) or "prepend" (before it; anything else:
    AssertionError). block_size: the model's context, or None.
    Returns (x, y), two 1-D long tensors of length
    len(prefix) + M_ft + len(target) - 1: x is the prompt with its
    pauses, then the answer without its last token; y is IGNORE at
    the first len(prompt) - 1 positions, then the whole answer: the
    last prompt position (the last pause with "append") predicts
    target[0].
    Refused: an empty answer, or an empty prefix with no pauses
    (nothing to predict from): ValueError; x longer than block_size
    (the caller cuts the prompt first): AssertionError.

    prefix [5,6,7], target [8,9], 3 pauses P:
        x = [5, 6, 7, P, P, P, 8]
        y = [-1, -1, -1, -1, -1, 8, 9]
    """
    assert num_pauses >= 0, "num_pauses is M_ft >= 0"
    target = torch.as_tensor(target, dtype=torch.long)
    prompt = append_pauses(prefix, num_pauses, pause_id, where)
    if len(target) == 0 or len(prompt) == 0:
        raise ValueError("a row needs an answer and a prompt or pauses")
    x = torch.cat([prompt, target[:-1]])
    assert block_size is None or len(x) <= block_size, "cut the prompt"
    y = torch.full_like(x, IGNORE)
    # the last prompt position (the last pause) predicts target[0]
    y[len(prompt) - 1:] = target
    return x, y


# -----------------------------------------------------------------------------
# Pause-inference (paper Sec. 3.3)

@torch.no_grad()
def pause_generate(model, prompts, num_pauses, pause_id, max_new_tokens,
                   where="append", temperature=0.0, top_k=None,
                   stop_ids=(), banned_ids=()):
    """Paper Sec. 3.3, pause-inference: append M_inf pauses to each
    prompt, ignore every output until the last pause has been seen,
    then decode with model.generate. The pause is never a training
    target, so it is banned from the output.

    prompts: a list of prompts, each a list of ids or a 1-D tensor.
    num_pauses: M_inf >= 0. where: as for finetune_example.
    temperature, top_k: as for model.generate (0: greedy). stop_ids,
    banned_ids: sets of ids; pause_id is banned as well.
    Returns a list with one list of new ids (Python ints) per prompt:
    up to max_new_tokens tokens decoded after the prompt and its
    pauses, cut before the first stop id. The prompts decode together
    as one left-padded batch, and each gets the tokens it would get
    alone (the same as model.generate on prompt + pauses).
    """
    rows = [append_pauses(p, num_pauses, pause_id, where) for p in prompts]
    # Left padding: every row ends in the last column, where decoding
    # continues; pad_lens keeps the padding out of attention and positions.
    T = max(len(r) for r in rows)
    pad_lens = [T - len(r) for r in rows]
    idx = torch.stack([torch.cat([r.new_full((n,), pause_id), r])
                       for r, n in zip(rows, pad_lens)])
    out = model.generate(idx.to(model.device), max_new_tokens,
                         temperature=temperature, top_k=top_k,
                         stop_ids=stop_ids,
                         banned_ids={pause_id, *banned_ids},
                         pad_lens=pad_lens if any(pad_lens) else None)
    news = []
    for new in out[:, T:].tolist():
        stop = next((i for i, t in enumerate(new) if t in stop_ids), len(new))
        news.append(new[:stop])
    return news
