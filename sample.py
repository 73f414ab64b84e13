"""
Sample from a trained model with pause-inference (paper Sec. 3.3): M_inf <|pause|> tokens are
appended to the prompt, their outputs ignored, and the completion decoded after the last one.

    python sample.py --prompt "a=3;b=a*4;c=b-2;c=" --num_pauses 10     # out/ckpt.pt
    python sample.py --init_from gpt2 --prompt "The pause token" --num_samples 3

Give the model the pauses it was trained for: M_inf = M_ft after pause-finetuning; 0 for a model
that never saw a pause (GPT-2, StdPT_StdFT), whose answers pauses would only disturb.
"""
from dataclasses import dataclass

import torch

import pause
from tools.checkpoint import load_model
from tools.common import UserError, config_parser, resolve_device


@dataclass
class SampleConfig:
    ckpt: str = ""                 # checkpoint of train.py or finetune.py; empty: out/ckpt.pt
    init_from: str = ""            # instead of --ckpt: gpt2, gpt2-medium, gpt2-large, gpt2-xl, DIR
    prompt: str = "a=3;b=a*4;c=b-2;c="  # the text to continue
    num_pauses: int = 0            # M_inf: pauses appended to the prompt before decoding
    num_samples: int = 1           # completions of the prompt, decoded as one batch
    max_new_tokens: int = 32       # tokens decoded after the pauses (fewer if <|endoftext|> comes)
    temperature: float = 0.8       # 0: greedy; below 1 sharper, above 1 more random
    top_k: int = 200               # sample among the k most likely tokens only; 0: among all
    seed: int = 1337               # of the random draws when sampling
    device: str = "auto"           # auto, cpu, cuda, cuda:N


def check(cfg):
    """Refuse bad flags before any work, naming the flag."""
    for name, low in (("num_pauses", 0), ("num_samples", 1), ("max_new_tokens", 1), ("top_k", 0)):
        if getattr(cfg, name) < low:
            raise UserError(f"--{name} must be >= {low}, got {getattr(cfg, name)}")
    if cfg.temperature < 0:
        raise UserError(f"--temperature must be >= 0 (0: greedy), got {cfg.temperature}")
    if cfg.ckpt and cfg.init_from:
        raise UserError("give --ckpt or --init_from, not both")
    if not cfg.prompt and not cfg.num_pauses:
        raise UserError("--prompt is empty and --num_pauses is 0: nothing to continue from")


def main(argv=None):
    try:
        return sample(argv)
    except UserError as e:  # a flag or file refused: one line that names it, no traceback
        raise SystemExit(f"sample.py: error: {e}")


def sample(argv=None):
    parser = config_parser(SampleConfig, __doc__)
    cfg = SampleConfig(**vars(parser.parse_args(argv)))
    check(cfg)
    device = resolve_device(cfg.device)
    path = cfg.ckpt or "out/ckpt.pt"  # the default out_dir of train.py
    model, tok, _ = load_model(path, cfg.init_from, device)
    source = cfg.init_from or path
    model.to(device).eval()
    prompt = tok.encode(cfg.prompt)
    need = len(prompt) + cfg.num_pauses + cfg.max_new_tokens
    if need > model.config.block_size:
        raise UserError(f"--prompt is {len(prompt)} tokens; with --num_pauses {cfg.num_pauses} "
                         f"and --max_new_tokens {cfg.max_new_tokens} it needs {need} positions, "
                         f"more than the context of {model.config.block_size} of {source}")
    torch.manual_seed(cfg.seed)
    # The copies of the prompt decode side by side as one batch, each with its own random draws.
    completions = pause.pause_generate(model, [prompt] * cfg.num_samples, cfg.num_pauses,
                                       tok.pause_id, cfg.max_new_tokens,
                                       temperature=cfg.temperature, top_k=cfg.top_k or None,
                                       stop_ids={tok.eot_id})
    print(f"{source}: {cfg.num_pauses} pauses (M_inf) after the prompt, then the completion")
    for new in completions:
        print("-" * 40)
        print(cfg.prompt + tok.decode(new))
    return [tok.decode(new) for new in completions]


if __name__ == "__main__":
    main()
