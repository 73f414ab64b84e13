"""
What a reader of the method can skip: the plumbing the scripts share and the scripts around them.

    common.py      the command line, device and DDP, the learning-rate schedule, atomic files
    checkpoint.py  checkpoints in and out, and the models built from them (or from GPT-2)
    gpt2.py        GPT-2's weights from the Hugging Face layout into model.py's GPT
    export.py      a checkpoint out to the Hugging Face layout
    prepare.py     corpus preparation, C4 and task downloads:  python -m tools.prepare --help
    experiment.py  the paper's four configurations:            python -m tools.experiment --help
    bench.py       speed and memory figures:                   python -m tools.bench --help
"""
