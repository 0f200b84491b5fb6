"""Training to a wall-clock budget: the plan's arithmetic, stopping before the deadline with a
checkpoint, the plan recorded and reused on resume, and ``train --time-budget``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from conftest import make_tiny_model
from tl_tunedlens import LensError, TunedLens
from tl_tunedlens.artifacts.checkpoint import CHECKPOINT_NAME, load_checkpoint
from tl_tunedlens.training import TrainConfig, train_lens
from tl_tunedlens.training.budget import (FIRST_FIT_TOKENS, FIT_SHARE, MAX_FIT_TOKENS, RESERVE_SHARE, VALIDATION_COST, WARMUP_SHARE,
                                          BudgetPlan, Rates, plan_budget, saved_plan, steps_that_fit)
from tl_tunedlens.training.trainer import plan_run

RATES = Rates(forward=1e-3, stats=1e-4, kl_layer=1e-3, warmup_s=2.0)  # seconds per token


@pytest.fixture(scope="module")
def model():
    return make_tiny_model("RMS", n_layers=3, d_model=16, d_vocab=37)


@pytest.fixture(scope="module")
def seqs():
    return torch.randint(0, 37, (64, 16), generator=torch.Generator().manual_seed(0))


def test_plan_splits_the_budget_between_the_start_and_whole_steps():
    cfg = TrainConfig(time_budget=102.0, tokens_per_step=256, validation_tokens=128)
    plan = plan_budget(cfg, RATES, seq_len=64, n_layers=10)
    left = 102.0 - 2.0 - RESERVE_SHARE * 102.0
    assert left >= 0.9 * 102.0 - 2.0   # what the plan may spend on fitting: all but the warm-up and a small reserve
    first = FIRST_FIT_TOKENS * 1.1e-3   # the laptop preset's sample first, then a share of the rest
    assert plan.lstsq_tokens == int(FIRST_FIT_TOKENS + FIT_SHARE * (left - first) / 1.1e-3) // 64 * 64
    # with scoring the validation slice once every validate_every steps
    step_s = 256 * (1e-3 + 10.5 * 1e-3) + 128 / cfg.validate_every * VALIDATION_COST * 10.5 * 1e-3
    val_s = 128 * (1e-3 + VALIDATION_COST * 10.5 * 1e-3)
    assert plan.predicted_step_s == pytest.approx(step_s)
    assert plan.steps == int((left - plan.predicted_fit_s - val_s) // step_s) and plan.steps >= 1
    assert plan.predicted_fit_s + val_s + plan.steps * step_s <= left
    assert left - (plan.predicted_fit_s + val_s + plan.steps * step_s) < step_s   # no whole step left unplanned
    assert plan.apply(cfg).lstsq_tokens == plan.lstsq_tokens and plan.apply(cfg).steps == plan.steps
    assert BudgetPlan.from_info(plan.info()) == plan


def test_plan_caps_the_start_and_gives_it_all_when_no_step_fits():
    huge = plan_budget(TrainConfig(time_budget=1e6), RATES, seq_len=64, n_layers=10)
    assert huge.lstsq_tokens == MAX_FIT_TOKENS and huge.steps > 1000
    short = plan_budget(TrainConfig(time_budget=5.0, tokens_per_step=4096), RATES, seq_len=64, n_layers=10)
    assert short.steps == 0 and short.lstsq_tokens == int((3.0 - RESERVE_SHARE * 5.0) / 1.1e-3) // 64 * 64
    identity = plan_budget(TrainConfig(time_budget=60.0, init="identity", optimizer="adam"), RATES, seq_len=64, n_layers=10)
    assert identity.lstsq_tokens == 0 and identity.predicted_fit_s == 0


def test_measured_plan_leaves_the_lens_untouched(model):
    lens = TunedLens.from_model(model)
    before = {k: v.clone() for k, v in lens.state_dict().items()}
    plan = plan_run(model, lens, TrainConfig(time_budget=30.0, tokens_per_step=64), seq_len=16)
    assert all(torch.equal(before[k], v) for k, v in lens.state_dict().items())
    assert all(p.grad is None for p in lens.parameters())
    assert plan.rates.forward > 0 and plan.rates.kl_layer > 0 and 0 < plan.rates.warmup_s < 30
    # how many steps fit depends on this machine's speed and load: only the plan's own arithmetic is checked
    assert plan.lstsq_tokens % 16 == 0 and plan.lstsq_tokens >= 16
    assert plan.predicted_fit_s + plan.steps * plan.predicted_step_s <= 30.0 - plan.rates.warmup_s
    with pytest.raises(LensError, match="time_budget"):
        plan_run(model, lens, TrainConfig(), seq_len=16)


class FakeClock:
    """``time.perf_counter`` of the trainer and the least-squares pass: every reading advances it by
    ``tick`` seconds, so a budget run takes the same number of steps however loaded the machine is."""

    def __init__(self, tick: float = 0.01):
        self.now, self.tick = 1000.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now


@pytest.fixture
def clock(monkeypatch):
    from tl_tunedlens.training import budget, lstsq, trainer, validation

    fake = FakeClock()
    for module in (trainer, lstsq, budget, validation):
        monkeypatch.setattr(module, "time", SimpleNamespace(perf_counter=fake.perf_counter))
    return fake


def test_a_budget_stops_before_the_deadline_with_a_checkpoint_and_resume_keeps_the_plan(model, seqs, tmp_path, clock):
    clock.tick = 0.1   # each step reads the clock a few times: ~25 steps fit in the 8 s
    cfg = TrainConfig(time_budget=8.0, tokens_per_step=64, checkpoint_every=0)
    plan = BudgetPlan(budget_s=8.0, lstsq_tokens=128, steps=1000, tokens_per_step=64, predicted_fit_s=0.01,
                      predicted_step_s=0.5, rates=Rates(1e-4, 1e-5, 1e-4, warmup_s=0.0))
    lens = TunedLens.from_model(model)
    t0 = clock.now
    result = train_lens(model, lens, seqs, cfg, out_dir=tmp_path, progress=False, plan=plan)
    # every step ends before the deadline (t0 + 8 s); after it, only the final checkpoint and summary read the clock
    assert clock.now - t0 <= 8.0 + 5 * clock.tick and sum(result.step_seconds) < 8.0
    assert clock.now - t0 > 8.0 - 0.5 - 5 * clock.tick     # and it stopped only when one more step would not fit
    info = result.info
    assert 1 <= result.steps < 1000 and info["steps"] == result.steps   # re-planned from the time left
    assert info["stopped_early"] == (result.steps < info["budget_used"]["steps_planned"])
    assert info["budget"]["steps"] == 1000 and info["budget"]["lstsq_tokens"] == 128
    assert info["lstsq_tokens"] == 128
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)      # written at the stop, whatever checkpoint_every says
    assert state["step"] == result.steps and saved_plan(tmp_path) == plan
    assert -1e-6 <= state["budget_left_s"] < plan.predicted_step_s
    again = train_lens(model, TunedLens.from_model(model), seqs, cfg, out_dir=tmp_path, resume=True, progress=False)
    assert again.info["budget"] == info["budget"]            # the checkpoint's plan, not a new one
    assert again.steps == result.steps                        # the budget was already spent


def test_budget_run_without_a_given_plan_measures_one(model, seqs, clock):
    """On the fake clock (each reading 10 ms later): the warm-up measures rates and stays within its share,
    the run ends within the budget, and the training info agrees with itself."""
    t0 = clock.now
    result = train_lens(model, TunedLens.from_model(model), seqs, TrainConfig(time_budget=6.0, tokens_per_step=64,
                                                                             checkpoint_every=0), progress=False)
    plan = result.info["budget"]
    assert plan["budget_s"] == 6.0 and 0 < plan["rates"]["warmup_s"] <= WARMUP_SHARE * 6.0 + 5 * clock.tick
    assert plan["rates"]["forward"] > 0 and plan["rates"]["kl_layer"] > 0
    used = result.info["budget_used"]
    assert clock.now - t0 <= 6.0 + 5 * clock.tick and used["steps_run"] == result.steps == result.info["steps"]
    assert result.info["stopped_early"] == (result.steps < used["steps_planned"])
    assert "fit (warm-up" in plan["covers"]


def test_a_plan_of_no_steps_is_the_start_alone_and_says_so(model, seqs, tmp_path, clock):
    """A budget that leaves room for the least-squares start only: 0 KL steps planned, none run, and the
    training info does not claim the run stopped early."""
    from tl_tunedlens.cli.train import training_summary

    cfg = TrainConfig(time_budget=3.0, tokens_per_step=64, checkpoint_every=0)
    plan = BudgetPlan(budget_s=3.0, lstsq_tokens=128, steps=0, tokens_per_step=64, predicted_fit_s=1.0,
                      predicted_step_s=50.0, rates=Rates(1e-4, 1e-5, 1e-1, warmup_s=0.2))
    result = train_lens(model, TunedLens.from_model(model), seqs, cfg, progress=False, plan=plan)
    assert result.steps == 0 and result.info["steps"] == 0 and result.info["stopped_early"] is False
    assert result.info["lstsq_tokens"] == 128
    summary = training_summary(result)
    assert "least-squares start on 128 tokens" in summary and "planned" not in summary


def test_a_budget_too_short_for_one_step_from_the_identity_is_refused():
    cfg = TrainConfig(time_budget=3.0, init="identity", tokens_per_step=4096)
    with pytest.raises(LensError, match="less than one KL step .* raise --time-budget"):
        plan_budget(cfg, RATES, seq_len=64, n_layers=10)


def test_steps_are_replanned_from_the_time_left():
    assert steps_that_fit(10.0, 2.0, step=3, max_steps=100) == 8
    assert steps_that_fit(-1.0, 2.0, step=3, max_steps=100) == 3      # never fewer than those done
    assert steps_that_fit(1e6, 2.0, step=3, max_steps=40) == 40       # nor more than the data holds


def test_a_budget_is_filled_whatever_the_warm_up_predicted(model, seqs, clock):
    """The warm-up's step time is 10x too high here: the run re-plans from the time left and the measured
    steps, fits for at least 90% of the budget, ends its schedule with its last step, and says so."""
    clock.tick = 0.05
    cfg = TrainConfig(time_budget=20.0, tokens_per_step=32, validation_tokens=32, lstsq_tokens=64, checkpoint_every=0)
    plan = BudgetPlan(budget_s=20.0, lstsq_tokens=64, steps=2, tokens_per_step=32, predicted_fit_s=0.5,
                      predicted_step_s=8.0, rates=Rates(1e-4, 1e-5, 1e-3, warmup_s=0.0))
    long = torch.randint(0, 37, (400, 16), generator=torch.Generator().manual_seed(1))
    result = train_lens(model, TunedLens.from_model(model), long, cfg, progress=False, plan=plan)
    used = result.info["budget_used"]
    assert used["steps_first_planned"] == 2 and result.steps > 2
    assert 0.9 * 20.0 <= used["seconds"] <= 20.0 + 2 * clock.tick and used["fit_seconds"] <= used["seconds"]
    assert result.info["stopped_early"] is (result.steps < used["steps_planned"])
    assert used["steps_run"] == result.steps == result.info["steps"]


def test_the_last_scoring_on_the_slice_fits_in_the_budget(model, seqs, clock, monkeypatch):
    """Scoring the slice is slow here (1 s on the fake clock, against 0.05 s per clock reading): the steps
    left unscored when the time runs out are scored after the loop, and that scoring still ends within the
    budget (the re-plan keeps its time)."""
    from tl_tunedlens.training.validation import Validation

    clock.tick = 0.05
    real = Validation.layer_kl

    def slow(self, *args, **kwargs):
        clock.now += 1.0
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Validation, "layer_kl", slow)
    cfg = TrainConfig(time_budget=20.0, tokens_per_step=32, validation_tokens=32, lstsq_tokens=64, validate_every=10,
                      checkpoint_every=0)
    plan = BudgetPlan(budget_s=20.0, lstsq_tokens=64, steps=2, tokens_per_step=32, predicted_fit_s=0.5,
                      predicted_step_s=0.5, rates=Rates(1e-4, 1e-5, 1e-3, warmup_s=0.0))
    long = torch.randint(0, 37, (400, 16), generator=torch.Generator().manual_seed(1))
    t0 = clock.now
    result = train_lens(model, TunedLens.from_model(model), long, cfg, progress=False, plan=plan)
    assert result.steps > 10
    assert clock.now - t0 <= 20.0 + 5 * clock.tick
    assert result.info["budget_used"]["seconds"] <= 20.0 + 2 * clock.tick


def test_a_step_is_taken_only_if_it_and_the_last_scoring_fit(clock):
    """With 3 s left, a 1 s step fits unless the slice's last scoring took more than 2 s."""
    from tl_tunedlens.training.budget import out_of_time

    clock.tick = 0.0
    run = SimpleNamespace(deadline=clock.now + 3.0, step_seconds=[1.0], plan=None, validation=SimpleNamespace(seconds=1.5))
    assert not out_of_time(run)
    run.validation.seconds = 2.5
    assert out_of_time(run)
    run.validation = None   # no slice: nothing to keep
    assert not out_of_time(run)


def test_a_longer_budget_never_gets_a_smaller_sample_or_fewer_steps():
    """Never fewer steps; among the budgets with KL steps (and among those without) never a smaller sample. A
    budget just too short for one step puts its whole time into the sample, which may then be larger than the
    sample of a budget with one step (a KL step is worth more than that many least-squares tokens)."""
    budgets = (30, 60, 90, 100, 110, 120, 150, 300, 600, 3000)
    plans = [plan_budget(TrainConfig(time_budget=t), RATES, seq_len=64, n_layers=10) for t in budgets]
    assert all(a.steps <= b.steps for a, b in zip(plans, plans[1:]))
    for kind in ([p for p in plans if p.steps], [p for p in plans if not p.steps]):
        assert all(a.lstsq_tokens <= b.lstsq_tokens for a, b in zip(kind, kind[1:]))
    assert any(p.steps for p in plans) and any(not p.steps for p in plans)
    assert plans[2].lstsq_tokens >= FIRST_FIT_TOKENS and plans[-1].lstsq_tokens <= MAX_FIT_TOKENS


def test_a_step_costs_a_fixed_part_per_token_plus_each_layer():
    """The warm-up times one layer and two layers in one call: the difference is a layer's marginal cost, the
    rest (the target distribution) is paid once per token (a plan from before it counts half a layer)."""
    rates = Rates(forward=1e-3, stats=0.0, kl_layer=2e-3, warmup_s=0.0, kl_fixed=5e-3)
    assert rates.step_seconds(100, 10) == pytest.approx(100 * (1e-3 + 10 * 2e-3 + 5e-3))
    assert rates.step_seconds(100, 10, 50) == pytest.approx(100 * 26e-3 + 50 * VALIDATION_COST * 25e-3)
    assert Rates(1e-3, 0.0, 2e-3, 0.0).kl_token(10) == pytest.approx(10.5 * 2e-3)
    restored = BudgetPlan.from_info({**plan_budget(TrainConfig(time_budget=600), rates, 64, 10).info()})
    assert restored.rates == rates
