# The README's training example, verbatim (tests/test_readme.py runs it).
from tl_tunedlens import TrainConfig, TunedLens, evaluate_lenses, load_model, load_tokens, train_lens

model = load_model("smollm2-135m")
train = load_tokens("shakespeare", model.tokenizer, seq_len=256, split="train", max_tokens=3072)
held = load_tokens("shakespeare", model.tokenizer, seq_len=256, split="heldout", max_tokens=256)
lens = TunedLens.from_model(model)
result = train_lens(model, lens, train.sequences, TrainConfig(steps=1, lstsq_tokens=2048))
lens.save("my-lens", training=result.info)
metrics = evaluate_lenses(model, held.sequences, tuned=lens, bytes_per_token=held.bytes_per_token)
print([round(row["tuned"]["kl"], 2) for row in metrics["layers"]])  # nats, layers 0..30
