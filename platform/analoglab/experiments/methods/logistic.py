"""L2-regularised logistic regressions, the fits of probes: where they run and how.

A fit minimises, full batch and from zero weights (deterministic),

    mean cross-entropy + (l2 / 2) · ‖W‖²

over features ``x`` ``[n, d]`` and classes ``y`` (the bias unpenalised).

- **Two classes, ``l2 > 0``, width at most** :data:`NEWTON_MAX_WIDTH` (:func:`newton_fits`):
  Newton's method with Armijo backtracking, in float64 on the CPU. Two-class softmax
  regression with both weight columns penalised has its minimum at ``W = [−v/2, v/2]``,
  ``b = [−c/2, c/2]``, where ``(v, c)`` minimises the binary logistic loss
  ``mean softplus(−s (x·v + c)) + (l2/4)‖v‖²`` (``s = ±1``): strictly convex, with a
  ``(d+1)``-square Hessian, so Newton reaches the minimum to :data:`NEWTON_GRAD_TOL` in about
  ten steps. Where a fit has fewer examples ``n`` than features (a probe over a few dozen
  texts of a wide model), each step is solved through an ``n``-square system instead
  (:func:`_few_examples_step`, Woodbury's identity): the same step, ``O(n²d)`` instead of
  ``O(d³)``. Many fits are solved at once (:func:`solve_binary`: a probe's layers and
  splits, or in batched execution every probe of the batch): each request's examples are
  padded to the longest with rows of weight zero, every fit takes its own step sizes and
  stops on its own, so a fit's weights do not depend on the fits beside it (up to the
  rounding of sums that include the padding's zeros).
- **Otherwise** (``l2 = 0``, where separable data has no minimum; three or more classes;
  wide features): L-BFGS in float32, one fit at a time (:func:`fit_logistic`), on the CPU
  when the features hold at most :data:`CPU_FIT_VALUES` numbers (a small fit's line
  searches read a number back at every step, which on an accelerator costs a
  synchronisation each), else where the features are.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LBFGS_STEPS = 200
#: Newton's method fits two-class problems of features at most this wide.
NEWTON_MAX_WIDTH = 1024
#: ... and stacks at most this many bytes of Hessians at once (fits beyond it run in turns).
NEWTON_MAX_BYTES = 256 << 20
#: A Newton fit stops when its gradient's largest entry is below this, ...
NEWTON_GRAD_TOL = 1e-9
#: ... or after this many steps.
NEWTON_STEPS = 100
#: Features of at most this many numbers (examples × width) are fitted on the CPU.
CPU_FIT_VALUES = 1 << 22


def fit_device(values: int, device: torch.device | str) -> torch.device:
    """Where an L-BFGS fit of ``values`` feature numbers runs: the CPU for small fits
    (launch- and sync-bound on an accelerator), else ``device``."""
    return torch.device("cpu") if values <= CPU_FIT_VALUES else torch.device(device)


def newton_fits(width: int, n_classes: int, l2: float) -> bool:
    """Whether a fit of this size is solved by Newton's method: two classes, a penalty, and
    features at most :data:`NEWTON_MAX_WIDTH` wide."""
    return n_classes == 2 and l2 > 0 and width <= NEWTON_MAX_WIDTH


@dataclass(frozen=True)
class BinaryFits:
    """A request for ``F`` two-class fits of :func:`newton_fits` size: features ``x``
    ``[F, n, d]``, classes ``y`` ``[F, n]`` (0 or 1), the penalty ``l2``."""

    x: Tensor
    y: Tensor
    l2: float


def fit_logistic(x: Tensor, y: Tensor, n_classes: int, l2: float) -> tuple[Tensor, Tensor]:
    """Weights ``[d, K]`` and bias ``[K]`` of one fit, by L-BFGS (float32, where ``x`` is)."""
    w = torch.zeros(x.shape[1], n_classes, device=x.device, requires_grad=True)
    b = torch.zeros(n_classes, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=LBFGS_STEPS, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    with torch.enable_grad():
        opt.step(closure)  # type: ignore[no-untyped-call]
    return w.detach(), b.detach()


def fit_logistic_many(
    x: Tensor, y: Tensor, n_classes: int, l2: float
) -> tuple[Tensor, Tensor]:
    """``F`` fits at once: features ``x`` ``[F, n, d]``, classes ``y`` ``[F, n]``; weights
    ``[F, d, K]`` and biases ``[F, K]`` in ``x``'s dtype, on ``x``'s device. By Newton's
    method where :func:`newton_fits` (:func:`solve_binary`), else one L-BFGS fit after
    another."""
    n_fits, _, d = x.shape
    if not newton_fits(d, n_classes, l2):
        fits = [fit_logistic(x[f], y[f], n_classes, l2) for f in range(n_fits)]
        return torch.stack([w for w, _ in fits]), torch.stack([b for _, b in fits])
    return solve_binary([BinaryFits(x, y, l2)])[0]


def solve_binary(requests: list[BinaryFits]) -> list[tuple[Tensor, Tensor]]:
    """Every request's fits by Newton's method, pooled: requests of the same width are solved
    together (padded to their longest, in calls of at most :data:`NEWTON_MAX_BYTES` of
    Hessians); each request's weights ``[F, d, 2]`` and biases ``[F, 2]``, in its ``x``'s
    dtype and device."""
    out: list[tuple[Tensor, Tensor] | None] = [None] * len(requests)
    widths = sorted({int(r.x.shape[2]) for r in requests})
    for d in widths:
        group = [k for k, r in enumerate(requests) if int(r.x.shape[2]) == d]
        # the fits of the group, each (request, its index in the request)
        fits = [(k, f) for k in group for f in range(int(requests[k].x.shape[0]))]
        n_max = max(int(requests[k].x.shape[1]) for k in group)
        per_call = max(1, NEWTON_MAX_BYTES // (8 * (3 * (d + 1) ** 2 + 4 * n_max * (d + 1))))
        v_all: dict[tuple[int, int], Tensor] = {}
        c_all: dict[tuple[int, int], Tensor] = {}
        for start in range(0, len(fits), per_call):
            chunk = fits[start : start + per_call]
            x = torch.zeros(len(chunk), n_max, d, dtype=torch.float64)
            y = torch.zeros(len(chunk), n_max, dtype=torch.float64)
            real = torch.zeros(len(chunk), n_max, dtype=torch.float64)
            lam = torch.empty(len(chunk), dtype=torch.float64)
            for i, (k, f) in enumerate(chunk):
                r = requests[k]
                n = int(r.x.shape[1])
                x[i, :n] = r.x[f].detach().to("cpu", torch.float64)
                y[i, :n] = r.y[f].to("cpu", torch.float64)
                real[i, :n] = 1.0
                lam[i] = r.l2 / 2
            v, c = _newton_binary(x, y, real, lam)
            for i, key in enumerate(chunk):
                v_all[key], c_all[key] = v[i], c[i]
        for k in group:
            r = requests[k]
            keys = [(k, f) for f in range(int(r.x.shape[0]))]
            v = torch.stack([v_all[key] for key in keys])
            c = torch.stack([c_all[key] for key in keys])
            # the two-class softmax regression's minimum from the binary one's
            w = torch.stack([-v / 2, v / 2], dim=2).to(r.x)
            b = torch.stack([-c / 2, c / 2], dim=1).to(r.x)
            out[k] = (w, b)
    solved = [o for o in out if o is not None]
    assert len(solved) == len(requests)
    return solved


def _newton_binary(x: Tensor, y: Tensor, real: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """Minimise ``Σ_i real_i · softplus(−s_i (x_i · v + c)) / Σ_i real_i + (lam / 2) ‖v‖²``
    (``s_i = ±1`` for class 1 / 0; ``real`` 1 for an example, 0 for padding) by Newton's
    method with Armijo backtracking, for ``F`` problems at once (float64, CPU): ``v``
    ``[F, d]`` and ``c`` ``[F]``. Strictly convex; the Hessian
    ``X̃ᵀ diag(real σ(1−σ)) X̃ / n + lam·diag(1, …, 1, 0)`` is positive definite (a tiny ridge
    guards the bias against saturation)."""
    n_fits, _, d = x.shape
    xt = torch.cat([x, real.unsqueeze(2)], dim=2)  # [F, n, d+1]: the bias column, 0 on padding
    sign = 2 * y - 1
    count = real.sum(1)  # [F]
    penalty = torch.cat([lam[:, None].expand(n_fits, d), torch.zeros(n_fits, 1)], dim=1)
    penalty = penalty.to(x.dtype)
    ridge: Tensor | None = None  # the Hessian's penalty, built where a step needs it
    theta = torch.zeros(n_fits, d + 1, dtype=x.dtype)

    def objective(th: Tensor) -> Tensor:
        margin = sign * (xt @ th.unsqueeze(2)).squeeze(2)
        data = (F.softplus(-margin) * real).sum(1) / count
        return data + 0.5 * (penalty * th * th).sum(1)

    loss = objective(theta)
    active = torch.ones(n_fits, dtype=torch.bool)
    # fewer examples than features: each step solved in the examples' space
    few = int(x.shape[1]) < d
    for _ in range(NEWTON_STEPS):
        p = torch.sigmoid((xt @ theta.unsqueeze(2)).squeeze(2))  # [F, n]
        residual = (p - y) * real
        grad = (xt.transpose(1, 2) @ residual.unsqueeze(2)).squeeze(2) / count[:, None]
        grad = grad + penalty * theta
        active &= grad.abs().amax(1) > NEWTON_GRAD_TOL
        if not bool(active.any()):
            break
        weight = p * (1 - p) * real / count[:, None]  # the Hessian's data part: X̃ᵀ diag X̃
        step = _few_examples_step(x, weight, grad, lam) if few else None
        if step is None:
            if ridge is None:
                ridge = torch.diag_embed(penalty + torch.where(penalty > 0, 0.0, 1e-12))
            hess = (xt * weight.unsqueeze(2)).transpose(1, 2) @ xt + ridge
            chol, info = torch.linalg.cholesky_ex(hess)
            if bool((info == 0).all()):
                step = -torch.cholesky_solve(grad.unsqueeze(2), chol).squeeze(2)
            else:
                step = -torch.linalg.lstsq(hess, grad.unsqueeze(2)).solution.squeeze(2)
        step = torch.where(active[:, None], step, torch.zeros_like(step))
        slope = (grad * step).sum(1)  # negative where a fit moves
        t = torch.ones(n_fits, dtype=x.dtype)
        for _ in range(40):  # Armijo backtracking, every fit its own step size
            trial_loss = objective(theta + t[:, None] * step)
            ok = (trial_loss <= loss + 1e-4 * t * slope) | ~active
            if bool(ok.all()):
                break
            t = torch.where(ok, t, t * 0.5)
        theta = theta + t[:, None] * step
        loss = objective(theta)
    return theta[:, :d], theta[:, d]


def _few_examples_step(x: Tensor, weight: Tensor, grad: Tensor, lam: Tensor) -> Tensor | None:
    """Newton's step ``−H⁻¹ g`` for ``H = X̃ᵀ diag(weight) X̃ + diag(lam, …, lam, ε)``
    (``X̃ = [x, 1]``) through an ``n``-square system instead of the ``(d+1)``-square Hessian,
    for fits with fewer examples ``n`` than features ``d`` (a probe over a few dozen texts of
    a wide model): with ``B = diag(√weight) x``, ``s = √weight`` and
    ``K = lam·I + B Bᵀ``, the weights' block ``M = lam·I + BᵀB`` has
    ``M⁻¹ = (I − Bᵀ K⁻¹ B) / lam`` (Woodbury), and the bias is eliminated by its Schur
    complement ``σ = lam · sᵀK⁻¹s + ε``. The same step as the Hessian's own solve, up to
    rounding (padding rows, weight 0, add nothing); ``None`` where ``K``'s Cholesky fails."""
    n = int(x.shape[1])
    root = weight.sqrt()  # [F, n]
    b = root.unsqueeze(2) * x  # [F, n, d]
    lam3 = lam.to(x.dtype)[:, None, None]
    k = b @ b.transpose(1, 2) + lam3 * torch.eye(n, dtype=x.dtype)
    chol, info = torch.linalg.cholesky_ex(k)
    if not bool((info == 0).all()):
        return None
    gv, gc = grad[:, :-1], grad[:, -1]
    rhs = torch.stack([root, (b @ gv.unsqueeze(2)).squeeze(2)], dim=2)  # [F, n, 2]
    solved = torch.cholesky_solve(rhs, chol)
    k_s, k_bg = solved[:, :, 0], solved[:, :, 1]
    u1 = (gv - (b.transpose(1, 2) @ k_bg.unsqueeze(2)).squeeze(2)) / lam3[:, :, 0]
    u2 = (b.transpose(1, 2) @ k_s.unsqueeze(2)).squeeze(2)
    sigma = lam.to(x.dtype) * (root * k_s).sum(1) + 1e-12
    dc = (gc - (root * k_bg).sum(1)) / sigma
    dv = u1 - u2 * dc[:, None]
    return -torch.cat([dv, dc[:, None]], dim=1)
