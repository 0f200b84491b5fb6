"""Token interventions through any lens (lens vectors, steering, token ablation, swaps) on tiny random models of
both backends: each hook does to the residual stream exactly what it says, and nothing elsewhere."""

from __future__ import annotations

import pytest
import torch

from conftest import BACKENDS, make_tiny_model, random_tuned_lens
from tl_tunedlens import LensError, LogitLens, TunedLens
from tl_tunedlens.core.saes import SiteFilter

LAYER = 2   # a lens layer in the middle of the 3-block tiny models


def make_lens(kind: str, model):
    return LogitLens.from_model(model) if kind == "logit" else random_tuned_lens(model)


def residual_at(model, lens, tokens, layer, hooks=()):
    """The residual stream at lens ``layer`` as the rest of the model sees it, after ``hooks``."""
    seen = {}

    def grab(resid, hook):
        seen["resid"] = resid.detach().clone()

    model.run_with_hooks(tokens, fwd_hooks=[*hooks, (SiteFilter([lens.hook_names[layer]]), grab)])
    return seen["resid"].double()


@pytest.fixture(params=[(backend, lens) for backend in BACKENDS for lens in ("logit", "tuned")], ids="-".join)
def setup(request):
    backend, lens_kind = request.param
    model = make_tiny_model("RMS", backend=backend)
    return model, make_lens(lens_kind, model)


def test_lens_vectors_are_the_linear_part_transposed_times_the_unembedding(setup):
    model, lens = setup
    ids = [3, 8, 20]
    w_u = model.W_U.detach().double()[:, ids]
    linear = torch.eye(lens.d_model, dtype=torch.float64)
    if isinstance(lens, TunedLens):   # h + A h + b: the bias plays no part
        linear = linear + lens.translators[LAYER].weight.detach().double()
    expected = (linear.T @ w_u).T
    assert torch.allclose(lens.lens_vectors(model, ids, LAYER).double(), expected, atol=1e-5)
    assert torch.allclose(lens.lens_vectors(None, ids, lens.hook_names[LAYER]).double(), expected, atol=1e-5)
    last = lens.n_layers   # the final residual: no translator, the unembedding's columns
    assert torch.allclose(lens.lens_vectors(model, ids, last).double(), w_u.T, atol=1e-6)


def test_token_ablation_leaves_zero_projection_on_the_lens_vectors(setup, tiny_tokens):
    model, lens = setup
    ids = [3, 8, 20]
    vectors = lens.lens_vectors(model, ids, LAYER).double()
    units = vectors / vectors.norm(dim=-1, keepdim=True)
    clean = residual_at(model, lens, tiny_tokens, LAYER)
    ablated = residual_at(model, lens, tiny_tokens, LAYER, lens.token_ablation_hooks(model, ids, [LAYER]))
    scale = clean.norm(dim=-1).max()
    assert (clean @ units.T).abs().max() > 0.05 * scale   # there was something to remove
    assert (ablated @ units.T).abs().max() < 1e-5 * scale
    removed = clean - ablated   # lies in the span of the vectors: nothing else changed
    in_span = removed @ torch.linalg.pinv(vectors) @ vectors
    assert torch.allclose(removed, in_span, atol=1e-5 * float(scale))


def test_token_ablation_at_some_positions_changes_only_those(setup, tiny_tokens):
    model, lens = setup
    clean = residual_at(model, lens, tiny_tokens, LAYER)
    ablated = residual_at(model, lens, tiny_tokens, LAYER, lens.token_ablation_hooks(model, 5, LAYER, positions=[1, -1]))
    changed = (ablated - clean).abs().amax(dim=(0, 2)) > 1e-6
    assert changed.tolist() == [i in (1, clean.shape[1] - 1) for i in range(clean.shape[1])]


def test_steering_adds_alpha_times_the_median_norm_along_the_unit_lens_vector(setup, tiny_tokens):
    model, lens = setup
    vector = lens.lens_vectors(model, 7, LAYER)[0].double()
    clean = residual_at(model, lens, tiny_tokens, LAYER)
    steered = residual_at(model, lens, tiny_tokens, LAYER,
                          lens.steering_hooks(model, 7, [LAYER], alpha=3.0, positions=[1, -1]))
    median = clean[:, [1, -1]].norm(dim=-1).flatten().median()   # over batch and steered positions together
    expected = clean.clone()
    expected[:, [1, -1]] += 3.0 * median * vector / vector.norm()
    assert torch.allclose(steered, expected, atol=1e-5 * float(clean.norm(dim=-1).max()))
    assert torch.equal(residual_at(model, lens, tiny_tokens, LAYER, lens.steering_hooks(model, 7, [LAYER], alpha=0.0)),
                       clean)


@pytest.mark.parametrize("backend", BACKENDS)
def test_steering_the_last_position_leaves_earlier_outputs_alone_and_works_at_every_lens_layer(backend, tiny_tokens):
    model = make_tiny_model("LN", backend=backend)
    lens = random_tuned_lens(model)
    clean = model(tiny_tokens)
    for layer in lens.layers:   # the embeddings and the final residual too
        out = model.run_with_hooks(tiny_tokens, fwd_hooks=lens.steering_hooks(model, 7, layer, positions=[-1]))
        assert torch.allclose(out[:, :-1], clean[:, :-1], atol=1e-5)
        assert (out[:, -1] - clean[:, -1]).abs().max() > 1e-2


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_swap_exchanges_the_two_lens_coordinates_and_nothing_else(setup, tiny_tokens, alpha):
    model, lens = setup
    vectors = lens.lens_vectors(model, [5, 9], LAYER).double()
    pinv = torch.linalg.pinv(vectors.T)
    clean = residual_at(model, lens, tiny_tokens, LAYER)
    swapped = residual_at(model, lens, tiny_tokens, LAYER, lens.swap_hooks(model, 5, 9, [LAYER], alpha=alpha))
    before, after = clean @ pinv.T, swapped @ pinv.T
    scale = float(before.abs().max())
    assert (before[..., 0] - before[..., 1]).abs().max() > 0.05 * scale
    assert torch.allclose(after, before + alpha * (before[..., [1, 0]] - before), atol=1e-5 * scale)
    moved = swapped - clean
    assert torch.allclose(moved, moved @ pinv.T @ vectors, atol=1e-5 * float(clean.norm(dim=-1).max()))


def test_clamped_swap_installs_the_clean_runs_exchanged_coordinates(setup, tiny_tokens):
    model, lens = setup
    layers = [1, 2]
    _, cache = model.run_with_cache(tiny_tokens, names_filter=lens.hook_names)
    pinv = torch.linalg.pinv(lens.lens_vectors(model, [5, 9], 2).double().T)
    clean = (residual_at(model, lens, tiny_tokens, 2) @ pinv.T)[..., [1, 0]]
    live = residual_at(model, lens, tiny_tokens, 2, lens.swap_hooks(model, 5, 9, layers)) @ pinv.T
    clamped = residual_at(model, lens, tiny_tokens, 2, lens.swap_hooks(model, 5, 9, layers, clamp_to=cache)) @ pinv.T
    scale = float(clean.abs().max())
    assert torch.allclose(clamped, clean, atol=1e-5 * scale)
    assert not torch.allclose(live, clean, atol=1e-3 * scale)   # the live swap at layer 2 sees layer 1's swap


@pytest.mark.bridge
def test_string_tokens_on_a_bridge_and_the_lens_own_model_by_default(tiny_tokens):
    model = make_tiny_model("RMS", backend="bridge")
    lens = random_tuned_lens(model)
    assert torch.equal(lens.lens_vectors(None, ["t5", "t9"], LAYER), lens.lens_vectors(model, [5, 9], LAYER))
    by_name = model.run_with_hooks(tiny_tokens, fwd_hooks=lens.steering_hooks(None, "t7", ["blocks.1.hook_out"]))
    by_number = model.run_with_hooks(tiny_tokens, fwd_hooks=lens.steering_hooks(model, 7, [2]))
    assert torch.equal(by_name, by_number)


@pytest.mark.parametrize("backend", BACKENDS)
def test_subspace_ablation_keeps_its_signature_and_token_ablation_is_pointed_to(backend, tiny_tokens):
    model = make_tiny_model("RMS", backend=backend)
    lens = random_tuned_lens(model)
    subspace = torch.linalg.qr(torch.randn(lens.d_model, 2)).Q
    assert len(lens.ablation_hooks(LAYER, subspace, method="zero")) == 1
    with pytest.raises(LensError, match="token_ablation_hooks"):
        lens.ablation_hooks(model, [3], [LAYER])


BAD_CALLS = {
    "two tokens to steer": (lambda lens, m: lens.steering_hooks(m, [3, 4], [1]), "one token"),
    "same token swap": (lambda lens, m: lens.swap_hooks(m, 3, 3, [1]), "same token"),
    "id outside the vocabulary": (lambda lens, m: lens.lens_vectors(m, 37, 1), "outside the vocabulary"),
    "float token": (lambda lens, m: lens.lens_vectors(m, 3.0, 1), "single-token string or an integer id"),
    "no layers": (lambda lens, m: lens.steering_hooks(m, 3, None), "layers to intervene"),
    "layer out of range": (lambda lens, m: lens.token_ablation_hooks(m, 3, [9]), "out of range"),
    "multi-token string": (lambda lens, m: lens.lens_vectors(m, "t5 t6", 1), "not a single token"),
    "clamp without the site": (lambda lens, m: lens.swap_hooks(m, 3, 4, [1], clamp_to={}), "clamp_to has no activation"),
}


@pytest.mark.bridge
@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_intervention_calls_are_one_line_errors(case):
    model = make_tiny_model("RMS", backend="bridge")
    call, message = BAD_CALLS[case]
    with pytest.raises(LensError, match=message) as err:
        call(LogitLens.from_model(model), model)
    assert "\n" not in str(err.value)


def test_string_tokens_without_a_tokenizer_are_a_one_line_error():
    model = make_tiny_model("RMS", backend="hooked")
    with pytest.raises(LensError, match="no model with a tokenizer") as err:
        LogitLens.from_model(model).lens_vectors(model, "t5", 1)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_intervention_hooks_refuse_another_model(backend, tiny_tokens):
    model, other = make_tiny_model("RMS", backend=backend), make_tiny_model("RMS", backend=backend, seed=5)
    hooks = LogitLens.from_model(model).steering_hooks(None, 3, [1])
    with pytest.raises(LensError, match="of a model other than"):
        other.run_with_hooks(tiny_tokens, fwd_hooks=hooks)
