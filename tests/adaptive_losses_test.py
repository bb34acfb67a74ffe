"""FreeMatch's and SoftMatch's losses against NumPy loops written here from the papers'
equations (random inputs), plus hand-checked tiny cases.

FreeMatch (Wang et al., ICLR 2023): tau_t = m tau + (1-m) mean max p; p~_t = m p~ + (1-m) mean p;
tau_t(c) = p~_t(c) / max p~_t * tau_t; L_u = mean 1[max p >= tau_t(argmax p)] CE(Q, argmax p);
L_f = -H(SumNorm(p~_t / h~_t), SumNorm(p_bar / h_bar)) over the kept examples.
SoftMatch (Chen et al., ICLR 2023): mu_t, sigma_t^2 EMAs of the mean and unbiased variance of
max p; lambda(p) = exp(-(min(max p - mu_t, 0))^2 / (2 sigma_t^2 / n^2)); UA(p) = Normalize(
p / C / E[p]); L_u = mean lambda CE(Q, argmax p).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comatch_jax import config_lib
from comatch_jax.core import losses, methods


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# ------------------------------------------------------------------ references (loops, NumPy)
def reference_freematch(p, strong_logits, tau, p_model, hist_model, m):
    batch, classes = p.shape
    tau = m * tau + (1 - m) * sum(max(p[b]) for b in range(batch)) / batch
    p_model = m * p_model + (1 - m) * sum(p[b] for b in range(batch)) / batch
    hist = np.zeros(classes)
    for b in range(batch):
        hist[int(np.argmax(p[b]))] += 1.0 / batch
    hist_model = m * hist_model + (1 - m) * hist
    thresholds = np.array([p_model[c] / max(p_model) * tau for c in range(classes)])
    q = _softmax(strong_logits)
    mask = np.zeros(batch)
    loss_u = 0.0
    for b in range(batch):
        label = int(np.argmax(p[b]))
        mask[b] = float(max(p[b]) >= thresholds[label])
        loss_u += mask[b] * -np.log(q[b, label]) / batch
    kept = [b for b in range(batch) if mask[b]]
    if kept:
        p_bar = sum(q[b] for b in kept) / len(kept)
        h_bar = np.zeros(classes)
        for b in kept:
            h_bar[int(np.argmax(q[b]))] += 1.0 / len(kept)
        x = np.array([p_model[c] / hist_model[c] for c in range(classes)])
        x /= x.sum()
        y = np.array([p_bar[c] / h_bar[c] if h_bar[c] > 0 else 0.0 for c in range(classes)])
        y /= y.sum()
        loss_f = sum(x[c] * np.log(y[c] + 1e-12) for c in range(classes))
    else:
        loss_f = 0.0
    return thresholds, tau, p_model, hist_model, mask, loss_u, loss_f


def reference_softmatch(p, strong_logits, mu, var, class_mean, count, m, n_sigma, align):
    batch, classes = p.shape
    weighting = p
    if align:
        batch_mean = sum(p[b] for b in range(batch)) / batch
        class_mean = batch_mean if count == 0 else m * class_mean + (1 - m) * batch_mean
        weighting = np.array([p[b] / classes / class_mean for b in range(batch)])
        weighting /= weighting.sum(-1, keepdims=True)
    confidence = np.array([max(weighting[b]) for b in range(batch)])
    mean = confidence.sum() / batch
    unbiased = sum((c - mean) ** 2 for c in confidence) / (batch - 1)
    mu = m * mu + (1 - m) * mean
    var = m * var + (1 - m) * unbiased
    weights = np.array(
        [1.0 if c >= mu else np.exp(-((c - mu) ** 2) / (2 * var / n_sigma**2)) for c in confidence]
    )
    q = _softmax(strong_logits)
    loss_u = sum(weights[b] * -np.log(q[b, int(np.argmax(p[b]))]) for b in range(batch)) / batch
    return weights, mu, var, class_mean, loss_u


@functools.partial(jax.jit, static_argnames="m")  # one program, not one per op
def _freematch(p, strong, tau, p_model, hist_model, m):
    thresholds, tau, p_model, hist_model = losses.freematch_thresholds(
        jnp.asarray(p, jnp.float32), tau, p_model, hist_model, momentum=m
    )
    loss_u, mask = losses.hard_pseudo_label_loss(strong, p, threshold=thresholds)
    loss_f = losses.freematch_fairness_loss(strong, mask, p_model, hist_model)
    return thresholds, tau, p_model, hist_model, mask, loss_u, loss_f


@pytest.mark.parametrize(
    "seed,batch,classes,m", [(0, 16, 10, 0.999), (1, 7, 4, 0.5), (2, 32, 3, 0.9)]
)
def test_freematch_matches_reference(seed, batch, classes, m):
    rng = np.random.default_rng(seed)
    p = _softmax(rng.normal(size=(batch, classes)) * 2).astype(np.float32)
    strong = (rng.normal(size=(batch, classes)) * 2).astype(np.float32)
    tau = np.float32(rng.uniform(0.6, 0.9))
    p_model = _softmax(rng.normal(size=classes)).astype(np.float32)
    hist_model = _softmax(rng.normal(size=classes)).astype(np.float32)
    expected = reference_freematch(
        p.astype(np.float64), strong.astype(np.float64), tau, p_model, hist_model, m
    )
    got = _freematch(p, strong, tau, p_model, hist_model, m)
    names = ["thresholds", "tau", "p_model", "hist_model", "mask", "loss_u", "loss_f"]
    for name, e, g in zip(names, expected, got):
        np.testing.assert_allclose(np.asarray(g), e, rtol=2e-5, atol=1e-6, err_msg=name)
    assert 0 < float(np.mean(got[4])) < 1, "the case keeps some examples and drops others"


def test_freematch_hand_case():
    # p = [[.9, .1], [.6, .4]], tau_0 = .5, p~_0 = h~_0 = [.5, .5], m = .5:
    # tau = .25 + .5 * .75 = .625; p~ = .25 + .5 * [.75, .25] = [.625, .375];
    # tau(c) = [.625, .375]; mask = [.9 >= .625, .6 >= .625] = [1, 0]; h~ = [.75, .25].
    # Q_0 = [.8, .2]: L_u = -log(.8) / 2. Kept: p_bar = [.8, .2], h_bar = [1, 0] ->
    # y = [1, 0]; x = SumNorm([.625/.75, .375/.25]) = [5/14, 9/14]; L_f = 9/14 log(1e-12).
    p = np.array([[0.9, 0.1], [0.6, 0.4]], np.float32)
    strong = np.log(np.array([[0.8, 0.2], [0.3, 0.7]], np.float32))
    half = np.array([0.5, 0.5], np.float32)
    thresholds, tau, p_model, hist_model, mask, loss_u, loss_f = _freematch(
        p, strong, np.float32(0.5), half, half, 0.5
    )
    np.testing.assert_allclose(thresholds, [0.625, 0.375], rtol=1e-6)
    assert float(tau) == pytest.approx(0.625)
    np.testing.assert_allclose(p_model, [0.625, 0.375], rtol=1e-6)
    np.testing.assert_allclose(hist_model, [0.75, 0.25], rtol=1e-6)
    np.testing.assert_array_equal(mask, [1.0, 0.0])
    assert float(loss_u) == pytest.approx(-np.log(0.8) / 2, rel=1e-5)
    assert float(loss_f) == pytest.approx(9 / 14 * np.log(1e-12), rel=1e-5)


def test_freematch_fairness_is_zero_without_kept_examples_and_its_gradient_is_the_strong_views():
    rng = np.random.default_rng(3)
    strong = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
    p_model = jnp.full((5,), 0.2)
    # jitted: one program each instead of one per op
    loss = jax.jit(losses.freematch_fairness_loss)
    assert float(loss(strong, jnp.zeros(6), p_model, p_model)) == 0.0
    mask = jnp.array([1.0, 1, 0, 1, 0, 1])
    grads = jax.jit(jax.grad(loss, argnums=(0, 2, 3)))(strong, mask, p_model, p_model)
    np.testing.assert_array_equal(grads[0][np.array([2, 4])], 0.0)  # dropped examples
    assert np.abs(grads[0]).max() > 0
    np.testing.assert_array_equal(grads[1], 0.0)  # the EMAs are constants
    np.testing.assert_array_equal(grads[2], 0.0)


def test_freematch_thresholds_start_low_and_rise_with_confidence():
    """From the paper's start 1/C, a confident model's thresholds rise towards its mean
    confidence (and a class it never predicts keeps a lower threshold)."""
    classes = 4
    p = np.tile(np.array([[0.97, 0.01, 0.01, 0.01]], np.float32), (8, 1))
    tau, p_model = jnp.float32(1 / classes), jnp.full((classes,), 1 / classes)
    hist = p_model
    previous = float(tau)
    for _ in range(50):
        thresholds, tau, p_model, hist = losses.freematch_thresholds(
            p, tau, p_model, hist, momentum=0.9
        )
        assert float(tau) > previous
        previous = float(tau)
    assert 0.9 < float(tau) < 0.97
    assert float(thresholds[0]) == pytest.approx(float(tau))
    assert float(thresholds[1]) < 0.2 * float(tau)


# jitted: one program, not one per op
@functools.partial(jax.jit, static_argnames=("m", "n_sigma", "align"))
def _softmatch(p, strong, mu, var, class_mean, count, m, n_sigma, align):
    weighting, new_class_mean, new_count = p, class_mean, count
    if align:
        weighting, new_class_mean, new_count = losses.uniform_alignment(
            p, class_mean, count, momentum=m
        )
    new_mu, new_var = losses.softmatch_gaussian(weighting, mu, var, momentum=m)
    weights = losses.softmatch_weights(weighting, new_mu, new_var, n_sigma=n_sigma)
    loss = losses.weighted_hard_pseudo_label_loss(strong, p, weights)
    return new_class_mean, new_count, new_mu, new_var, weights, loss


@pytest.mark.parametrize(
    "seed,batch,classes,count,n_sigma,align",
    [(0, 16, 10, 0, 1.0, True), (1, 9, 4, 3, 2.0, True), (2, 12, 6, 1, 2.0, False)],
)
def test_softmatch_matches_reference(seed, batch, classes, count, n_sigma, align):
    rng = np.random.default_rng(seed)
    m = 0.9
    p = _softmax(rng.normal(size=(batch, classes)) * 2).astype(np.float32)
    strong = (rng.normal(size=(batch, classes)) * 2).astype(np.float32)
    mu, var = np.float32(p.max(-1).mean()), np.float32(0.05)  # a plausible state
    class_mean = _softmax(rng.normal(size=classes)).astype(np.float32)
    weights, e_mu, e_var, e_class_mean, e_loss = reference_softmatch(
        p.astype(np.float64),
        strong.astype(np.float64),
        mu,
        var,
        class_mean,
        count,
        m,
        n_sigma,
        align,
    )
    new_class_mean, new_count, new_mu, new_var, got_weights, loss = _softmatch(
        p, strong, mu, var, class_mean, jnp.asarray(count), m=m, n_sigma=n_sigma, align=align
    )
    if align:
        assert int(new_count) == count + 1
    np.testing.assert_allclose(new_class_mean, e_class_mean, rtol=1e-5)
    assert float(new_mu) == pytest.approx(e_mu, rel=1e-5)
    assert float(new_var) == pytest.approx(e_var, rel=1e-5)
    np.testing.assert_allclose(got_weights, weights, rtol=1e-5, atol=1e-7)
    assert float(loss) == pytest.approx(e_loss, rel=1e-5)
    assert 0 < np.mean(weights < 1) < 1, "some weights below 1 and some at 1"


def test_softmatch_hand_case():
    # max p = [.9, .6, .5]: mean 2/3, unbiased var 0.04333...; mu_0 = .5, var_0 = 1, m = .5:
    # mu = .25 + 1/3 = 0.58333, var = .5 + .021667 = 0.521667. Weights: 1, 1 (.6 >= mu) and
    # exp(-(.5 - .58333)^2 / (2 * .521667)) = exp(-0.0066560) = 0.993366 (n_sigma = 1).
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5]], np.float32)
    mu, var = losses.softmatch_gaussian(p, np.float32(0.5), np.float32(1.0), momentum=0.5)
    assert float(mu) == pytest.approx(0.583333, rel=1e-5)
    assert float(var) == pytest.approx(0.521667, rel=1e-5)
    weights = losses.softmatch_weights(p, mu, var)
    np.testing.assert_allclose(weights, [1.0, 1.0, 0.993366], rtol=1e-5)
    # n_sigma = 2: exponent times 4.
    weights = losses.softmatch_weights(p, mu, var, n_sigma=2.0)
    assert float(weights[2]) == pytest.approx(np.exp(-4 * 0.0066560), rel=1e-4)
    # Uniform alignment from an empty estimate: E[p] = batch mean [.7, .3] of [[.9,.1],[.5,.5]]:
    # [.9/.7, .1/.3] -> [.794118, .205882]; [.5/.7, .5/.3] -> [.3, .7].
    aligned, class_mean, count = losses.uniform_alignment(
        np.array([[0.9, 0.1], [0.5, 0.5]], np.float32), np.zeros(2), jnp.asarray(0), momentum=0.5
    )
    np.testing.assert_allclose(class_mean, [0.7, 0.3], rtol=1e-6)
    np.testing.assert_allclose(aligned, [[0.794118, 0.205882], [0.3, 0.7]], rtol=1e-5)
    assert int(count) == 1
    # CE against argmax of the raw p, weighted: strong Q_b = [.8, .2] for every b.
    strong = np.log(np.full((3, 2), [0.8, 0.2], np.float32))
    loss = losses.weighted_hard_pseudo_label_loss(strong, p, jnp.array([1.0, 0.5, 0.0]))
    assert float(loss) == pytest.approx((1.0 + 0.5) * -np.log(0.8) / 3, rel=1e-5)


# ------------------------------------------------------------------ degenerate inputs, ties
def test_uniform_alignment_of_saturated_logits_is_finite():
    """A class with probability exactly 0 across the first batch (float32 softmax of
    saturated logits) has E[p](c) = 0: floored, its aligned probability is 0, not 0 / 0."""
    probs = jax.nn.softmax(jnp.array([[200.0, 0, 0], [200, 0, 1]]), axis=-1)
    assert float(jnp.min(probs)) == 0.0  # the case: exact zeros in float32
    aligned, class_mean, _ = losses.uniform_alignment(
        probs, jnp.zeros(3), jnp.asarray(0), momentum=0.9
    )
    np.testing.assert_array_equal(class_mean, [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(aligned, [[1.0, 0, 0], [1.0, 0, 0]])
    mu, var = losses.softmatch_gaussian(aligned, np.float32(0.5), np.float32(1.0), momentum=0.9)
    weights = losses.softmatch_weights(aligned, mu, var, n_sigma=2.0)
    assert np.all(np.isfinite([float(mu), float(var)])) and np.all(np.isfinite(weights))
    np.testing.assert_array_equal(weights, [1.0, 1.0])  # both at the top confidence 1


def test_inverse_or_zero_gives_zero_below_the_smallest_normal_number():
    """A never-predicted class's histogram EMA decays towards the denormals; where a device
    keeps them, 1 / h overflows to inf (inf / inf = NaN in L_f). Below the dtype's smallest
    normal number the inverse is 0, and normal numbers keep their exact inverse. float16
    shows the overflow on a CPU too (XLA's CPU flushes float32 denormals to zero)."""
    for value in (np.float32(1e-40), np.float16(1e-5)):
        x = jnp.asarray(np.array([value, 0.0, 0.5], value.dtype))
        got = np.asarray(losses._inverse_or_zero(x))
        assert np.all(np.isfinite(got)), got
        np.testing.assert_array_equal(got, np.array([0.0, 0.0, 2.0], value.dtype))
    tiny = np.finfo(np.float32).tiny
    assert float(losses._inverse_or_zero(jnp.float32(tiny))) == pytest.approx(1 / tiny)
    # In L_f a denormal histogram entry acts as an empty one (the official inf -> 0).
    rng = np.random.default_rng(5)
    strong = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    p_model = jnp.asarray([0.4, 0.3, 0.2, 0.1], jnp.float32)
    mask = jnp.ones(6)
    denormal = losses.freematch_fairness_loss(
        strong, mask, p_model, jnp.asarray(np.array([0.5, 0.3, 0.2, 1e-40], np.float32))
    )
    empty = losses.freematch_fairness_loss(strong, mask, p_model, jnp.asarray([0.5, 0.3, 0.2, 0]))
    assert np.isfinite(float(denormal))
    assert float(denormal) == float(empty)


def test_softmatch_weights_with_zero_variance_are_finite():
    """Momentum 0 and a batch of equal confidences: sigma_t^2 = 0 exactly; floored, the
    weights are lambda_max (every confidence at mu_t), not 0 / 0."""
    p = np.tile(np.array([[0.75, 0.25]], np.float32), (4, 1))
    mu, var = losses.softmatch_gaussian(p, np.float32(0.5), np.float32(1.0), momentum=0.0)
    assert float(mu) == 0.75 and float(var) == 0.0
    np.testing.assert_array_equal(losses.softmatch_weights(p, mu, var, n_sigma=2.0), [1.0] * 4)
    # A confidence below mu_t with zero variance weighs ~0 (an infinitely narrow Gaussian).
    lower = losses.softmatch_weights(np.array([[0.5, 0.5]], np.float32), mu, var)
    assert float(lower[0]) == 0.0


def test_softmatch_gaussian_needs_two_examples():
    with pytest.raises(ValueError, match="at least 2"):
        losses.softmatch_gaussian(
            np.full((1, 3), 1 / 3), np.float32(0.5), np.float32(1), momentum=0
        )


def test_a_confidence_exactly_at_its_threshold_is_kept():
    """>= as the official code (USB's max_probs.ge): momentum 0 and equal rows [.75, .25]
    (exact in float32) give tau_t = .75 and tau_t(0) = .75 / .75 * .75 = .75 exactly, so
    every example sits on its threshold; > would drop them all."""
    p = jnp.asarray(np.tile(np.array([[0.75, 0.25]], np.float32), (4, 1)))
    strong = jnp.zeros((4, 2))
    half = jnp.full((2,), 0.5)
    thresholds, tau, _, _ = losses.freematch_thresholds(p, jnp.float32(0.5), half, half, momentum=0)
    assert float(tau) == 0.75 and float(thresholds[0]) == 0.75  # the tie, exactly
    loss, mask = losses.hard_pseudo_label_loss(strong, p, threshold=thresholds)
    np.testing.assert_array_equal(mask, [1.0] * 4)
    assert float(loss) == pytest.approx(np.log(2), rel=1e-6)
    thresholds, _, _ = losses.self_adaptive_thresholds(p, jnp.float32(0.5), half, momentum=0)
    assert float(thresholds[0]) == 0.75
    loss, mask = losses.masked_pseudo_label_loss(strong, p, threshold=thresholds)
    np.testing.assert_array_equal(mask, [1.0] * 4)
    assert float(loss) == pytest.approx(np.log(2), rel=1e-6)  # H([.75, .25], [.5, .5])


# ------------------------------------------------------------------ one step of each method
# methods.freematch_loss / softmatch_loss on random model outputs and state against the
# NumPy chains above (float64, from the logits): total loss, every new-state entry, metrics.
NUM_CLASSES = 5


def _method_config(name, momentum):
    config = config_lib.base_config()
    config.method = name
    config.batch_size, config.mu = 4, 4
    config[name].update(momentum=momentum, lambda_u=0.7)
    if name == "freematch":
        config.freematch.lambda_f = 0.3
    config_lib.validate_config(config)
    return config


def _method_inputs(rng, config):
    labeled, unlabeled = config.batch_size, config.batch_size * config.mu
    logits = lambda n, scale: (rng.normal(size=(n, NUM_CLASSES)) * scale).astype(np.float32)
    outputs = {
        "labeled_weak": {"logits": jnp.asarray(logits(labeled, 2))},
        # Confident and unsure rows alike (a per-row scale): some masked, some kept.
        "unlabeled_weak": {
            "logits": jnp.asarray(
                logits(unlabeled, rng.permutation(np.linspace(0.05, 4.0, unlabeled))[:, None])
            )
        },
        "unlabeled_strong0": {"logits": jnp.asarray(logits(unlabeled, 2))},
    }
    batch = {
        "labels": jnp.asarray(rng.integers(0, NUM_CLASSES, labeled), jnp.int32),
        "unlabeled_labels": jnp.asarray(rng.integers(0, NUM_CLASSES, unlabeled), jnp.int32),
    }
    return outputs, batch


def _numpy(outputs, batch):
    """(p_weak, strong logits, loss_x, true unlabeled labels) in float64."""
    labeled = np.asarray(outputs["labeled_weak"]["logits"], np.float64)
    labels = np.asarray(batch["labels"])
    log_q = np.log(_softmax(labeled))
    loss_x = -np.mean(log_q[np.arange(len(labels)), labels])
    p = _softmax(np.asarray(outputs["unlabeled_weak"]["logits"], np.float64))
    strong = np.asarray(outputs["unlabeled_strong0"]["logits"], np.float64)
    return p, strong, loss_x, np.asarray(batch["unlabeled_labels"])


def _weighted_accuracy(p, weights, truth):
    correct = (np.argmax(p, -1) == truth).astype(np.float64)
    return np.sum(correct * weights) / max(np.sum(weights), 1.0)


def _check(got, expected, name):
    np.testing.assert_allclose(np.asarray(got), expected, rtol=2e-5, atol=2e-6, err_msg=name)


def _check_metrics(metrics, expected):
    """The step's metrics are exactly `expected`'s names, each at its value."""
    assert set(metrics) == set(expected)
    for name, value in expected.items():
        _check(metrics[name], value, name)


def jitted_loss(method, config):
    """method.loss(outputs, batch, state) under `config`, jitted: one XLA program instead of
    one per op (tests here and in comatch_adaptive_test, methods_test and presets_test)."""
    return jax.jit(lambda outputs, batch, state: method.loss(outputs, batch, state, config))


@pytest.mark.parametrize("start", ["init", "random"])
def test_freematch_method_one_step_matches_the_papers_equations(start):
    rng = np.random.default_rng(10)
    momentum = 0.3
    config = _method_config("freematch", momentum)
    method = methods.get_method("freematch")
    state = method.init_state(config, NUM_CLASSES, 8)
    uniform = np.full(NUM_CLASSES, 1 / NUM_CLASSES)
    assert set(state) == {"global_threshold", "class_probs", "class_histogram"}
    _check(state["global_threshold"], 1 / NUM_CLASSES, "tau_0 = 1/C")
    _check(state["class_probs"], uniform, "p~_0 = 1/C")
    _check(state["class_histogram"], uniform, "h~_0 = 1/C")
    if start == "random":
        state = {
            "global_threshold": jnp.float32(0.8),
            "class_probs": jnp.asarray(_softmax(rng.normal(size=NUM_CLASSES)), jnp.float32),
            "class_histogram": jnp.asarray(_softmax(rng.normal(size=NUM_CLASSES)), jnp.float32),
        }
    outputs, batch = _method_inputs(rng, config)
    loss, (new_state, metrics) = jitted_loss(method, config)(outputs, batch, state)

    p, strong, loss_x, truth = _numpy(outputs, batch)
    old = {k: np.asarray(v, np.float64) for k, v in state.items()}
    thresholds, tau, p_model, hist_model, mask, loss_u, loss_f = reference_freematch(
        p, strong, old["global_threshold"], old["class_probs"], old["class_histogram"], momentum
    )
    assert 0 < mask.mean() < 1, "the case keeps some examples and drops others"
    margin = np.min(np.abs(p.max(-1) - thresholds[p.argmax(-1)]))
    assert margin > 1e-4, "no confidence within rounding of its threshold"
    assert abs(loss_f) > 0.05, "the fairness term matters in the total"
    _check(loss, loss_x + 0.7 * loss_u + 0.3 * loss_f, "total loss")
    assert set(new_state) == set(state)
    _check(new_state["global_threshold"], tau, "tau_t")
    _check(new_state["class_probs"], p_model, "p~_t")
    _check(new_state["class_histogram"], hist_model, "h~_t")
    expected_metrics = {
        "loss_x": loss_x,
        "loss_u": loss_u,
        "loss_fair": loss_f,
        "mask_rate": mask.mean(),
        "global_threshold": tau,
        "pseudo_label_acc": _weighted_accuracy(p, mask, truth),
    }
    _check_metrics(metrics, expected_metrics)


@pytest.mark.parametrize("start", ["init", "random"])
def test_softmatch_method_one_step_matches_the_papers_equations(start):
    rng = np.random.default_rng(11)
    momentum = 0.3
    config = _method_config("softmatch", momentum)
    method = methods.get_method("softmatch")
    state = method.init_state(config, NUM_CLASSES, 8)
    assert set(state) == {"confidence_mean", "confidence_variance", "class_mean", "alignment_count"}
    _check(state["confidence_mean"], 1 / NUM_CLASSES, "mu_0 = 1/C")
    _check(state["confidence_variance"], 1.0, "sigma_0^2 = 1")
    assert int(state["alignment_count"]) == 0
    if start == "random":
        state = {
            "confidence_mean": jnp.float32(0.75),
            "confidence_variance": jnp.float32(0.04),
            # A skewed E[p]: the aligned argmax differs from the raw one for some rows.
            "class_mean": jnp.asarray([0.5, 0.2, 0.15, 0.1, 0.05], jnp.float32),
            "alignment_count": jnp.asarray(3, jnp.int32),
        }
    outputs, batch = _method_inputs(rng, config)
    loss, (new_state, metrics) = jitted_loss(method, config)(outputs, batch, state)

    p, strong, loss_x, truth = _numpy(outputs, batch)
    old = {k: np.asarray(v, np.float64) for k, v in state.items()}
    count = int(state["alignment_count"])
    weights, mu, var, class_mean, loss_u = reference_softmatch(
        p,
        strong,
        old["confidence_mean"],
        old["confidence_variance"],
        old["class_mean"],
        count,
        momentum,
        2.0,
        True,
    )
    # The case tells the aligned p from the raw p: other weights, other pseudo-labels.
    raw_weights, *_ = reference_softmatch(
        p,
        strong,
        old["confidence_mean"],
        old["confidence_variance"],
        old["class_mean"],
        count,
        momentum,
        2.0,
        False,
    )
    assert np.max(np.abs(raw_weights - weights)) > 0.01
    aligned = p / NUM_CLASSES / class_mean
    assert np.any(np.argmax(aligned, -1) != np.argmax(p, -1))
    assert 0 < np.mean(weights < 1) < 1, "some weights below 1 and some at 1"
    _check(loss, loss_x + 0.7 * loss_u, "total loss")
    assert set(new_state) == set(state)
    _check(new_state["confidence_mean"], mu, "mu_t")
    _check(new_state["confidence_variance"], var, "sigma_t^2")
    _check(new_state["class_mean"], class_mean, "E[p]")
    assert int(new_state["alignment_count"]) == count + 1
    expected_metrics = {
        "loss_x": loss_x,
        "loss_u": loss_u,
        "mask_rate": weights.mean(),
        "confidence_mean": mu,
        "pseudo_label_acc": _weighted_accuracy(p, weights, truth),
    }
    _check_metrics(metrics, expected_metrics)
