"""The optimizer equals the paper's formula (§5), across rate changes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alexnet_jax import optim


def _params():
  k1, k2 = jax.random.split(jax.random.key(0))
  return {"conv": {"kernel": jax.random.normal(k1, (3, 4)),
                   "bias": jax.random.normal(k2, (4,))}}


def _grads(step):
  key = jax.random.fold_in(jax.random.key(1), step)
  k1, k2 = jax.random.split(key)
  return {"conv": {"kernel": jax.random.normal(k1, (3, 4)),
                   "bias": jax.random.normal(k2, (4,))}}


@pytest.mark.parametrize("decay_biases", [False, True])
def test_paper_update_rule_across_learning_rate_drops(decay_biases):
  """Hand-written loop of v <- 0.9 v - wd eps w - eps g; w <- w + v."""
  lrs = [0.01] * 4 + [0.001] * 4 + [0.0001] * 3  # Two drops by 10.
  tx = optim.paper_sgd(lrs[0], momentum=0.9, weight_decay=5e-4,
                       decay_biases=decay_biases)
  params = _params()
  state = tx.init(params)
  w = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  v = jax.tree.map(np.zeros_like, w)
  for step, eps in enumerate(lrs):
    state = optim.set_learning_rate(state, eps)
    g = _grads(step)
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    for name in ("kernel", "bias"):
      wd = 5e-4 if (name == "kernel" or decay_biases) else 0.0
      vv, ww = v["conv"][name], w["conv"][name]
      vv[...] = 0.9 * vv - wd * eps * ww - eps * np.asarray(g["conv"][name])
      ww += vv
  for name in ("kernel", "bias"):
    np.testing.assert_allclose(params["conv"][name], w["conv"][name],
                               rtol=1e-5, atol=1e-7)


def test_differs_from_raw_gradient_momentum_after_a_drop():
  """optax.sgd(momentum) rescales old velocity when eps drops; ours not."""
  params = {"w": jnp.ones(3)}
  ours = optim.paper_sgd(0.1, weight_decay=0.0)
  ours_state = ours.init(params)
  theirs = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1,
                                               momentum=0.9)
  theirs_state = theirs.init(params)
  g = {"w": jnp.ones(3)}
  u1, ours_state = ours.update(g, ours_state, params)
  t1, theirs_state = theirs.update(g, theirs_state, params)
  np.testing.assert_allclose(u1["w"], t1["w"], rtol=1e-6)  # Same until...
  ours_state = optim.set_learning_rate(ours_state, 0.01)
  theirs_state.hyperparams["learning_rate"] = jnp.asarray(0.01)
  u2, _ = ours.update(g, ours_state, params)
  t2, _ = theirs.update(g, theirs_state, params)
  # Paper: v = 0.9 * (-0.1) - 0.01 = -0.1; raw trace: -0.01 * 1.9 = -0.019.
  np.testing.assert_allclose(u2["w"], -0.1, rtol=1e-6)
  np.testing.assert_allclose(t2["w"], -0.019, rtol=1e-6)


def test_step_schedule():
  config = optim.default_config()
  config.schedule = "steps"
  config.boundary_epochs = (1.5, 3)
  tx = optim.make_optimizer(config, steps_per_epoch=2)
  params = {"w": jnp.zeros(())}
  state = tx.init(params)
  seen = []
  for _ in range(8):
    _, state = tx.update({"w": jnp.ones(())}, state, params)
    # The state records the rate the update just used.
    seen.append(float(optim.get_learning_rate(state)))
  np.testing.assert_allclose(seen, [.01] * 3 + [.001] * 3 + [.0001] * 2,
                             rtol=1e-6)


def test_plateau_schedule_drops_three_times_then_stops():
  s = optim.PlateauSchedule(base_lr=0.01, patience=1)
  assert s.update(0.50) == pytest.approx(0.01)  # Improves.
  assert s.update(0.40) == pytest.approx(0.01)
  assert s.update(0.41) == pytest.approx(0.001)  # Stopped improving.
  assert s.update(0.30) == pytest.approx(0.001)
  assert s.update(0.30) == pytest.approx(0.0001)  # Equal is not better.
  assert s.update(0.31) == pytest.approx(0.00001)
  assert not s.done
  assert s.update(0.32) == pytest.approx(0.00001)
  assert s.done  # Reduced three times, then stopped improving: terminate.
  restored = optim.PlateauSchedule(base_lr=0.01)
  restored.load_state_dict(s.state_dict())
  assert restored.learning_rate == s.learning_rate and restored.done


def test_plateau_patience_and_bad_values():
  s = optim.PlateauSchedule(base_lr=1.0, patience=2)
  s.update(0.5)
  assert s.update(0.6) == 1.0  # One bad evaluation: wait.
  assert s.update(0.6) == pytest.approx(0.1)
  with pytest.raises(ValueError, match="not finite"):
    s.update(float("nan"))


def test_unknown_schedule_is_a_clear_error():
  config = optim.default_config()
  config.schedule = "cosine"
  with pytest.raises(ValueError, match=r"optim.schedule='cosine'"):
    optim.make_optimizer(config)
