"""What a lens is, and everything it does: ``Lens`` (layer indexing, decoding, the TransformerLens routes,
interventions), ``LogitLens`` and ``TunedLens`` (translators, files, the hub, J-lenses). This file lists
every public method of a lens (it is over 400 lines because of that); each delegates to the module below
that holds the work.

A lens maps the residual stream at lens layer ``i`` (see :mod:`tl_tunedlens.core.layers`) to
next-token logits through the model's own frozen ``ln_final`` and ``unembed``::

    lens.transform(h, i)  ->  h'                      (identity for the logit lens)
    lens(h, i)            ->  unembed(ln_final(h'))   logits, [... d_vocab]

``TunedLens`` translators are residual affine maps ``h' = h + A h + b`` with ``A, b``
initialised to zero, so an untrained tuned lens equals the logit lens exactly. Layer
``n_layers`` has no translator: it decodes the final residual stream like the model does.
The TransformerLens routes (``run_with_cache`` readers, ``lens.hooks(...)`` for
``run_with_hooks``, including subspace ablation) are in :mod:`tl_tunedlens.core.hooks`; inversion in
:mod:`tl_tunedlens.core.inversion`; saving and loading in :mod:`tl_tunedlens.artifacts`; TransformerLens
``JacobianLens``'s token interventions (``lens.steering_hooks`` ...) in :mod:`tl_tunedlens.core.interventions`,
and J-lenses themselves, both ways, in :mod:`tl_tunedlens.artifacts.jacobian`.
A lens reads the default hook points or any residual ones (``hook_names=``, :mod:`tl_tunedlens.core.layers`);
``n_layers`` is its own number of translated layers, ``model_n_layers`` the model's.

>>> import torch
>>> from tl_tunedlens import TunedLens, load_model
>>> model = load_model("smollm2-135m")
>>> lens = TunedLens.from_model(model)             # untrained: equals the logit lens
>>> lens(torch.randn(2, 576), layer=10).shape      # logits [2, d_vocab]
torch.Size([2, 49152])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn

from . import artifacts
from .artifacts import jacobian
from .artifacts.reference import model_unembed_hash
from .core import interventions
from .core.backend import Model, model_facts
from .core.basis import residual_stream_kind
from .core import hooks as routes
from .core.hooks import HookList, LensRecord, Positions
from .core.saes import SiteFilter
from .core.interventions import Token, Tokens
from .core.inversion import Inversion, invert
from .core.layers import is_default_convention, layer_labels, lens_hook_names, normalize_layer
from .core.unembed import Unembed, to_log_probs
from .errors import LensError


def default_lens_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """Translators train in fp32 unless the model is fp64."""
    return torch.float64 if model_dtype == torch.float64 else torch.float32


class Lens(nn.Module):
    """Base class: ``transform(h, layer)`` plus a frozen :class:`~tl_tunedlens.core.unembed.Unembed`;
    ``forward`` decodes. Subclasses override ``_transform``."""

    lens_type: str = "lens"
    #: residual stream the translators were trained on: "raw" (Hugging Face hidden states),
    #: "centred" (center_writing_weights on a LayerNorm model) or None (unknown, or no translators)
    residual_stream: str | None = None

    def __init__(self, unembed: Unembed, n_layers: int, model_name: str | None = None, *,
                 hook_names: str | Sequence[str] | None = None):
        super().__init__()
        self.unembed = unembed  # a plain object: not a submodule, never in state_dict
        #: the model's number of blocks; the lens's own layers are ``0..n_layers`` (one per hook name)
        self.model_n_layers = int(n_layers)
        self._hook_names = lens_hook_names(self.model_n_layers, hook_names)
        self.n_layers = len(self._hook_names) - 1
        self.d_model = unembed.d_model
        self.d_vocab = unembed.d_vocab
        self.model_name = model_name
        # identity of the unembedding this lens was built for (see Unembed.check)
        self.unembed_sha256: str = unembed.sha256
        self.unembed_fingerprint: list[float] = unembed.fingerprint

    # --- layer indexing ---------------------------------------------------------------
    @property
    def hook_names(self) -> list[str]:
        """Hook name read by each lens layer ``0..n_layers`` (usable as ``names_filter``); the last is
        the model's final residual stream (see :mod:`tl_tunedlens.core.layers`)."""
        return list(self._hook_names)

    @property
    def default_convention(self) -> bool:
        """Whether lens layer ``i`` is the residual stream after ``i`` blocks (the default hook points)."""
        return is_default_convention(self._hook_names, self.model_n_layers)

    @property
    def layer_labels(self) -> list[str]:
        """Display labels of lens layers ``0..n_layers`` (numbers, or short hook names, then ``"output"``)."""
        return layer_labels(self.n_layers, self._hook_names)

    @property
    def layers(self) -> list[int]:
        """Every lens layer, ``0..n_layers`` (the last is the model's own output)."""
        return list(range(self.n_layers + 1))

    def layer_index(self, layer: int | str) -> int:
        """Normalise ``layer`` (negative counts from the end, or the hook name it reads) to ``0..n_layers``."""
        if isinstance(layer, str) and layer in self.hook_names:
            return self.hook_names.index(layer)
        return normalize_layer(layer, self.n_layers)

    def layer_of(self, hook_name: str | int) -> int:
        """The lens layer that reads ``hook_name``: ``lens.layer_of("blocks.10.hook_resid_post") == 11``
        (``blocks.{i}.hook_resid_pre`` is layer ``i``; Bridge names and the hook points of an sae-lens SAE
        at the site, e.g. ``sae.cfg.metadata.hook_name``, alike). Every method that takes a layer
        number takes such a name too."""
        return self.layer_index(hook_name)

    def hook_name(self, layer: int | str) -> str:
        """The hook name read by lens layer ``layer`` (negative counts from the end)."""
        return self.hook_names[self.layer_index(layer)]

    def _check_resid(self, h: Tensor) -> None:
        if not isinstance(h, Tensor):
            raise LensError(f"expected a residual-stream tensor, got {type(h).__name__}")
        if h.ndim == 0 or h.shape[-1] != self.d_model:
            raise LensError(
                f"residual stream has last dimension {tuple(h.shape)[-1:] or '()'} but this lens "
                f"expects d_model={self.d_model}: pass activations of shape [..., {self.d_model}]"
            )

    # --- the lens itself --------------------------------------------------------------
    def _transform(self, h: Tensor, layer: int) -> Tensor:
        """Translator of a normalised ``layer``; ``h`` is already checked."""
        return h

    def transform(self, h: Float[Tensor, "*batch d_model"], layer: int) -> Float[Tensor, "*batch d_model"]:
        """The translated residual stream at lens layer ``layer`` (same shape and dtype)."""
        self._check_resid(h)
        return self._transform(h, self.layer_index(layer))

    def forward(self, h: Float[Tensor, "*batch d_model"], layer: int) -> Float[Tensor, "*batch d_vocab"]:
        """Logits of lens layer ``layer``: ``unembed(ln_final(transform(h, layer)))``."""
        return self.unembed(self.transform(h, layer))

    def log_probs(self, h: Float[Tensor, "*batch d_model"], layer: int) -> Float[Tensor, "*batch d_vocab"]:
        """Log-probabilities (nats) of lens layer ``layer``, computed in fp32 or better."""
        return to_log_probs(self(h, layer))

    def forward_all(
        self, resids: Float[Tensor, "layer *batch d_model"] | Sequence[Tensor]
    ) -> Float[Tensor, "layer *batch d_vocab"]:
        """Logits of every layer at once: ``resids[i]`` is the residual at lens layer ``i``.

        Takes ``n_layers + 1`` residuals (stacked or as a list); returns them stacked."""
        if len(resids) != self.n_layers + 1:
            raise LensError(
                f"forward_all needs one residual per lens layer ({self.n_layers + 1}), got "
                f"{len(resids)}: pass lens.residuals_from_cache(cache) or a list ordered like lens.hook_names"
            )
        return torch.stack([self(h, i) for i, h in enumerate(resids)])

    def invert(self, target_log_probs: Float[Tensor, "*batch d_vocab"], layer: int, **kwargs: Any) -> Inversion:
        """A residual ``h`` at lens layer ``layer`` (before the final norm, what the hook sees) whose lens
        decoding matches ``target_log_probs``, and the KL reached; see :func:`~tl_tunedlens.core.inversion.invert`."""
        return invert(self, target_log_probs, layer, **kwargs)

    # --- the ActivationCache route (core.hooks) ---------------------------------------
    @property
    def names_filter(self) -> SiteFilter:
        """Hook-name predicate for ``run_with_cache(tokens, names_filter=lens.names_filter)``: the lens sites,
        and both ``hook_sae_output``/``hook_sae_input`` where an sae-lens SAE is attached."""
        return routes.names_filter(self)

    def residuals_from_cache(self, cache: Any, *, sae_read: str = "output") -> Float[Tensor, "layer batch pos d_model"]:
        """The residual at every lens layer, stacked, from a TransformerLens ``ActivationCache`` (``sae_read``:
        an attached SAE's ``"output"`` or ``"input"``); see :func:`~tl_tunedlens.core.hooks.residuals_from_cache`."""
        return routes.residuals_from_cache(self, cache, sae_read=sae_read)

    def logits_from_cache(self, cache: Any, *, sae_read: str = "output") -> Float[Tensor, "layer batch pos d_vocab"]:
        """Lens logits of every layer ``0..n_layers`` from a cache; the last row is the model's own output."""
        return routes.logits_from_cache(self, cache, sae_read=sae_read)

    def log_probs_from_cache(self, cache: Any, *, sae_read: str = "output") -> Float[Tensor, "layer batch pos d_vocab"]:
        """Like :meth:`logits_from_cache`, as log-probs (nats), fp32 or better."""
        return routes.log_probs_from_cache(self, cache, sae_read=sae_read)

    # --- the fwd_hooks route (core.hooks) -----------------------------------------------
    def hooks(self, record: LensRecord | None = None, *, layers: int | list[int] | None = None,
              positions: Positions = None, top_k: int | None = None, intervene: int | list[int] | None = None,
              detach: bool = True, model: Model | None = None, ablate: int | list[int] | None = None,
              subspace: Float[Tensor, "d_model k"] | None = None, method: str = "mean",
              mean: Float[Tensor, " d_model"] | None = None, seed: int = 0, sae_read: str = "output") -> HookList:
        """``fwd_hooks`` for ``model.run_with_hooks``: record into ``record``, ``intervene`` at layers and/or
        ``ablate`` a ``subspace``; see :func:`~tl_tunedlens.core.hooks.hooks`."""
        return routes.hooks(self, record, layers=layers, positions=positions, top_k=top_k, intervene=intervene,
                            detach=detach, model=model, ablate=ablate, subspace=subspace, method=method, mean=mean,
                            seed=seed, sae_read=sae_read)

    def recording_hooks(self, record: LensRecord, *, layers: int | list[int] | None = None, positions: Positions = None,
                        top_k: int | None = None, detach: bool = True, model: Model | None = None,
                        sae_read: str = "output") -> HookList:
        """Hooks writing lens predictions (log-probs, or the top ``top_k``) into ``record`` during a forward
        pass; see :func:`~tl_tunedlens.core.hooks.recording_hooks`."""
        return routes.recording_hooks(self, record, layers=layers, positions=positions, top_k=top_k, detach=detach,
                                      model=model, sae_read=sae_read)

    def intervention_hooks(self, layers: int | list[int], *, positions: Positions = None,
                           model: Model | None = None) -> HookList:
        """Hooks replacing the residual at ``layers`` by its translation, so the model runs on the translator's output."""
        return routes.intervention_hooks(self, layers, positions=positions, model=model)

    def ablation_hooks(self, layers: int | list[int], subspace: Float[Tensor, "d_model k"], *jacobian_lens_form: object,
                       method: str = "mean", mean: Float[Tensor, " d_model"] | None = None, seed: int = 0,
                       positions: object = None) -> HookList:
        """Hooks removing the span of ``subspace`` at ``layers`` by ``method`` (mean, resample, zero); TL's token
        form is :meth:`token_ablation_hooks`. See :func:`~tl_tunedlens.core.hooks.ablation_hooks`."""
        return routes.ablation_hooks(self, layers, subspace, *jacobian_lens_form, method=method, mean=mean, seed=seed,
                                     positions=positions)

    # --- token interventions: TransformerLens JacobianLens's, for any lens (see core.interventions) ----
    # Their arguments are JacobianLens's, in its order (``model`` first; ``None``: this lens's model), with
    # lens layers (J-lens layer l = lens layer l + 1) or hook names. TL's ablation_hooks(model, tokens,
    # layers) is token_ablation_hooks here: ablation_hooks(layers, subspace) already removes a given subspace
    # (lens.hooks(ablate=...), causal analysis), and one name with two grammars would mislead both.
    def lens_vectors(self, model: Model | None, tokens: Tokens, layer: int | str) -> Float[Tensor, "n d_model"]:
        """Lens vectors ``M_layerᵀ W_U[:, t]`` of ``tokens`` (``M``: the translator's linear part), one row per token."""
        return interventions.lens_vectors(self, model, tokens, layer)

    def steering_hooks(self, model: Model | None, token: Token, layers: int | str | Sequence[int | str], *,
                       alpha: float = 4.0, positions: Positions = None) -> HookList:
        """``fwd_hooks`` adding ``alpha * median||h|| * (unit lens vector of token)`` at each of ``layers``."""
        return interventions.steering_hooks(self, model, token, layers, alpha=alpha, positions=positions)

    def token_ablation_hooks(self, model: Model | None, tokens: Tokens, layers: int | str | Sequence[int | str], *,
                             positions: Positions = None) -> HookList:
        """``fwd_hooks`` projecting the span of ``tokens``' lens vectors out at each of ``layers`` (TL's ``ablation_hooks``)."""
        return interventions.token_ablation_hooks(self, model, tokens, layers, positions=positions)

    def swap_hooks(self, model: Model | None, source_token: Token, target_token: Token,
                   layers: int | str | Sequence[int | str], *, alpha: float = 1.0, positions: Positions = None,
                   clamp_to: Any = None) -> HookList:
        """``fwd_hooks`` exchanging the two tokens' lens coordinates at each of ``layers`` (``clamp_to``: a clean cache)."""
        return interventions.swap_hooks(self, model, source_token, target_token, layers, alpha=alpha,
                                        positions=positions, clamp_to=clamp_to)

    def to_jacobian_lens(self, path: str | os.PathLike | None = None, *, dtype: torch.dtype = torch.float16,
                         n_prompts: int | None = None, metadata: dict[str, Any] | None = None) -> Any:
        """This lens as TransformerLens's J-lens (``J[l]`` = linear part of lens layer ``l + 1``; see
        :func:`~tl_tunedlens.artifacts.jacobian.from_lens`: a non-zero bias or a centred stream is refused, a
        ``bias=True`` lens whose biases are all zero exports; lens layer 0 has no J-lens counterpart):
        with ``path``, its ``.pt`` artifact written there (``dtype``; no TransformerLens import), returning the
        path; without, a ``transformer_lens.tools.analysis.JacobianLens`` object."""
        data = jacobian.from_lens(self, n_prompts=n_prompts, metadata=metadata)
        return jacobian.jacobian_lens_object(data) if path is None else jacobian.write_jacobian_lens(path, data, dtype=dtype)

    # --- the right model --------------------------------------------------------------
    def check_model(self, model: Model) -> None:
        """Raise ``UnembedMismatchError`` unless ``model`` has this lens's unembedding (and, for a
        lens with translators, the residual stream they were trained on)."""
        unembed = Unembed(model)
        self.check_unembed(unembed, model_facts(model).n_layers)
        if self.residual_stream is not None and not unembed.same_modules(self.unembed):
            model_kind = residual_stream_kind(model)
            if model_kind != self.residual_stream:
                raise LensError(
                    f"this {type(self).__name__} was trained on a {self.residual_stream} residual stream but the "
                    f"model's is {model_kind} (center_writing_weights differs): load the model with the processing "
                    "the lens was trained with, or save the lens and TunedLens.load it for this model"
                )

    def check_unembed(self, unembed: Unembed, n_layers: int) -> None:
        """Raise ``UnembedMismatchError`` (or ``LensError`` for the layer count) unless ``unembed`` is this lens's."""
        if n_layers != self.model_n_layers:
            raise LensError(
                f"this lens has {self.model_n_layers} layers but the model has {n_layers}: "
                "use the model the lens was trained on"
            )
        if unembed.same_modules(self.unembed):
            return
        unembed.check(
            d_model=self.d_model, d_vocab=self.d_vocab, sha256=self.unembed_sha256,
            fingerprint=self.unembed_fingerprint, what=f"this {type(self).__name__}",
        )

    def extra_repr(self) -> str:
        hooks = "" if self.default_convention else f", hook_names={self._hook_names[:-1]}"
        return f"n_layers={self.n_layers}, d_model={self.d_model}, d_vocab={self.d_vocab}{hooks}"


class LogitLens(Lens):
    """The logit lens: decode every layer's residual stream with the model's final norm and unembedding."""

    lens_type = "logit_lens"

    @classmethod
    def from_model(cls, model: Model, *, hook_names: str | Sequence[str] | None = None,
                   unembed: Unembed | None = None) -> "LogitLens":
        """The logit lens of ``model``: its own ``ln_final`` and unembedding at every layer
        (``hook_names``: other residual hook points, see :func:`~tl_tunedlens.core.layers.lens_hook_names`).
        ``unembed``: an existing :class:`~tl_tunedlens.core.unembed.Unembed` (e.g. a tuned lens's) to
        share, with its cached hash, fingerprint and weights, when it decodes with ``model``'s own
        modules; otherwise a new one is built."""
        facts = model_facts(model)
        own = Unembed(model)
        shared = unembed if unembed is not None and unembed.same_modules(own) else own
        return _checked_hooks(cls(shared, facts.n_layers, model_name=facts.model_name, hook_names=hook_names), model)


class TunedLens(Lens):
    """A tuned lens (Belrose et al. 2023): residual affine translators ``h + A h + b`` for layers
    ``0..n_layers-1``, zero-initialised, kept in fp32 (fp64 for an fp64 model).

    Saved metadata, set here and written by :meth:`save`: ``residual_stream`` (see
    :mod:`tl_tunedlens.core.basis`), ``reference_unembed_hash`` (the reference package's hash of
    the Hugging Face unembedding, when known) and ``training_info`` (how it was trained)."""

    lens_type = "tuned_lens"

    def __init__(self, unembed: Unembed, n_layers: int, *, bias: bool = True, dtype: torch.dtype | None = None,
                 model_name: str | None = None, residual_stream: str | None = None,
                 reference_unembed_hash: str | None = None, training_info: dict[str, Any] | None = None,
                 hook_names: str | Sequence[str] | None = None):
        super().__init__(unembed, n_layers, model_name, hook_names=hook_names)
        self.bias = bool(bias)
        self.residual_stream = residual_stream
        self.reference_unembed_hash = reference_unembed_hash
        self.training_info: dict[str, Any] = dict(training_info or {})
        dtype = dtype or default_lens_dtype(unembed.dtype)
        self.translators = nn.ModuleList(
            nn.Linear(self.d_model, self.d_model, bias=self.bias, device=unembed.device, dtype=dtype)
            for _ in range(self.n_layers)
        )
        self.reset_parameters()

    @classmethod
    def from_model(cls, model: Model, *, bias: bool = True, dtype: torch.dtype | None = None,
                   hook_names: str | Sequence[str] | None = None) -> "TunedLens":
        """An untrained (identity) tuned lens for ``model``: equal to the logit lens exactly.

        ``hook_names``: read other residual hook points than the default, e.g. ``"resid_mid"`` (every
        ``blocks.{i}.hook_resid_mid``) or a list of names (:func:`~tl_tunedlens.core.layers.lens_hook_names`);
        training, saving, loading, evaluation and display follow them."""
        facts = model_facts(model)
        unembed = Unembed(model)
        lens = cls(unembed, facts.n_layers, bias=bias, dtype=dtype, model_name=facts.model_name,
                   residual_stream=residual_stream_kind(model), reference_unembed_hash=model_unembed_hash(unembed),
                   hook_names=hook_names)
        return _checked_hooks(lens, model)

    @classmethod
    def from_jacobian_lens(cls, jl_or_path: Any, model: Model, *, dtype: torch.dtype | None = None) -> "TunedLens":
        """TransformerLens's Jacobian lens (a ``JacobianLens``, or its ``.pt`` file read with ``weights_only=True``)
        as a bias-free tuned lens of ``model``: translator ``J[l] - I`` at lens layer ``l + 1``, identity elsewhere;
        ``training_info`` says where it came from. A mean-centred model is refused (see
        :func:`~tl_tunedlens.artifacts.jacobian.into_lens`)."""
        return jacobian.into_lens(cls.from_model(model, bias=False, dtype=dtype), jacobian.read_jacobian_lens(jl_or_path))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Zero every translator: the lens becomes the logit lens exactly."""
        for translator in self.translators:
            translator.weight.zero_()
            if translator.bias is not None:
                translator.bias.zero_()

    def _transform(self, h: Tensor, layer: int) -> Tensor:
        if layer == self.n_layers:
            return h
        translator = self.translators[layer]
        x = h.to(translator.weight.dtype)
        return (x + translator(x)).to(h.dtype)

    # --- save / load / hub (see tl_tunedlens.artifacts) ------------------------------
    def save(self, path: str | os.PathLike, *, training: dict[str, Any] | None = None,
             format: str = "tl-tunedlens") -> Path:
        """Write the lens into folder ``path`` atomically.

        ``format="tl-tunedlens"``: ``config.json`` + ``lens.safetensors`` (``training`` metadata
        included, default ``training_info``); ``format="tuned-lens"``: the reference package's
        ``config.json`` + ``params.pt``."""
        return artifacts.save(self, path, format=format, training=training)

    @classmethod
    def load(cls, path: str | os.PathLike, model: Model, *,
             dtype: torch.dtype | None = None, allow_unverified: bool = False) -> "TunedLens":
        """Load a lens folder (ours or the reference's) for ``model``, checked against its
        unembedding, ``n_layers``, ``d_model`` and residual stream; the config's fields, the weights'
        SHA-256 and finiteness are checked too. ``allow_unverified``: accept a config of ours that
        records no model identity or no weights SHA-256 (both refused by default)."""
        return artifacts.load(cls, path, model, dtype=dtype, allow_unverified=allow_unverified)

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, model: Model,
                        revision: str | None = None, cache_dir: str | os.PathLike | None = None, *,
                        dtype: torch.dtype | None = None, repo_type: str | None = None,
                        subfolder: str | None = None, token: str | bool | None = None,
                        allow_unverified: bool = False) -> "TunedLens":
        """Load from a local folder, a hub repo, or the reference space ``AlignmentResearch/tuned-lens``
        (``lens/<path_or_repo_id>``); offline, only the Hugging Face cache is used. Checked like
        :meth:`~tl_tunedlens.lens.TunedLens.load` (``allow_unverified`` as there)."""
        return artifacts.from_pretrained(cls, path_or_repo_id, model, revision=revision, cache_dir=cache_dir,
                                         dtype=dtype, repo_type=repo_type, subfolder=subfolder, token=token,
                                         allow_unverified=allow_unverified)

    def push_to_hub(self, repo_id: str, *, format: str = "tl-tunedlens", training: dict[str, Any] | None = None,
                    repo_type: str = "model", path_in_repo: str | None = None, revision: str | None = None,
                    private: bool | None = None, token: str | None = None,
                    commit_message: str | None = None) -> str:
        """Save the lens (``format``) and upload it to ``repo_id`` (created if needed); returns the commit URL."""
        return artifacts.upload_lens(lambda folder: self.save(folder, training=training, format=format), repo_id,
                                     repo_type=repo_type, path_in_repo=path_in_repo, revision=revision,
                                     private=private, token=token, commit_message=commit_message)


def _checked_hooks(lens: Lens, model: Model) -> Lens:
    """``lens``, after checking that ``model`` has every hook point it reads."""
    missing = [name for name in lens.hook_names if name not in model.hook_dict]
    if missing:
        raise LensError(f"the model has no hook point {missing[0]!r}: pass residual hook names of this model")
    return lens
