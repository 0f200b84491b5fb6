# The README's TransformerBridge example, verbatim (tests/test_readme.py runs it).
from tl_tunedlens import TunedLens, load_model

model = load_model("smollm2-135m", backend="bridge")  # a TransformerBridge, offline, compatibility mode on
lens = TunedLens.from_model(model)                     # or TunedLens.load("my-lens", model), from either backend
logits, cache = model.run_with_cache(model.to_tokens("To be, or not to be"), names_filter=lens.hook_names)
print(lens.log_probs_from_cache(cache).shape)          # [layer 0..30, batch, pos, d_vocab]
