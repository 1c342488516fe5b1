"""Looking inside a language model (taught in chapter 8): probes, scalar mixing, the logit lens, amnesic probing.

A **probe** is a small classifier trained on a model's internal representations to read off a
property the model was never told about -- here the *latent* sentiment and topic of a
TinyReviews review, which the world knows exactly (``TinyReviews.sample_latent``).

- :func:`hidden_states` -- the residual stream after every layer at one position of each text;
- :func:`fit_linear_probe` -- multinomial logistic regression with an L2 penalty, fitted by
  L-BFGS (the same objective as scikit-learn's ``LogisticRegression(C=...)``, checked against it);
  :func:`probe_accuracy_per_layer` -- one probe per layer;
- :class:`ScalarMix` / :func:`fit_scalar_mix_probe` -- learned softmax weights over the layers,
  :math:`h = \\gamma \\sum_l \\mathrm{softmax}(s)_l\\, h^{(l)}` (Peters et al., 2018; Tenney et al., 2019);
- :func:`logit_lens` -- early decoding: every layer's residual stream pushed through the final
  layer norm and the unembedding (nostalgebraist, 2020);
- :func:`inlp` -- iterative null-space projection (Ravfogel et al., 2020): remove the directions
  linear probes use, until they are at chance; :func:`amnesic` runs the model with that
  projection applied inside it (amnesic probing, Elazar et al., 2021), and
  :func:`random_projection` is its control with as many random directions removed.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "hidden_states",
    "LinearProbe",
    "fit_linear_probe",
    "probe_accuracy_per_layer",
    "ScalarMix",
    "fit_scalar_mix_probe",
    "logit_lens",
    "inlp",
    "random_projection",
    "amnesic",
]


def _features(name: str, x) -> torch.Tensor:
    x = torch.as_tensor(x.detach().cpu() if isinstance(x, torch.Tensor) else np.asarray(x)).double()
    if x.dim() != 2 or x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(f"{name} must have shape (n, dim) with n >= 2, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite")
    return x


def _labels(name: str, y, n: int) -> torch.Tensor:
    y = torch.as_tensor(y.detach().cpu() if isinstance(y, torch.Tensor) else np.asarray(y))
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise TypeError(f"{name} must be integer class ids, got dtype {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(y.shape)}")
    if y.min() < 0:
        raise ValueError(f"{name} must be >= 0")
    return y.long()


@torch.no_grad()
def hidden_states(model, tokenizer, texts: Sequence[str], position: str = "last") -> torch.Tensor:
    """The residual stream of every layer at one position of each text: ``(n_layers + 1, n, d)``.

    Layer 0 is the embedding (token + position), layer ``l`` the output of block ``l``; as in
    transformers, the last layer is taken after the final layer norm. ``position="last"`` reads
    the last word of each text (which has seen the whole review), ``"mean"`` averages over its
    words. The BOS is not included in either.

    Taught in chapter 8, "Looking inside: probes".
    """
    from rl4lmt.lm import encode_texts
    from rl4lmt.utils import check_texts

    texts = check_texts(texts)
    if position not in ("last", "mean"):
        raise ValueError(f"position must be 'last' or 'mean', got {position!r}")
    input_ids, attention_mask = encode_texts(tokenizer, texts, add_eos=False)
    device = next(model.parameters()).device
    out = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), output_hidden_states=True)
    hs = torch.stack(out.hidden_states).float().cpu()  # (L+1, n, T, d)
    lengths = attention_mask.sum(1)  # BOS + words
    if position == "last":
        return hs[:, torch.arange(len(texts)), lengths - 1]  # (L+1, n, d)
    words = attention_mask.clone()
    words[:, 0] = 0  # leave the BOS out
    return (hs * words[None, :, :, None]).sum(2) / words.sum(1)[None, :, None]


@dataclass
class LinearProbe:
    """A fitted multinomial logistic-regression probe: ``P(y | h) = softmax(W h + b)``."""

    weight: torch.Tensor  # (K, d)
    bias: torch.Tensor  # (K,)

    def predict_proba(self, features) -> torch.Tensor:
        x = _features("features", features)
        return (x @ self.weight.T + self.bias).softmax(-1)

    def accuracy(self, features, labels) -> float:
        probs = self.predict_proba(features)
        return float((probs.argmax(-1) == _labels("labels", labels, probs.shape[0])).double().mean())


def fit_linear_probe(features, labels, C: float = 1.0, num_classes: int | None = None,
                     max_iter: int = 500) -> LinearProbe:
    """Fit :math:`\\min_{W,b} \\sum_i -\\log \\mathrm{softmax}(W h_i + b)_{y_i} + \\frac{1}{2C} \\|W\\|^2` by L-BFGS.

    Multinomial logistic regression with an L2 penalty on the weights (not the bias). For three
    or more classes it is scikit-learn's ``LogisticRegression(C=C)``; with two classes
    scikit-learn fits one vector :math:`w = w_1 - w_0`, whose penalty works out as
    ``LogisticRegression(C=2 * C)``. Float64 throughout.

    Args:
        features: ``(n, d)`` representations.
        labels: ``(n,)`` class ids.
        C: inverse regularisation strength (larger: weaker penalty).
        num_classes: ``K`` (default: ``max(labels) + 1``).
        max_iter: L-BFGS iterations.

    Taught in chapter 8, "Looking inside: probes".
    """
    x = _features("features", features)
    y = _labels("labels", labels, x.shape[0])
    if isinstance(C, bool) or not isinstance(C, (int, float)) or not C > 0:
        raise ValueError(f"C must be a float > 0, got {C!r}")
    k = int(y.max()) + 1 if num_classes is None else int(num_classes)
    if k < 2 or k <= int(y.max()):
        raise ValueError(f"num_classes must be >= 2 and > every label, got {k}")
    w = torch.zeros(k, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w.T + b, y, reduction="sum") + (w**2).sum() / (2 * C)
        loss.backward()
        return loss

    opt.step(closure)
    return LinearProbe(w.detach(), b.detach())


def probe_accuracy_per_layer(train_states: torch.Tensor, train_labels, test_states: torch.Tensor, test_labels,
                             C: float = 1.0) -> np.ndarray:
    """Held-out accuracy of one linear probe per layer: ``(n_layers + 1,)``.

    ``*_states`` are :func:`hidden_states` outputs, ``(L+1, n, d)``; each layer's features are
    standardised with the training set's mean and standard deviation before fitting.

    Taught in chapter 8, "Looking inside: probes".
    """
    if train_states.dim() != 3 or test_states.dim() != 3 or train_states.shape[0] != test_states.shape[0]:
        raise ValueError("train_states and test_states must have shape (layers, n, d) with the same layers")
    k = int(max(torch.as_tensor(train_labels).max(), torch.as_tensor(test_labels).max())) + 1
    acc = []
    for layer in range(train_states.shape[0]):
        tr, te = train_states[layer].double(), test_states[layer].double()
        mu, sd = tr.mean(0), tr.std(0) + 1e-8  # standardise: one C fits every layer's scale
        probe = fit_linear_probe((tr - mu) / sd, train_labels, C=C, num_classes=k)
        acc.append(probe.accuracy((te - mu) / sd, test_labels))
    return np.asarray(acc)


class ScalarMix(torch.nn.Module):
    """:math:`h = \\gamma \\sum_{l=0}^{L} \\mathrm{softmax}(s)_l\\, h^{(l)}`: learned weights over the layers."""

    def __init__(self, n_layers: int):
        super().__init__()
        self.scalars = torch.nn.Parameter(torch.zeros(n_layers))
        self.gamma = torch.nn.Parameter(torch.ones(()))

    @property
    def weights(self) -> torch.Tensor:
        """The mixing weights :math:`\\mathrm{softmax}(s)`, summing to 1."""
        return self.scalars.softmax(0)

    def forward(self, states: torch.Tensor) -> torch.Tensor:  # (L+1, n, d) -> (n, d)
        return self.gamma * torch.einsum("l,lnd->nd", self.weights, states)


def fit_scalar_mix_probe(states: torch.Tensor, labels, steps: int = 300, lr: float = 0.05,
                         seed: int | None = 0) -> tuple[np.ndarray, float]:
    """Train a :class:`ScalarMix` and a linear classifier on top of it, jointly, with Adam.

    Every layer is standardised first (so the weights compare layers, not their scales). The
    learned weights say which layers the classifier draws its information from.

    Returns:
        ``(weights, training accuracy)`` with ``weights`` of shape ``(n_layers + 1,)``.

    Taught in chapter 8, "Looking inside: probes".
    """
    if not isinstance(states, torch.Tensor) or states.dim() != 3:
        raise ValueError("states must be a (layers, n, d) tensor")
    y = _labels("labels", labels, states.shape[1])
    x = states.float()
    x = (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-6)
    g = torch.Generator().manual_seed(0 if seed is None else seed)
    mix = ScalarMix(x.shape[0])
    head = torch.nn.Linear(x.shape[2], int(y.max()) + 1)
    with torch.no_grad():  # initialise from the seeded generator, not the global one
        head.weight.normal_(0, 0.01, generator=g)
        head.bias.zero_()
    opt = torch.optim.Adam(list(mix.parameters()) + list(head.parameters()), lr=lr)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(head(mix(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = float((head(mix(x)).argmax(-1) == y).float().mean())
    return mix.weights.detach().numpy(), acc


@torch.no_grad()
def logit_lens(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Early decoding: next-token log-probabilities read from every layer, ``(n_layers + 1, B, T, V)``.

    :math:`\\log \\mathrm{softmax}(W_U\\, \\mathrm{LN}_f(h^{(l)}_t))` for each layer ``l``: the
    residual stream after ``l`` blocks, decoded as if it were the last one. The last layer
    reproduces the model's own output (transformers already applied the final layer norm to it).

    Taught in chapter 8, "The logit lens".
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype != torch.long or input_ids.dim() != 2:
        raise TypeError("input_ids must be a (batch, time) LongTensor")
    device = next(model.parameters()).device
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    out = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
    hs = out.hidden_states  # L+1 tensors (B, T, d); the last is already normalised
    ln_f, unembed = model.transformer.ln_f, model.get_output_embeddings()
    layers = [unembed(ln_f(h)) for h in hs[:-1]] + [unembed(hs[-1])]
    return torch.stack(layers).float().log_softmax(-1)


def inlp(features, labels, n_iterations: int = 10, C: float = 1.0, max_iter: int = 500, *,
         seed: int | None = 0) -> tuple[torch.Tensor, list[float]]:
    """Iterative null-space projection: remove the linear information about ``labels`` from ``features``.

    Repeat: fit a linear probe on the projected features (half the data, scored on the other
    half); add the row space of its (centred) weights to the removed directions; project every
    feature onto the orthogonal complement of all removed directions,
    :math:`P = I - Q Q^\\top` with :math:`Q` an orthonormal basis of them (Ravfogel et al., 2020).

    ``C`` and ``max_iter`` are passed to :func:`fit_linear_probe`.

    Returns:
        ``(P, accuracies)``: the ``(d, d)`` projection (symmetric, idempotent) and the held-out
        accuracy of the probe *before* each removal (it falls to chance when nothing is left).

    Taught in chapter 8, "Amnesic probing".
    """
    x = _features("features", features)
    y = _labels("labels", labels, x.shape[0])
    g = torch.Generator().manual_seed(0 if seed is None else seed)
    order = torch.randperm(x.shape[0], generator=g)
    tr, te = order[: x.shape[0] // 2], order[x.shape[0] // 2:]
    d = x.shape[1]
    k = int(y.max()) + 1
    removed = torch.zeros(d, 0, dtype=torch.float64)
    P = torch.eye(d, dtype=torch.float64)
    accuracies = []
    for _ in range(n_iterations):
        xp = x @ P
        probe = fit_linear_probe(xp[tr], y[tr], C=C, num_classes=k, max_iter=max_iter)
        accuracies.append(probe.accuracy(xp[te], y[te]))
        w = probe.weight - probe.weight.mean(0, keepdim=True)  # softmax ignores a shared shift: rank K-1
        removed = torch.cat([removed, w.T], dim=1)
        u, s, _ = torch.linalg.svd(removed, full_matrices=False)
        Q = u[:, s > s.max() * 1e-8]  # orthonormal basis of all removed directions
        P = torch.eye(d, dtype=torch.float64) - Q @ Q.T
    return P, accuracies


def random_projection(d: int, rank: int, *, seed: int | None = 0) -> torch.Tensor:
    """The control for :func:`inlp`: project out ``rank`` random orthonormal directions, ``(d, d)``.

    Taught in chapter 8, "Amnesic probing".
    """
    if not 0 <= rank <= d:
        raise ValueError(f"rank must be in [0, d={d}], got {rank}")
    g = torch.Generator().manual_seed(0 if seed is None else seed)
    q, _ = torch.linalg.qr(torch.randn(d, max(rank, 1), generator=g, dtype=torch.float64))
    q = q[:, :rank]
    return torch.eye(d, dtype=torch.float64) - q @ q.T


@contextlib.contextmanager
def amnesic(model, layer: int, projection: torch.Tensor):
    """Run ``model`` with the residual stream after block ``layer`` (1..L) multiplied by ``projection``.

    Inside the ``with`` block every forward pass replaces :math:`h^{(l)}` by :math:`h^{(l)} P`, so
    later layers (and the output) see the representation with the removed directions gone. For
    ``layer = L`` the projection acts after the final layer norm, where :func:`hidden_states`
    reads layer ``L``. (transformers records ``output_hidden_states`` with its own hooks, so the
    recorded layer ``l`` itself shows the representation *before* the projection; every layer
    after it, and the logits, see the projected one.)

    Taught in chapter 8, "Amnesic probing".
    """
    n_layers = len(model.transformer.h)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= n_layers:
        raise ValueError(f"layer must be an int in [1, {n_layers}], got {layer!r}")
    P = projection.to(device=next(model.parameters()).device)

    def hook(module, inputs, output):
        if isinstance(output, tuple):  # a block returns (hidden, ...)
            return (output[0] @ P.to(output[0].dtype),) + tuple(output[1:])
        return output @ P.to(output.dtype)

    target = model.transformer.ln_f if layer == n_layers else model.transformer.h[layer - 1]
    handle = target.register_forward_hook(hook)
    try:
        yield model
    finally:
        handle.remove()
