"""The hand-rolled membership-inference attack against independent computations."""
import math

import numpy as np
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
    """Balanced subsample, 10 stratified 90/10 splits, standardise on the train part, L-BFGS fit, mean accuracy."""
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
        mu, sd = train_x.mean(), train_x.std()
        w, b = lbfgs_logistic((train_x - mu) / sd, train_y)
        accs.append(np.mean((((test_x - mu) / sd) * w + b > 0) == test_y))
    return float(np.mean(accs))


def test_newton_fit_equals_lbfgs_fit():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.5, 1, 300), rng.normal(-0.3, 1.2, 200)])
    y = np.concatenate([np.ones(300), np.zeros(200)])
    x = (x - x.mean()) / x.std()
    assert np.allclose(fit_logistic(x, y), lbfgs_logistic(x, y), atol=1e-6)
    assert np.allclose(fit_logistic(x, y, C=0.01), lbfgs_logistic(x, y, C=0.01), atol=1e-6)


def test_identical_distributions_score_one_half_even_when_unbalanced():
    rng = np.random.default_rng(1)
    losses = rng.exponential(1.0, 12000)
    # 10000 members vs 2000 non-members: without balancing, "always member" would score 0.83.
    assert abs(mia_score(losses[:10000], losses[10000:]) - 0.5) < 0.03


def test_separable_losses_score_one():
    rng = np.random.default_rng(2)
    assert mia_score(rng.uniform(0, 0.1, 1000), rng.uniform(2, 5, 1000)) > 0.99


def test_mia_agrees_with_an_independent_computation():
    rng = np.random.default_rng(3)
    members, nonmembers = rng.gamma(1.0, 0.5, 20000), rng.gamma(1.5, 0.7, 20000)  # overlapping: accuracy ~ 0.65
    ours, theirs = mia_score(members, nonmembers), independent_mia(members, nonmembers)
    assert 0.55 < ours < 0.9 and abs(ours - theirs) < 0.01
    assert mia_score(members, nonmembers, seed=5) != ours  # the seed is used
