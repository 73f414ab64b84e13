"""
Sample from a trained model with pause-inference (paper Sec. 3.3): M_inf <|pause|> tokens are
appended to the prompt, their outputs ignored, and the completion decoded after the last one.

    python sample.py --prompt "a=3;b=a*4;c=b-2;c=" --num_pauses_eval 10     # out/ckpt.pt
    python sample.py --init_from gpt2 --prompt "The pause token" --num_samples 3

Give the model the pauses it was trained for: M_inf = M_ft after pause-finetuning (finetune.py's
--num_pauses); 0 for a model that never saw a pause (GPT-2, StdPT_StdFT), whose answers pauses
would only disturb. --num_pauses_eval is M_inf in every script.
"""
import os
from dataclasses import dataclass

import torch

import pause
from tools.checkpoint import load_pretrained
from tools.common import UserError, check_ranges, parse_config, require, resolve_device


@dataclass
class SampleConfig:
    ckpt: str = ""                 # ckpt.pt of train.py or finetune.py, or its run directory
    init_from: str = ""            # instead of --ckpt: gpt2, gpt2-medium, gpt2-large, gpt2-xl, DIR
    prompt: str = "a=3;b=a*4;c=b-2;c="  # the text to continue
    num_pauses_eval: int = 0       # M_inf: pauses appended to the prompt before decoding
    num_samples: int = 1           # completions of the prompt, decoded as one batch
    max_new_tokens: int = 32       # tokens decoded after the pauses (fewer if <|endoftext|> comes)
    temperature: float = 0.8       # 0: greedy; below 1 sharper, above 1 more random
    top_k: int = 200               # sample among the k most likely tokens only; 0: among all
    seed: int = 1337               # of the random draws when sampling
    device: str = "auto"           # auto, cpu, cuda, cuda:N

    def check(self):
        check_ranges(self, {">= 0": "num_pauses_eval top_k temperature seed",
                            ">= 1": "num_samples max_new_tokens"})
        require(not (self.ckpt and self.init_from), "give --ckpt or --init_from, not both")
        require(self.prompt or self.num_pauses_eval,
                "--prompt is empty and --num_pauses_eval is 0: nothing to continue from")
        resolve_device(self.device)
        if self.init_from:
            return
        path = checkpoint_path(self.ckpt)
        require(os.path.isfile(path), f"--ckpt {self.ckpt or path}: no checkpoint at {path}; "
                "train one first with `python train.py --out_dir DIR`, then --ckpt DIR")


def checkpoint_path(ckpt):
    """The file --ckpt names: a ckpt.pt, or a run directory holding one (empty: train.py's
    default out_dir)."""
    path = ckpt or "out"
    return os.path.join(path, "ckpt.pt") if os.path.isdir(path) or not ckpt else path


def main(argv=None):
    cfg = parse_config(SampleConfig, __doc__, argv)
    try:
        return sample(cfg)
    except UserError as e:  # a file refused after the door: one line that names it
        raise SystemExit(f"sample.py: error: {e}")


def sample(cfg):
    device = resolve_device(cfg.device)
    path = checkpoint_path(cfg.ckpt)
    model, tok, _ = load_pretrained(path, cfg.init_from, device)
    source = cfg.init_from or path
    model.to(device).eval()
    prompt = tok.encode(cfg.prompt)
    need = len(prompt) + cfg.num_pauses_eval + cfg.max_new_tokens
    # The context is the model's, known only once it is loaded.
    require(need <= model.config.block_size,
            f"--prompt is {len(prompt)} tokens; with --num_pauses_eval {cfg.num_pauses_eval} "
            f"and --max_new_tokens {cfg.max_new_tokens} it needs {need} positions, more than "
            f"the context of {model.config.block_size} of {source}")
    torch.manual_seed(cfg.seed)
    # The copies of the prompt decode side by side as one batch, each with its own random draws.
    completions = pause.pause_generate(model, [prompt] * cfg.num_samples, cfg.num_pauses_eval,
                                       tok.pause_id, cfg.max_new_tokens,
                                       temperature=cfg.temperature, top_k=cfg.top_k or None,
                                       stop_ids={tok.eot_id})
    print(f"{source}: {cfg.num_pauses_eval} pauses (M_inf) after the prompt, then the completion")
    for new in completions:
        print("-" * 40)
        print(cfg.prompt + tok.decode(new))
    return [tok.decode(new) for new in completions]


if __name__ == "__main__":
    main()
