"""The hand-rolled membership-inference attack against independent computations."""
import math

import numpy as np
import pytest
import torch

from evaluate import fit_logistic, mia_score


def lbfgs_logistic(x, y, C=1.0):
    """The same objective minimised independently: torch L-BFGS in float64, intercept unpenalised."""
    x, y = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([theta], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        z = theta[0] * x + theta[1]
        loss = 0.5 * theta[0] ** 2 + C * (torch.nn.functional.softplus(z) - y * z).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return theta.detach().numpy()


def independent_mia(members, nonmembers, n_splits=10, seed=123):
    """The NeurIPS 2023 starting kit's simple_mia written out: balanced groups, 10 stratified 90/10 splits,
    LogisticRegression() (C = 1) fitted by L-BFGS on the raw loss, no rescaling, mean held-out accuracy."""
    rng = np.random.default_rng(seed)
    n = min(len(members), len(nonmembers))
    groups = [rng.permutation(members)[:n], rng.permutation(nonmembers)[:n]]
    k = math.ceil(n / 10)
    accs = []
    for _ in range(n_splits):
        orders = [rng.permutation(n) for _ in groups]
        train_x = np.concatenate([g[o[k:]] for g, o in zip(groups, orders)])
        test_x = np.concatenate([g[o[:k]] for g, o in zip(groups, orders)])
        train_y, test_y = np.repeat([1.0, 0.0], n - k), np.repeat([1.0, 0.0], k)
        w, b = lbfgs_logistic(train_x, train_y)
        accs.append(np.mean((test_x * w + b > 0) == test_y))
    return float(np.mean(accs))


def test_newton_fit_equals_lbfgs_fit():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.5, 1, 300), rng.normal(-0.3, 1.2, 200)])
    y = np.concatenate([np.ones(300), np.zeros(200)])
    assert np.allclose(fit_logistic(x, y), lbfgs_logistic(x, y), atol=1e-6)
    assert np.allclose(fit_logistic(x, y, C=0.01), lbfgs_logistic(x, y, C=0.01), atol=1e-6)
    small = np.concatenate([rng.exponential(0.02, 300), rng.exponential(0.4, 200)])  # raw losses of a trained model
    assert np.allclose(fit_logistic(small, y), lbfgs_logistic(small, y), rtol=1e-5, atol=1e-5)
    heavy = np.concatenate([rng.exponential(5, 300) + 30 * np.abs(rng.standard_cauchy(300)), rng.exponential(1, 200)])
    assert np.allclose(fit_logistic(heavy, y), lbfgs_logistic(heavy, y), rtol=1e-5, atol=1e-6)


def test_identical_distributions_score_one_half_even_when_unbalanced():
    rng = np.random.default_rng(1)
    losses = rng.exponential(1.0, 12000)
    # 10000 members vs 2000 non-members: without balancing, "always member" would score 0.83.
    assert abs(mia_score(losses[:10000], losses[10000:]) - 0.5) < 0.03


def test_separable_losses_score_one():
    rng = np.random.default_rng(2)
    assert mia_score(rng.uniform(0, 0.1, 1000), rng.uniform(2, 5, 1000)) > 0.99


@pytest.mark.parametrize("members, nonmembers", [
    (lambda rng: rng.gamma(1.0, 0.5, 5000), lambda rng: rng.gamma(1.5, 0.7, 1000)),  # overlapping: about 0.65
    # a well-trained model's losses (members near 0, one class's 1000 test images): the penalty C = 1 acts on the
    # raw scale, so rescaling the feature first (as this project once did) gives about 0.92 instead of 0.87 here
    (lambda rng: rng.exponential(0.005, 5000), lambda rng: rng.exponential(0.2, 1000)),
])
def test_mia_agrees_with_the_kits_attack_written_independently(members, nonmembers):
    rng = np.random.default_rng(3)
    members, nonmembers = members(rng), nonmembers(rng)
    ours = np.mean([mia_score(members, nonmembers, seed=s) for s in range(10)])  # means over splits: +-0.003
    theirs = np.mean([independent_mia(members, nonmembers, seed=100 + s) for s in range(10)])
    assert 0.6 < ours < 0.9 and abs(ours - theirs) < 0.01, (ours, theirs)
    assert mia_score(members, nonmembers, seed=5) != mia_score(members, nonmembers, seed=6)  # the seed is used
