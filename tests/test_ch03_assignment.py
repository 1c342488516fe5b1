"""The ch03-mdps tests grade behaviour: plausible mistakes fail, other correct solutions pass.

A table for the shared harness (rl4lmt.grading.mutants): each WRONG body must fail the task's test
cell (visible + hidden tests), each RIGHT body (another correct way) must pass.
"""
from rl4lmt.grading.mutants import MutationSuite

_VI_TAIL = "\n    return V, bellman_backup(P, R, V, gamma).argmax(axis=1)"


def _pi(init="np.zeros(S, dtype=int) if policy is None else np.array(policy, dtype=int)", loop="for _ in range(max_iter):",
        evaluate="V = np.linalg.solve(np.eye(S) - gamma * P[s, pi], R[s, pi])", record="history.append((V.copy(), pi.copy()))",
        qline="Q = bellman_backup(P, R, V, gamma)", choose="Q.argmax(1)", better="Q[s, best] > Q[s, pi] + tol",
        ret="V, pi", update="pi = np.where(better, best, pi)", head="S, A = R.shape; s = np.arange(S)"):
    """A policy_iteration body with one piece swapped (the defaults make a correct one)."""
    return (f"{head}\n    pi = {init}\n    {loop}\n        {evaluate}\n        if history is not None: {record}\n"
            f"        {qline}\n        best = {choose}\n        better = {better}\n        if not better.any():\n"
            f"            return {ret}\n        {update}\n    raise ValueError('policy still changing after max_iter evaluations')")


WRONG = {  # task -> {mistake: body}; each must fail the task's tests
    "bellman_backup": {
        "sum over the wrong axis of P": "return R + gamma * np.einsum('sat,s->sa', P, V)",
        "gamma forgotten": "return R + np.einsum('sat,t->sa', P, V)",
        "reward discounted too": "return gamma * (R + np.einsum('sat,t->sa', P, V))",
        "adds into R in place": "R += gamma * np.einsum('sat,t->sa', P, V)\n    return R",
        "max over actions (returns V, not Q)": "return (R + gamma * np.einsum('sat,t->sa', P, V)).max(axis=1)",
    },
    "policy_iteration": {
        "a fixed 100 evaluation sweeps":
            _pi(evaluate="V = np.zeros(S)\n        for _ in range(100): V = R[s, pi] + gamma * P[s, pi] @ V"),
        "a fixed 1000 evaluation sweeps":
            _pi(evaluate="V = np.zeros(S)\n        for _ in range(1000): V = R[s, pi] + gamma * P[s, pi] @ V"),
        "stops when the values stop changing (evaluates the stable policy twice)":
            "S, A = R.shape; s = np.arange(S)\n    pi = np.zeros(S, dtype=int) if policy is None else np.array(policy, dtype=int)\n"
            "    V_old = None\n    for _ in range(max_iter):\n        V = np.linalg.solve(np.eye(S) - gamma * P[s, pi], R[s, pi])\n"
            "        if history is not None: history.append((V.copy(), pi.copy()))\n"
            "        if V_old is not None and np.max(np.abs(V - V_old)) < tol: return V, pi\n        V_old = V\n"
            "        Q = bellman_backup(P, R, V, gamma)\n        best = Q.argmax(1)\n"
            "        pi = np.where(Q[s, best] > Q[s, pi] + tol, best, pi)\n    raise ValueError('max_iter')",
        "plain argmax improvement (ties switch to the lowest index)": _pi(better="best != pi"),
        "random tie-breaking (goes round on ties)":
            _pi(head="S, A = R.shape; s = np.arange(S); rng = np.random.default_rng(0)",
                choose="np.array([rng.choice(np.flatnonzero(q >= q.max() - 1e-12)) for q in Q])", better="best != pi"),
        "greedy for the immediate reward only (gamma P V forgotten)": _pi(qline="Q = R.copy()"),
        "improves with the previous policy's values (one step behind)":
            _pi(head="S, A = R.shape; s = np.arange(S); V_prev = np.zeros(S)",
                qline="Q = bellman_backup(P, R, V_prev, gamma); V_prev = V"),
        "Q = R, then adds into R in place": _pi(qline="Q = R\n        Q += gamma * P @ V"),
        "changes the caller's starting policy in place":
            _pi(init="np.zeros(S, dtype=int) if policy is None else policy", update="pi[better] = best[better]"),
        "history holds references, not copies": _pi(record="history.append((V, pi))", update="pi[better] = best[better]"),
        "returns pi as floats": _pi(ret="V, pi.astype(float)"),
        "returns (pi, V)": _pi(ret="pi, V"),
        "max_iter ignored": _pi(loop="while True:"),
        "one evaluation fewer than max_iter": _pi(loop="for _ in range(max_iter - 1):"),
        "starts from the greedy policy for R, not action 0": _pi(init="R.argmax(1) if policy is None else np.array(policy, dtype=int)"),
    },
    "value_iteration": {
        "a fixed 100 sweeps (not until convergence)":
            "V = np.zeros(P.shape[0])\n    for _ in range(100):\n        V = bellman_backup(P, R, V, gamma).max(axis=1)" + _VI_TAIL,
        "a fixed 1000 sweeps (not until convergence)":
            "V = np.zeros(P.shape[0])\n    for _ in range(1000):\n        V = bellman_backup(P, R, V, gamma).max(axis=1)" + _VI_TAIL,
        "stops on a relative change":
            "V = np.zeros(P.shape[0])\n    while True:\n        V_new = bellman_backup(P, R, V, gamma).max(axis=1)\n"
            "        if np.max(np.abs(V_new - V)) < 1e-3 * np.max(np.abs(V_new)):\n            break\n        V = V_new\n"
            "    return V_new, bellman_backup(P, R, V_new, gamma).argmax(axis=1)",
        "mean over actions (policy evaluation of the uniform policy)":
            "V = np.zeros(P.shape[0])\n    while True:\n        V_new = bellman_backup(P, R, V, gamma).mean(axis=1)\n"
            "        if np.max(np.abs(V_new - V)) < tol:\n            break\n        V = V_new" + _VI_TAIL,
        "policy from the first sweep's values":
            "V = np.zeros(P.shape[0])\n    pi = bellman_backup(P, R, V, gamma).argmax(axis=1)\n    while True:\n"
            "        V_new = bellman_backup(P, R, V, gamma).max(axis=1)\n        if np.max(np.abs(V_new - V)) < tol:\n            break\n"
            "        V = V_new\n    return V_new, pi",
    },
    "epsilon_greedy_action": {
        "explores only the non-greedy arms":
            "Q = np.asarray(Q, dtype=float)\n    best = int(np.argmax(Q))\n    if rng.random() < epsilon:\n"
            "        others = [a for a in range(len(Q)) if a != best]\n        return int(rng.choice(others)) if others else best\n    return best",
        "ties go to the first arm (np.argmax)":
            "Q = np.asarray(Q, dtype=float)\n    if rng.random() < epsilon:\n        return int(rng.integers(len(Q)))\n    return int(np.argmax(Q))",
        "ties broken among the first two tied arms only":
            "Q = np.asarray(Q, dtype=float)\n    if rng.random() < epsilon:\n        return int(rng.integers(len(Q)))\n"
            "    best = np.flatnonzero(Q == Q.max())[:2]\n    return int(rng.choice(best))",
        "ties broken between the first and the last tied arm":
            "Q = np.asarray(Q, dtype=float)\n    if rng.random() < epsilon:\n        return int(rng.integers(len(Q)))\n"
            "    best = np.flatnonzero(Q == Q.max())\n    return int(rng.choice([best[0], best[-1]]))",
        "global NumPy RNG (ignores rng)":
            "Q = np.asarray(Q, dtype=float)\n    if np.random.random() < epsilon:\n        return int(np.random.randint(len(Q)))\n"
            "    return int(np.random.choice(np.flatnonzero(Q == Q.max())))",
        "random noise added to Q in place":
            "Q += rng.random(len(Q)) * 1e-9\n    if rng.random() < epsilon:\n        return int(rng.integers(len(Q)))\n    return int(np.argmax(Q))",
    },
    "update_estimate": {
        "step 1/N before the count is incremented":
            "step = 1.0 / max(N[action], 1) if alpha is None else alpha\n    N[action] += 1\n    Q[action] += step * (reward - Q[action])",
        "alpha ignored": "N[action] += 1\n    Q[action] += (reward - Q[action]) / N[action]",
        "returns new arrays, leaves Q and N as they were":
            "Q, N = Q.copy(), N.copy()\n    N[action] += 1\n    step = 1.0 / N[action] if alpha is None else alpha\n"
            "    Q[action] += step * (reward - Q[action])\n    return Q, N",
        "every arm moves towards the reward":
            "N[action] += 1\n    step = 1.0 / N[action] if alpha is None else alpha\n    Q += step * (reward - Q)",
    },
    "play_bandit": {
        "env not reset with the seed":
            "env.reset()\n    rng = np.random.default_rng(seed)\n    k = env.action_space.n\n    Q, N = np.zeros(k), np.zeros(k)\n"
            "    rewards, optimal = np.zeros(steps), np.zeros(steps, dtype=bool)\n    for t in range(steps):\n"
            "        a = epsilon_greedy_action(Q, epsilon, rng)\n        _, r, _, _, info = env.step(a)\n        update_estimate(Q, N, a, r, alpha)\n"
            "        rewards[t], optimal[t] = r, info['optimal']\n    return rewards, optimal",
        "agent's randomness ignores the seed (fixed rng)":
            "env.reset(seed=seed)\n    rng = np.random.default_rng(0)\n    k = env.action_space.n\n    Q, N = np.zeros(k), np.zeros(k)\n"
            "    rewards, optimal = np.zeros(steps), np.zeros(steps, dtype=bool)\n    for t in range(steps):\n"
            "        a = epsilon_greedy_action(Q, epsilon, rng)\n        _, r, _, _, info = env.step(a)\n        update_estimate(Q, N, a, r, alpha)\n"
            "        rewards[t], optimal[t] = r, info['optimal']\n    return rewards, optimal",
        "alpha not passed on":
            "env.reset(seed=seed)\n    rng = np.random.default_rng(seed)\n    k = env.action_space.n\n    Q, N = np.zeros(k), np.zeros(k)\n"
            "    rewards, optimal = np.zeros(steps), np.zeros(steps, dtype=bool)\n    for t in range(steps):\n"
            "        a = epsilon_greedy_action(Q, epsilon, rng)\n        _, r, _, _, info = env.step(a)\n        update_estimate(Q, N, a, r)\n"
            "        rewards[t], optimal[t] = r, info['optimal']\n    return rewards, optimal",
        "greedy (epsilon never used)":
            "env.reset(seed=seed)\n    rng = np.random.default_rng(seed)\n    k = env.action_space.n\n    Q, N = np.zeros(k), np.zeros(k)\n"
            "    rewards, optimal = np.zeros(steps), np.zeros(steps, dtype=bool)\n    for t in range(steps):\n"
            "        a = epsilon_greedy_action(Q, 0.0, rng)\n        _, r, _, _, info = env.step(a)\n        update_estimate(Q, N, a, r, alpha)\n"
            "        rewards[t], optimal[t] = r, info['optimal']\n    return rewards, optimal",
    },
}

RIGHT = {  # task -> {another correct way: body}; each must pass
    "bellman_backup": {
        "loops": "S, A = R.shape\n    Q = np.zeros((S, A))\n    for s in range(S):\n        for a in range(A):\n"
                 "            Q[s, a] = R[s, a] + gamma * sum(P[s, a, t] * V[t] for t in range(S))\n    return Q",
        "matmul": "return R + gamma * (P @ V)",
    },
    "value_iteration": {
        "in-place (Gauss-Seidel) sweeps":
            "V = np.zeros(P.shape[0])\n    while True:\n        delta = 0.0\n        for s in range(P.shape[0]):\n"
            "            v = max(R[s, a] + gamma * P[s, a] @ V for a in range(P.shape[1]))\n            delta = max(delta, abs(v - V[s]))\n"
            "            V[s] = v\n        if delta < tol:\n            break" + _VI_TAIL,
        "Q-function iteration": "Q = np.zeros(R.shape)\n    while True:\n        Q_new = R + gamma * P @ Q.max(axis=1)\n"
                                "        if np.abs(Q_new - Q).max() < tol:\n            break\n        Q = Q_new\n"
                                "    return Q_new.max(axis=1), Q_new.argmax(axis=1)",
    },
    "policy_iteration": {
        "the table's template, unswapped": _pi(),
        "the course package": "return mdp.policy_iteration(P, R, gamma, policy=policy, tol=tol, max_iter=max_iter, history=history)",
        "vectorised sweeps until the change is below tol / 100, warm-started":
            _pi(evaluate="V = np.zeros(S) if 'V' not in dir() else V\n        while True:\n"
                         "            V_new = R[s, pi] + gamma * P[s, pi] @ V\n            done = np.max(np.abs(V_new - V)) < tol / 100\n"
                         "            V = V_new\n            if done: break"),
        "Sutton & Barto's pseudo-code: in-place sweeps, a loop over states":
            "S, A = R.shape\n    pi = np.zeros(S, dtype=int) if policy is None else np.asarray(policy).astype(int)\n    V = np.zeros(S)\n"
            "    for _ in range(max_iter):\n        while True:\n            delta = 0.0\n            for x in range(S):\n"
            "                v = R[x, pi[x]] + gamma * P[x, pi[x]] @ V\n                delta = max(delta, abs(v - V[x]))\n                V[x] = v\n"
            "            if delta < tol / 100: break\n        if history is not None: history.append((V.copy(), pi.copy()))\n"
            "        stable = True\n        for x in range(S):\n            q = [R[x, a] + gamma * P[x, a] @ V for a in range(A)]\n"
            "            b = int(np.argmax(q))\n            if q[b] > q[pi[x]] + tol:\n                pi[x] = b\n                stable = False\n"
            "        if stable: return V.copy(), pi\n    raise ValueError('max_iter')",
    },
    "epsilon_greedy_action": {
        "tiny random noise breaks ties (not in place)":
            "q = np.asarray(Q, dtype=float)\n    if rng.random() < epsilon:\n        return int(rng.choice(len(q)))\n"
            "    ties = q == q.max()\n    return int(np.argmax(np.where(ties, rng.random(len(q)), -1.0)))",
        "permute, then argmax": "q = np.asarray(Q, dtype=float)\n    if rng.uniform() < epsilon:\n        return int(rng.integers(0, len(q)))\n"
                                "    perm = rng.permutation(len(q))\n    return int(perm[np.argmax(q[perm])])",
    },
    "update_estimate": {
        "incremental mean written out": "n = N[action] + 1\n    N[action] = n\n    if alpha is None:\n"
                                        "        Q[action] = Q[action] + (reward - Q[action]) / n\n    else:\n        Q[action] = (1 - alpha) * Q[action] + alpha * reward",
    },
    "play_bandit": {
        "lists, converted at the end":
            "env.reset(seed=seed)\n    rng = np.random.default_rng(seed)\n    Q = np.zeros(env.action_space.n)\n    N = np.zeros_like(Q)\n"
            "    rs, opt = [], []\n    for _ in range(steps):\n        a = epsilon_greedy_action(Q, epsilon, rng)\n"
            "        obs, r, term, trunc, info = env.step(a)\n        update_estimate(Q, N, a, r, alpha=alpha)\n"
            "        rs.append(r)\n        opt.append(bool(info['optimal']))\n    return np.array(rs), np.array(opt)",
    },
}

SUITE = MutationSuite("ch03-mdps", WRONG, RIGHT, base=["setup", "imports"],
                      needs={"value_iteration": ["bellman_backup"], "policy_iteration": ["bellman_backup"],
                             "play_bandit": ["epsilon_greedy_action", "update_estimate"]})
test_master_solution_passes, test_plausible_mistake_fails, test_other_correct_solution_passes = SUITE.pytest_tests()
