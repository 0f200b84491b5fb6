"""The docs index figure: a least-squares tuned lens on 8,192 Shakespeare tokens vs the logit lens on SmolLM2-135M,
evaluated on 2,040 held-out tokens; prints the fit time and mean KL, writes docs/_static/demo_metric_curves.png."""

import time
from tl_tunedlens import TunedLens, load_model, load_tokens, evaluate_lenses
from tl_tunedlens.training import lstsq_init_
from tl_tunedlens.viz.plots import write_metric_curves
t0=time.time()
model = load_model("smollm2-135m")
train = load_tokens("shakespeare", model.tokenizer, 256, split="train", max_tokens=8192)
held = load_tokens("shakespeare", model.tokenizer, 256, split="heldout", max_tokens=2048)
lens = TunedLens.from_model(model)
lstsq_init_(lens, model, train.sequences, ridge=0.1)
t1=time.time()
m = evaluate_lenses(model, held.sequences, tuned=lens, bytes_per_token=held.bytes_per_token)
kl = [r["tuned"]["kl"] for r in m["layers"]][1:30]; lk=[r["logit"]["kl"] for r in m["layers"]][1:30]
print("fit s", round(t1-t0,1), "tuned mean KL 1..29", sum(kl)/len(kl), "logit", sum(lk)/len(lk), "tokens", m["tokens"])
write_metric_curves(m, "/tmp/fig_curves.html", str(__import__("pathlib").Path(__file__).resolve().parents[1] / "docs/_static/demo_metric_curves.png"))
print("done", time.time()-t0)
