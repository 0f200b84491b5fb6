"""One rank of ``test_reliability``'s torchrun case: ``tl-tunedlens train`` on a tiny model, every step
checkpointed; rank 1 SIGKILLs itself at the start of step 2. Usage (under torchrun): ``torchrun_rank.py OUT``."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from conftest import make_tiny_model, tiny_tokenizer  # noqa: E402


def main() -> int:
    import tl_tunedlens.cli.train as cli_train
    import tl_tunedlens.training.trainer as trainer
    from tl_tunedlens.cli import main as cli_main

    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    texts = out / "texts"
    if os.environ["RANK"] == "0":
        texts.mkdir(parents=True, exist_ok=True)
        for i in range(6):
            (texts / f"t{i}.txt").write_text(" ".join(f"t{4 + (i * j) % 30}" for j in range(80)))
    model = make_tiny_model("RMS", n_layers=2, d_model=16, d_vocab=37)
    model.set_tokenizer(tiny_tokenizer(), default_padding_side="right")
    cli_train.load_model_from_args = lambda args, name=None, **kwargs: model
    real_step = trainer.train_step

    def step(run):
        if run.dist.rank == 1 and run.step == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(run)

    trainer.train_step = step
    while not (texts / "t5.txt").is_file():   # rank 0 writes the texts; the group's first collective orders the rest
        os.sched_yield()
    return cli_main(["train", "--data", str(texts), "--seq-len", "16", "--steps", "6", "--tokens-per-step", "64",
                     "--lstsq-tokens", "32", "--checkpoint-every", "1", "--no-progress", "--out", str(out / "out")])


if __name__ == "__main__":
    sys.exit(main())
