"""
What a reader of the method can skip: the plumbing the scripts share and the scripts around them.
Run the scripts as modules from the repository's root, e.g. `python -m tools.prepare --help`.

    common.py         flags checked at the door, device and DDP, the learning-rate schedule, run
                      directories with one owner, atomic files, downloads (imports nothing of
                      the project)
    checkpoint.py     checkpoints in and out, and the models built from them, from GPT-2's
                      weights or an export, with the pause settings they carry
    gpt2.py           GPT-2's weights from the Hugging Face layout into model.py's GPT
    safetensors_io.py the safetensors format, read and written with no dependency
    export.py         a checkpoint out to the Hugging Face layout:  python -m tools.export --help
    prepare.py        corpus preparation, C4, task and GPT-2 downloads:  python -m tools.prepare
    experiment.py     the paper's four configurations:  python -m tools.experiment --help
    bench.py          speed and memory figures:  python -m tools.bench --help
"""
