"""The lens core: everything a lens needs to read a TransformerLens model and decode its residual stream.

- :mod:`.layers`: which hook point each lens layer reads (by default lens layer ``i`` = residual after ``i``
  blocks; or any residual hook points, e.g. every ``hook_resid_mid``), and the layer a hook name is read by;
- :mod:`.backend`: the one place that reads a model, a ``HookedTransformer`` or a ``TransformerBridge``
  (config facts, ``ln_final``/``unembed``, running it with hooks to capture residual streams, text to tokens);
- :mod:`.unembed`: the frozen unembedding every lens shares (``ln_final`` then ``unembed``) and its identity;
- :mod:`.vocab`: the vocabulary engine training and evaluation share (the products, the model's distribution,
  the block softmax and its log-sum-exp);
- :mod:`.distributed`: data-parallel runs under ``torchrun`` (ranks, shards, all-reduce, fail-fast);
- :mod:`.basis`: whether a residual stream is Hugging Face's or its mean-centred copy;
- :mod:`.hooks`: the TransformerLens routes of a lens (``ActivationCache`` readers, ``fwd_hooks``);
- :mod:`.ablation`: removing a subspace of the residual stream (zero, mean, resample), inside hooks or on tensors;
- :mod:`.inversion`: a residual whose lens decoding matches given log-probs (``lens.invert``);
- :mod:`.interventions`: token interventions through any lens (lens vectors, steering, token ablation, swaps:
  TransformerLens ``JacobianLens``'s, ``lens.steering_hooks`` ...);
- :mod:`tl_tunedlens.core.options`: the rules of settings fields and flags; :mod:`tl_tunedlens.core.progress`: progress bars;
- :mod:`.saes`: where a lens site is found when an sae-lens SAE is attached there (names only, no sae-lens import).

May import: torch, transformer_lens, jaxtyping, einops and :mod:`tl_tunedlens.errors`; nothing else of the package.
The lens classes themselves live one floor up, in :mod:`tl_tunedlens.lens`.
"""
