"""Quickstart: logit lens vs tuned lens on SmolLM2-135M (offline), as figures and an HTML report.

    python examples/quickstart.py [--lens DIR] [--out examples-out]

Without ``--lens`` it fits a quick tuned lens in closed form (ridge regression of the last
residual stream on each layer's, from ~500 tokens of Shakespeare: a few seconds). For a real
lens, train one with ``tl-tunedlens train`` and pass its folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from tl_tunedlens import LogitLens, TunedLens, load_model
from tl_tunedlens.training.lstsq import lstsq_init_
from tl_tunedlens.analysis.trajectory import trajectory_pair
from tl_tunedlens.viz import compare_heatmaps, lens_view, trajectory_heatmap, write_html, write_png, write_report

TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer"


def quick_fit(lens: TunedLens, model, tokens: torch.Tensor, ridge: float = 0.1) -> TunedLens:
    """Set each translator so that ``h + A h + b`` best predicts the last residual stream: the
    project's closed-form start (ridge least squares, :func:`tl_tunedlens.training.lstsq_init_`) on
    ``tokens``. With few tokens a strong ridge keeps it stable; good enough for a demo."""
    lstsq_init_(lens, model, tokens, ridge=ridge)
    return lens


def training_tokens(model, n_tokens: int = 512) -> torch.Tensor:
    """``n_tokens`` tokens of Shakespeare (the embedded corpus) as a ``[batch 128]`` batch."""
    from tl_tunedlens.data.corpora import shakespeare_files

    text = shakespeare_files()[0].read_text(encoding="utf-8", errors="ignore")[20000:40000]
    ids = model.tokenizer.encode(text, add_special_tokens=False)[:n_tokens]
    return torch.tensor(ids).view(-1, 128)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lens", help="folder of a saved tuned lens (default: a quick closed-form fit)")
    parser.add_argument("--out", default="examples-out", help="output folder (default: %(default)s)")
    parser.add_argument("--text", default=TEXT)
    parser.add_argument("--png", action="store_true", help="also write PNGs (needs kaleido + chromium)")
    args = parser.parse_args(argv)
    out = Path(args.out)

    model = load_model("smollm2-135m")
    tuned = TunedLens.load(args.lens, model) if args.lens else quick_fit(TunedLens.from_model(model), model, training_tokens(model))
    logit = LogitLens.from_model(model)

    tokens = model.tokenizer.encode(args.text, add_special_tokens=False)
    logit_traj, tuned_traj, comparison = trajectory_pair(logit, tuned, model, torch.tensor([tokens]))
    print("mean KL(output || layer), nats, per layer:")
    for layer, (a, b) in enumerate(zip(logit_traj.mean("kl").tolist(), tuned_traj.mean("kl").tolist())):
        print(f"  layer {tuned_traj.layer_labels[layer]:>6}: logit lens {a:6.2f}   tuned lens {b:6.2f}")
    print(f"mean JS(logit, tuned) over layers: {comparison.mean('js').mean():.3f} nats")

    side_by_side = compare_heatmaps([logit_traj, tuned_traj], "kl")
    write_html(side_by_side, out / "kl_logit_vs_tuned.html")
    write_html(trajectory_heatmap(tuned_traj, "rank"), out / "tuned_rank.html")
    lens_view(tuned_traj).save(out / "tuned_circuitsvis.html")
    write_report(out / "report.html", model, tuned, args.text)
    if args.png:
        write_png(side_by_side, out / "kl_logit_vs_tuned.png")
    print(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}/")


if __name__ == "__main__":
    main()
