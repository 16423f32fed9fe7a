r"""Stochastic-gradient Langevin dynamics (SGLD) over many chains at once.

All chains live in one tensor ``W`` of shape ``(num_chains, D)`` (the sampled parameters, flattened). Each
step runs **one** batched forward and backward for every chain together: the model is called through
:func:`torch.func.functional_call` under :func:`torch.func.vmap` over the chain dimension, the per-chain
mean losses are summed, and one ``torch.autograd.grad`` gives every chain's gradient (the chains do not
interact, so the gradient of the sum is the stack of the per-chain gradients).

**Update convention** (Welling & Teh 2011; the localised, tempered form of Lau et al. 2025). With
:math:`\varepsilon` the step size, :math:`n\beta` the inverse temperature times the sample size,
:math:`\gamma` the localisation strength, :math:`w^*` the centre and :math:`L_B` the mean loss on the
chain's current minibatch :math:`B_t`,

.. math::
    \Delta w_t = -\frac{\varepsilon}{2}\Big[n\beta\,\nabla L_{B_t}(w_t) + \gamma\,(w_t - w^*)\Big]
                 + \sqrt{\varepsilon}\,\xi_t,\qquad \xi_t\sim\mathcal N(0, I),

a discretisation of the Langevin diffusion whose stationary law is the *local tempered posterior*
:math:`p(w)\propto\exp\{-n\beta L_n(w) - \tfrac\gamma2\|w-w^*\|^2\}`. This is the convention of devinterp's
``SGLD`` optimiser (with ``noise_level = 1``), so step sizes carry over.
With ``preconditioner="rmsprop"`` (pSGLD, Li et al. 2016, without the :math:`\Gamma` correction term) the
drift and the noise are scaled per coordinate, :math:`\Delta w = -\frac\varepsilon2 G\odot[\dots] + \sqrt{\varepsilon G}\odot\xi`,
by :math:`G_i = \sqrt{\bar V_t / \max(V_{t,i}, \delta\bar V_t)}`, with :math:`V_t` an exponential moving average
(rate ``rmsprop_alpha``) of the squared drift and :math:`\bar V_t` its mean over coordinates: normalised so
that ε keeps its plain-SGLD meaning, and bounded by :math:`1/\sqrt\delta`.

**Randomness.** Chain ``c`` owns a ``torch.Generator`` seeded from ``numpy.random.SeedSequence(seed).spawn``;
it draws the chain's minibatches (a fresh permutation of the data each epoch, sampling without replacement)
and its noise, in blocks of steps, drawn in the model's dtype (float32 for half precision; :data:`FLOAT64_NOISE`).
Chain ``c``'s random numbers therefore do not depend on how many other chains run, and the same ``seed`` gives
identical results on the CPU. (``FLOAT64_NOISE = True`` draws the noise in float64 and rounds it once, the stream
of the book's editions before 2026-12-01: torch's float64 normals cost 18 against 3.4 ns each on this book's CPU,
and a batched SGLD step of Part III's transformers runs 1.11-1.18 times slower, ``benchmarks/noise_dtype.py``.)
On a CUDA device the noise is drawn there,
from a CUDA generator of the chain's own with the same seed (:data:`DEVICE_NOISE`; drawing it on the CPU and
copying it over took most of a GPU step at small minibatches): the same seed gives the same run on the same GPU,
a chain's numbers still do not depend on the others, and a GPU run agrees with a CPU run in distribution.

**Fast paths (optional).** A model may define ``forward_batched(params, x)`` taking the stacked parameters
(a dict of ``(chains, *shape)`` tensors) and ``x`` of shape ``(chains, batch, ...)``, and a loss may carry a
``batched(out, y) -> (chains,)`` attribute; when present they replace ``vmap`` --
:class:`~slt_companion.models.DeepLinearNetwork`, :class:`~slt_companion.models.MLP`, the transformers
:class:`~slt_companion.models.ICLTransformer` and :class:`~slt_companion.models.AttentionOnlyLM` (an SGLD
step of Part III's samplers 1.07 and 1.5 times faster on one CPU thread, ``benchmarks/fast_paths.py``),
:func:`slt_companion.llc.half_mse` and :func:`slt_companion.train.lm_loss` do. ``params`` holds every
parameter: those SGLD leaves alone (``params=`` selects a subset) are the model's own tensors expanded to
``(chains, *shape)`` (batch stride 0), so a fast path can apply them as one shared matrix. Before sampling the
fast paths are checked against the vmapped path on two chains, so a wrong fast path is an error, not a wrong
number. Checkpoints sampled together whose buffers differ (a trajectory's BatchNorm statistics) keep ``vmap``.

**A backward pass by hand (optional).** For a small model autograd's fixed cost per step is most of the step
(a deep linear network of 40 parameters, 4 chains: 131 of the 330 µs). A model may also define
``forward_batched_vjp(params, x) -> (out, vjp)``, ``vjp(g)`` returning ``{name: gradient (chains, *shape)}`` for the
gradient ``g`` of a scalar with respect to ``out``, and a loss ``batched_vjp(out, y) -> (losses, g)``, ``g`` the
gradient of ``losses.sum()`` with respect to ``out``. With both, each step's gradient comes from them, not from
autograd (unless the step is compiled). :class:`~slt_companion.models.DeepLinearNetwork` with
:func:`~slt_companion.llc.half_mse` runs autograd's own operations in its order, so its chains are autograd's to
the bit; :class:`~slt_companion.models.MonomialModel`, :class:`~slt_companion.models.ToyModelOfSuperposition`,
:class:`~slt_companion.groundtruth.Polynomial`, :func:`~slt_companion.tms.tms_loss` and
:func:`~slt_companion.groundtruth.mse_loss` agree with autograd to rounding. Before sampling the hand-written
gradient is checked against autograd on two chains, as the fast paths are against ``vmap``.

**What the model must satisfy.** Its forward must be *functional*: it reads the parameters through the
registered ``nn.Parameter`` attributes, modifies no state in place (no BatchNorm running statistics in
training mode -- call ``model.eval()``), and has no data-dependent Python control flow (``.item()``,
``if tensor:``). Any plain stack of ``nn.Linear``/activations/attention qualifies. A model that cannot run
under ``vmap`` raises :class:`NonFunctionalModelError` before sampling starts.

Used in: Part II, "SGLD and the local posterior" and every LLC estimate in the book.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import time
import warnings
import weakref
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from ._checks import check_int, check_positive, user_stacklevel
from .config import resolve_device
from .diagnostics import SGLDDivergenceError

__all__ = ["SamplerConfig", "SGLDResult", "sgld", "NonFunctionalModelError", "select_params", "local_posterior_grid",
           "chain_generators", "clear_center_losses", "module_signature"]

#: steps whose minibatches and noise are drawn together (per chain); part of the RNG contract
BLOCK = 64

#: on a CUDA device, draw each chain's noise there, from a CUDA generator of its own (seeded like the chain's CPU
#: generator); ``False`` draws it on the CPU and copies it over, as on a CPU run (the CPU's stream, many times
#: slower at small minibatches: ``benchmarks/gpu_check.py``)
DEVICE_NOISE = True

#: draw every chain's noise in float64 and round it once to the model's dtype. ``False`` (default since
#: 2026-12-01): draw it in the model's dtype (half precision: in float32), 1.11-1.18 times faster per SGLD step for
#: Part III's float32 transformers (``benchmarks/noise_dtype.py``). The two are different random streams of the same
#: distribution. The float32 stream was tried as the default twice before and held back because the validation
#: chapter's single-seed ground-truth check was not robust to a change of stream (four cases 10-20 % off on it, and
#: as far off on other seeds of the float64 stream); that check now runs over seeds with per-class tolerances and a
#: standard-error band (:mod:`slt_companion.groundtruth`), and the book is built and verified on the float32 stream.
FLOAT64_NOISE = False


#: compile the SGLD step of a model with a batched fast path (``forward_batched``) with :func:`torch.compile`:
#: ``"auto"`` (default) on a CPU, every parameter sampled, for a run of at least :data:`COMPILE_MIN_WORK`; ``True``
#: wherever there is a fast path (any device); ``False`` never. The compiled step fuses the elementwise work around
#: the matmuls: an SGLD chain-step of Part III's transformers ran 1.2-1.5 times faster on one CPU thread, after a
#: compilation of 10-20 s paid once per process and shape (``benchmarks/fast_paths.py``, "compiled"). Its values
#: equal the eager step's up to floating-point rounding (tested); whether a run compiles depends only on the model,
#: the data's shapes and the settings, so a fixed seed still gives identical numbers. If compilation fails (no C++
#: compiler, an operation torch.compile does not support) the sampler warns once and runs eagerly.
COMPILE = "auto"

#: ``COMPILE="auto"`` compiles a run whose steps × :meth:`_Problem.step_bytes` (the activations one step of a
#: checkpoint's chains keeps for the backward pass) reach this: Part III's LLC curves do, ``SLT_QUICK`` runs do not
COMPILE_MIN_WORK = 2e9

#: ... and whose step keeps at least this many bytes: a small model's compiled step is slower (a deep linear network
#: of 40 parameters, 4 chains: 0.29 against 0.20 ms) or no faster (an MLP of 9k parameters at 1 MB: 1.10 and 1.10 ms)
COMPILE_MIN_STEP_BYTES = 2 * 2 ** 20

_COMPILE_FAILED: list = []       # the error, once compilation failed in this process: then the sampler stays eager


def _fast_losses(fast_forward, fast_loss, loss_fn, params: dict, xb, yb):
    """Per-chain losses through the fast path (the function :data:`COMPILE` compiles; the model's bound
    ``forward_batched`` is an argument, so checkpoints of one architecture share one compiled graph)."""
    out = fast_forward(params, xb)
    return fast_loss(out, yb) if fast_loss is not None else vmap(loss_fn)(out, yb)


@functools.lru_cache(maxsize=1)
def _compiled_fast_losses():
    return torch.compile(_fast_losses)


#: below this many multiply-adds per step (chains × batch × parameters) a CPU run uses one thread
SMALL_WORK = 10_000_000

#: per model (weakly held: forgotten with the model), the per-sample losses at its parameters as they stand, for
#: the last few (parameters, loss_fn, data) it was estimated with: :meth:`_Problem.center_per_sample`
_CENTER_LOSSES: "weakref.WeakKeyDictionary[nn.Module, list]" = weakref.WeakKeyDictionary()
_CENTER_LOSSES_PER_MODEL = 4


def clear_center_losses() -> None:
    """Forget every remembered per-sample loss at a centre (:meth:`_Problem.center_per_sample`): for a timing that
    must pay for the pass over the data each time (a benchmark of one way against another on the same models)."""
    _CENTER_LOSSES.clear()


def _weak(obj):
    """A weak reference to ``obj``, or None where it cannot have one (then nothing is remembered for it)."""
    try:
        return weakref.ref(obj)
    except TypeError:
        return None


_PLAIN = (bool, int, float, str, type(None))


def module_signature(model: nn.Module, *, hook_ids: bool = True) -> tuple:
    """What a module's forward depends on besides its tensors and code, as far as it can be read: for every submodule
    its name, class, train/eval flag, plain attributes (numbers, strings, booleans, None: ``self.scale = 2.0``) and
    forward hooks -- their handles' ids (``hook_ids=True``; a hook removed and another added is a change) or only
    their number. Two models of one architecture in the same state have equal signatures (``hook_ids=False``)."""
    out = []
    for name, m in model.named_modules():
        plain = tuple(sorted((k, repr(v)) for k, v in vars(m).items()
                             if not k.startswith("_") and k != "training" and isinstance(v, _PLAIN)))
        hooks = (tuple(m._forward_hooks), tuple(m._forward_pre_hooks)) if hook_ids else \
            (len(m._forward_hooks), len(m._forward_pre_hooks))
        out.append((name, type(m).__module__ + "." + type(m).__qualname__, m.training, plain, hooks))
    if hook_ids:
        from torch.nn.modules import module as _module
        out.append(("<global hooks>", tuple(getattr(_module, "_global_forward_hooks", {})),
                    tuple(getattr(_module, "_global_forward_pre_hooks", {}))))
    return tuple(out)


def digest_tensor(h, name: str, t: torch.Tensor) -> None:
    """Feed a tensor's name, shape, dtype, device and exact contents into the hash ``h`` (a ``hashlib`` object)."""
    h.update(name.encode())
    h.update(str((tuple(t.shape), t.dtype, t.device)).encode())
    h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def _center_key(prob: "_Problem") -> tuple:
    """What the per-sample losses at the centre depend on besides the model's code, as ``(values, objects)``:
    ``values`` must be equal -- every parameter and buffer by name and content (the sampled ones at w*; not which of
    them are sampled), the :func:`module_signature` (train/eval flags, plain attributes, forward hooks), the data
    tensors' in-place versions; ``objects`` (weak references to ``loss_fn`` and the data tensors) must be the same
    objects. The data's contents are digested too (about 1 ms per MB): an edit that bypasses the version counters
    (through a NumPy array sharing the memory, or ``.data``) is seen. A forward that reads anything else (a tensor
    attribute that is no buffer, a global) is not seen: call :func:`clear_center_losses` after changing it."""
    h = hashlib.blake2b(digest_size=16)
    state = {**prob.frozen, **{k: v[0] for k, v in prob.views(prob.center[None]).items()}}
    for name, t in sorted(state.items()):
        digest_tensor(h, name, t)
    h.update(repr(module_signature(prob.model)).encode())
    data = hashlib.blake2b(digest_size=16)
    digest_tensor(data, "x", prob.x)
    digest_tensor(data, "y", prob.y)
    values = (h.digest(), data.digest(), prob.x._version, prob.y._version)   # (train/eval is in the signature)
    return values, (_weak(prob.loss_fn), _weak(prob.x), _weak(prob.y))


def _same_key(a: tuple, b: tuple) -> bool:
    """Two :func:`_center_key` s are the same state, loss and data (a dead or missing reference never matches)."""
    return a[0] == b[0] and all(r is not None and q is not None and r() is not None and r() is q()
                                for r, q in zip(a[1], b[1]))


@contextlib.contextmanager
def cpu_threads(num_threads: int | None):
    """Temporarily set ``torch.set_num_threads`` (``None``: leave it alone); restored on exit."""
    if num_threads is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def auto_threads(device: torch.device, work: int) -> int | None:
    """1 for small CPU problems (thread hand-offs cost more than the arithmetic, badly so on a busy
    machine: 0.6 ms instead of up to 20 ms per step measured on 2 cores), else ``None`` (torch's default)."""
    return 1 if device.type == "cpu" and work < SMALL_WORK else None


def threads_for(prob: "_Problem", num_chains: int, batch_size: int) -> int | None:
    """:func:`auto_threads` for ``num_chains`` chains on ``prob`` with minibatches of ``batch_size``. With 2 threads
    batched runs above :data:`SMALL_WORK` were 1.5x faster than with 1 on a quiet 2-core CPU (8 checkpoints × 4
    chains of an MLP with 1.3k and 18k parameters); on a CPU that other processes keep busy, 1 thread can win."""
    return auto_threads(prob.device, int(num_chains) * min(int(batch_size), prob.n) * prob.D)


class NonFunctionalModelError(TypeError):
    """The model's forward cannot be run under ``torch.func.functional_call`` + ``vmap``."""


@dataclass(frozen=True)
class SamplerConfig:
    """Everything that defines an SGLD run (see the module docstring for the update rule).

    ``nbeta`` is :math:`n\\beta` (required here; :func:`slt_companion.llc.estimate_llc` fills in ``n/log n``).
    ``num_burnin`` steps are run and recorded but excluded from estimates; ``num_draws`` steps follow.
    ``batch_size`` is clipped to the data size (then every step uses the full data). ``step_size`` may be
    a tuple with one value per chain (an ε sweep in a single run).
    """

    step_size: float | tuple
    nbeta: float
    localization: float = 1.0
    num_chains: int = 4
    num_draws: int = 1000
    num_burnin: int = 200
    batch_size: int = 500
    preconditioner: str | None = None
    rmsprop_alpha: float = 0.99
    rmsprop_delta: float = 1e-4
    seed: int = 0

    def __post_init__(self):
        def positive(name, allow_zero=False):
            v = getattr(self, name)
            f = check_positive(name, v, allow_zero=allow_zero)
            if type(v) not in (int, float):    # a NumPy or torch number: stored as a plain float
                object.__setattr__(self, name, f)

        def count(name, minimum):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
                raise ValueError(f"{name} must be an integer ≥ {minimum}, got {v!r}")

        if isinstance(self.step_size, (tuple, list)):
            if len(self.step_size) != self.num_chains:
                raise ValueError(f"step_size has {len(self.step_size)} values but num_chains={self.num_chains}; "
                                 "give one step size, or one per chain")
            object.__setattr__(self, "step_size", tuple(check_positive("every step_size", v) for v in self.step_size))
        else:
            positive("step_size")
        positive("nbeta")
        positive("localization", allow_zero=True)
        count("num_chains", 1)
        count("num_draws", 1)
        count("num_burnin", 0)
        count("batch_size", 1)
        count("seed", 0)
        if self.preconditioner not in (None, "rmsprop"):
            raise ValueError(f"preconditioner must be None or 'rmsprop', got {self.preconditioner!r}")
        if not 0 < self.rmsprop_alpha < 1:
            raise ValueError(f"rmsprop_alpha must lie in (0, 1), got {self.rmsprop_alpha!r}")
        positive("rmsprop_delta")

    @property
    def num_steps(self) -> int:
        return self.num_burnin + self.num_draws

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SGLDResult:
    """What :func:`sgld` returns. Tensors are float64 on the CPU.

    ``loss[c, t]`` is chain ``c``'s minibatch loss :math:`L_{B_t}(w_t)` at step ``t`` (before the update),
    ``center_loss[c, t]`` the loss of the centre :math:`w^*` on the *same* minibatch (``None`` if not
    requested); steps ``t < config.num_burnin`` are burn-in. ``final`` is the last state ``(chains, D)``;
    ``params`` the states ``(chains, steps, D)`` if ``record_params=True``; ``param_names``/``param_shapes``
    describe the flattening.
    """

    loss: torch.Tensor
    center_loss: torch.Tensor | None
    config: SamplerConfig
    param_names: list[str]
    param_shapes: list[tuple[int, ...]]
    final: torch.Tensor
    params: torch.Tensor | None = None
    seconds: float = 0.0
    device: str = "cpu"
    extras: dict = field(default_factory=dict)

    @property
    def draws(self) -> torch.Tensor:
        """The loss trace after burn-in, ``(chains, num_draws)``."""
        return self.loss[:, self.config.num_burnin:]


def select_params(model: nn.Module, params=None) -> list[str]:
    """Names of the parameters to sample: all trainable ones (``params=None``), a list (or set) of names, a single
    name prefix string (a module path, e.g. ``"layers.0"`` or ``"layers.0."``: ``layers.0.weight`` and
    ``layers.0.bias``, not ``layers.01.weight``), or a predicate ``params(name, tensor) -> bool``. The names come
    back in the order of ``model.named_parameters()``, whatever the order they were given in.
    """
    named = dict(model.named_parameters())
    if not named:
        raise ValueError("the model has no parameters to sample")
    hint = ""                                                          # why a selection came out empty
    if params is None:
        names = [k for k, p in named.items() if p.requires_grad]
    elif callable(params):
        names = [k for k, p in named.items() if params(k, p)]
    elif isinstance(params, str):
        prefix = params[:-1] if params.endswith(".") else params      # "layers.0." as "layers.0"
        names = [k for k in named if k == prefix or k.startswith(prefix + ".")]
        near = [] if names else [k for k in named if k.startswith(params)]
        if near:
            hint = (f" (a prefix is matched at dots: {near[0]!r} is not inside module {prefix!r}; give the module "
                    "path or list the names)")
    else:
        try:
            names = list(params)
        except TypeError as err:
            raise TypeError("params must be None, a list of parameter names, a name prefix or a predicate "
                            f"(name, tensor) -> bool; got {type(params).__name__}") from err
        unknown = [k for k in names if k not in named]
        if unknown:
            raise ValueError(f"params names {unknown} are not parameters of the model; "
                             f"its parameters are {list(named)}")
        twice = sorted({k for k in names if names.count(k) > 1})
        if twice:
            raise ValueError(f"params lists {twice} more than once, which would sample them twice (doubling the "
                             "dimension); list each parameter name once")
        chosen = set(names)
        names = [k for k in named if k in chosen]          # the model's order: a set's order is not reproducible
    if not names:
        raise ValueError(f"params={params!r} selects no parameters{hint}; the model's parameters are {list(named)}")
    return names


def chain_generators(seed: int, num_chains: int) -> list[torch.Generator]:
    """One independent CPU ``torch.Generator`` per chain, from ``numpy.random.SeedSequence(seed).spawn``."""
    children = np.random.SeedSequence(int(seed)).spawn(num_chains)
    return [torch.Generator().manual_seed(int(ch.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
            for ch in children]


class _BatchStream:
    """Minibatch indices for one chain: successive random permutations of range(n), cut into batches."""

    def __init__(self, n: int, batch_size: int, gen: torch.Generator):
        self.n, self.b, self.gen = n, min(batch_size, n), gen
        self.buf = torch.empty(0, dtype=torch.long)

    def take(self, steps: int) -> torch.Tensor:
        if self.b == self.n:
            return torch.arange(self.n).expand(steps, self.n)
        need = steps * self.b
        parts = [self.buf]
        have = self.buf.numel()
        while have < need:
            parts.append(torch.randperm(self.n, generator=self.gen))
            have += self.n
        allidx = torch.cat(parts)
        self.buf = allidx[need:]
        return allidx[:need].view(steps, self.b)


def _as_xy(data, device):
    if isinstance(data, torch.utils.data.TensorDataset):
        data = data.tensors
    elif hasattr(data, "xy"):
        data = data.xy
    elif isinstance(data, torch.utils.data.Dataset) and not isinstance(data, (tuple, list)):
        try:
            items = [data[i] for i in range(len(data))]
            data = (torch.stack([torch.as_tensor(a) for a, _ in items]),
                    torch.stack([torch.as_tensor(b) for _, b in items]))
        except Exception as err:
            raise TypeError("data must be (x, y) tensors or a Dataset whose items are (x, y) pairs") from err
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"data must be a pair (x, y) of tensors (or a TensorDataset of two); got {type(data).__name__}"
                        + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else ""))
    x, y = data
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"data=(x, y) must hold torch tensors, got ({type(x).__name__}, {type(y).__name__}); "
                        "convert with torch.as_tensor")
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(f"data: x and y must have the same number of rows (samples); got shapes "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"data has {x.shape[0]} sample; need at least 2")
    return x.to(device), y.to(device)


def _rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``t[idx]`` for an integer tensor ``idx`` of any shape, as one ``index_select`` of whole rows: the same
    values, 3-5x faster on a CPU than advanced indexing, which gathers element by element (a quarter of a TMS step
    went into building the minibatches)."""
    return t.index_select(0, idx.reshape(-1)).view(*idx.shape, *t.shape[1:])


def _check_finite(name: str, t: torch.Tensor) -> None:
    """Raise a ValueError naming ``name`` if the floating tensor ``t`` holds NaN or inf (rows along dim 0)."""
    if not t.is_floating_point() and not t.is_complex():
        return
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        rows = torch.nonzero(bad.reshape(t.shape[0], -1).any(1)).flatten()
        raise ValueError(f"{name} holds {int(bad.sum())} NaN/inf entries (in {rows.numel()} rows, the first is row "
                         f"{int(rows[0])}); drop or impute those rows before sampling")


def _broadcast_mismatch(out: torch.Tensor, y: torch.Tensor, n: int):
    """The shape ``out`` and ``y`` broadcast to with ``n`` rows, if that is larger than either (else ``None``).

    An output ``(n, 1)`` against targets ``(n,)`` broadcasts to ``(n, n)`` inside an elementwise loss: every output
    is compared with every target, a wrong loss without an error. Pairs that do not broadcast at all (class scores
    ``(n, K)`` against labels ``(n,)``) or broadcast to one of their own shapes are not flagged."""
    if out.ndim == 0 or y.ndim == 0 or out.shape[0] != y.shape[0] or out.shape == y.shape:
        return None
    so, sy = (n,) + tuple(out.shape[1:]), (n,) + tuple(y.shape[1:])
    try:
        full = tuple(torch.broadcast_shapes(so, sy))
    except RuntimeError:
        return None
    return full if full not in (so, sy) else None


def _elementwise_loss(loss_fn) -> bool:
    """Whether ``loss_fn`` is a loss known to compare output and target element by element (so that an output and a
    target of different shapes broadcast inside it): :func:`slt_companion.llc.half_mse`, the ground-truth suite's
    ``mse_loss``, torch's ``mse_loss``/``l1_loss``/``smooth_l1_loss``/``huber_loss`` and their modules."""
    import sys

    F = torch.nn.functional
    known = [F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss]
    for mod, name in (("slt_companion.llc", "half_mse"), ("slt_companion.groundtruth", "mse_loss")):
        m = sys.modules.get(mod)                     # not imported: the caller cannot be passing its loss
        if m is not None and hasattr(m, name):
            known.append(getattr(m, name))
    return any(loss_fn is k for k in known) or isinstance(loss_fn, (nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss,
                                                                     nn.HuberLoss))


def _column_mismatch(out: torch.Tensor, y: torch.Tensor) -> bool:
    """A floating target ``y`` with as many axes as ``out`` but another shape that broadcasts against it (output
    ``(n, 1)`` against ``y (n, 2)``, or ``(n, 3)`` against ``(n, 1)``): an elementwise loss compares every output
    with every target column without an error. Integer targets (class labels) are not flagged."""
    if not (isinstance(out, torch.Tensor) and y.is_floating_point()) or out.ndim != y.ndim or out.ndim == 0 \
            or out.shape == y.shape:
        return False
    try:
        torch.broadcast_shapes(out.shape, y.shape)
    except RuntimeError:
        return False
    return True


class _Problem:
    """The model made functional over a flat parameter vector, with the data on the device."""

    def __init__(self, model: nn.Module, loss_fn: Callable, data, params, device):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if device is None:   # the model's own device: no silent copies
            device = next(iter(model.parameters()), torch.empty(0)).device
        self.device = resolve_device(device)
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(model(x), y), got {type(loss_fn).__name__}")
        self.model = model
        self.loss_fn = loss_fn
        self.x, self.y = _as_xy(data, self.device)
        self.n = int(self.x.shape[0])
        named = dict(model.named_parameters())
        self.names = select_params(model, params)
        dtypes = {named[k].dtype for k in self.names}
        if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
            raise TypeError(f"sampled parameters must share one floating dtype, got {sorted(map(str, dtypes))}")
        self.dtype = next(iter(dtypes))
        devices = {named[k].device for k in named}
        if any(d.type != self.device.type for d in devices):
            raise ValueError(f"the model's parameters are on {sorted(map(str, devices))} but device={str(self.device)!r}; "
                             f"move the model with model.to({str(self.device)!r}) or pass the model's device")
        if self.x.is_floating_point() and self.x.dtype != self.dtype:
            raise TypeError(f"data x has dtype {self.x.dtype} but the model's parameters are {self.dtype}; "
                            f"convert with x.to({self.dtype}) (or model.to({self.x.dtype}))")
        self.shapes = [tuple(named[k].shape) for k in self.names]
        self.sizes = [int(np.prod(s)) if s else 1 for s in self.shapes]
        self.D = sum(self.sizes)
        self.frozen = {k: v.detach() for k, v in named.items() if k not in self.names}
        self.frozen.update({k: v for k, v in model.named_buffers()})
        self.center = torch.cat([named[k].detach().reshape(-1) for k in self.names]).to(self.device)
        self._center_loss: float | None = None  # L(w*) on the full data: see center_loss()
        self.chain_frozen: dict | None = None   # frozen tensors that differ per chain, (chains, ...): see with_chain_frozen
        bad = [k for k in self.names if not bool(torch.isfinite(named[k].detach()).all())]
        if bad:
            raise ValueError(f"the model's parameters {bad} hold NaN/inf: the centre w* must be finite (train or "
                             "load the model again)")
        _check_finite("data x", self.x)
        _check_finite("data y", self.y)
        # optional fast paths (see the module docstring); the parameters SGLD leaves alone reach the model's
        # forward_batched expanded to (chains, *shape) (batch stride 0, no copies)
        fwd = getattr(model, "forward_batched", None)
        self.fast_forward = fwd if callable(fwd) else None
        self._frozen_params = {k: v for k, v in self.frozen.items() if k in named}   # not the buffers
        fl = getattr(loss_fn, "batched", None)
        self.fast_loss = fl if callable(fl) else None
        # the fastest path: the model's forward_batched_vjp and the loss's batched_vjp, a backward pass by hand
        vj, lv = getattr(model, "forward_batched_vjp", None), getattr(loss_fn, "batched_vjp", None)
        self.fast_vjp = vj if callable(vj) and callable(lv) and self.fast_forward is not None else None
        self.loss_vjp = lv if self.fast_vjp is not None else None
        self._fused = vmap(self._loss_one)
        self.compiled = False                   # the fast path through torch.compile: see :meth:`compiling`

    def with_chain_frozen(self, frozen: dict) -> "_Problem":
        """A shallow copy whose chains each carry their own values of the frozen tensors in ``frozen``
        (``{name: (chains, *shape)}``): the checkpoints of a trajectory sampled over a subset of their parameters
        (``params=``), the rest differing per checkpoint. Other frozen tensors stay shared."""
        import copy

        out = copy.copy(self)
        out.chain_frozen = dict(frozen)
        if not set(frozen) <= set(self._frozen_params):   # per-chain buffers (a checkpoint's BatchNorm statistics):
            out.fast_forward = None                       # only vmap reads them
            out.fast_vjp = None
        return out

    def views(self, W: torch.Tensor) -> dict:
        """``{name: (C, *shape)}`` views of the chain states ``W (C, D)``. One ``split``, not a slice per tensor:
        a slice's backward writes its gradient into a zero ``(C, D)`` tensor of its own and autograd adds them all
        up (a quarter of a step of Part III's transformer went into those fills and adds); a split's backward
        concatenates the pieces once. The gradient is the same to the bit."""
        C = W.shape[0]
        return {name: piece.view(C, *shape)
                for name, shape, piece in zip(self.names, self.shapes, torch.split(W, self.sizes, dim=1))}

    def _chain_views(self, W: torch.Tensor) -> dict:
        """:meth:`views` of ``W``, with the frozen tensors that differ per chain (``chain_frozen``: vmapped like the
        sampled parameters; they override ``self.frozen``)."""
        views = self.views(W)
        return views if self.chain_frozen is None else {**views, **self.chain_frozen}

    def _with_shared(self, views: dict, C: int) -> dict:
        """Every parameter for a fast path: ``views`` and the parameters SGLD leaves alone, expanded to ``(C, *shape)``
        (batch stride 0, no copies)."""
        shared = {k: v.expand(C, *v.shape) for k, v in self._frozen_params.items() if k not in views}
        return {**shared, **views}

    def _forward_one(self, p: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, {**self.frozen, **p}, (x,))

    def _loss_one(self, p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self._forward_one(p, x), y)

    def batched_losses(self, W: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, *,
                       fast: bool = True) -> torch.Tensor:
        """Per-chain mean loss ``(C,)`` for chain states ``W (C, D)`` on minibatches ``xb (C, B, ...)``."""
        views = self._chain_views(W)
        if not fast or (self.fast_forward is None and self.fast_loss is None):
            return self._fused(views, xb, yb)            # one vmap over model and loss together
        if self.fast_forward is not None:
            params = self._with_shared(views, W.shape[0])
            if self.compiled and not _COMPILE_FAILED:
                try:
                    return _compiled_fast_losses()(self.fast_forward, self.fast_loss, self.loss_fn, params, xb, yb)
                except Exception as err:       # the step is a pure function of its inputs: rerun it eagerly
                    _COMPILE_FAILED.append(err)
                    warnings.warn(f"torch.compile of the SGLD step failed ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0] if str(err) else ''}); sampling runs eagerly (same "
                                  "numbers up to rounding, slower). sampling.COMPILE = False skips the attempt.",
                                  RuntimeWarning, stacklevel=2)
            out = self.fast_forward(params, xb)
        else:
            out = vmap(self._forward_one)(views, xb)
        return self.fast_loss(out, yb) if self.fast_loss is not None else vmap(self.loss_fn)(out, yb)

    def compiling(self, num_chains: int, batch_size: int, num_steps: int) -> "_Problem":
        """This problem, or a shallow copy whose steps go through the compiled fast path, as :data:`COMPILE`,
        :data:`COMPILE_MIN_STEP_BYTES` and :data:`COMPILE_MIN_WORK` decide for a run of ``num_steps`` steps of
        ``num_chains`` chains (one checkpoint's)."""
        if self.fast_forward is None or COMPILE is False or _COMPILE_FAILED:
            return self
        if COMPILE == "auto":
            if self._frozen_params:    # a refined LLC (params=): each selection is a graph of its own to compile, and
                return self            # the shared weights' work is most of the step (one head: 1.05x faster, 4 heads
                                       # of an LM sampled one after another: 72 s compiled against 38 s eager)
            per = self.step_bytes(num_chains, batch_size) if self.device.type == "cpu" else 0
            if per < COMPILE_MIN_STEP_BYTES or num_steps * per < COMPILE_MIN_WORK:
                return self
        import copy

        out = copy.copy(self)
        out.compiled = True
        return out

    def step_bytes(self, num_chains: int, batch_size: int) -> int:
        """Bytes of the activations autograd keeps for the backward pass of one step of ``num_chains`` chains on
        minibatches of ``batch_size`` (one forward at the centre on the data's first rows, through the path the
        sampler takes; shared tensors counted once); 0 when that forward fails (:meth:`check` then says why)."""
        C, b = int(num_chains), min(int(batch_size), self.n)
        W = self.center.expand(C, self.D).clone().requires_grad_(True)
        rows = torch.arange(b, device=self.device).expand(C, b)     # gathered, as the sampler's minibatches are
        xb, yb = _rows(self.x, rows), _rows(self.y, rows)
        kept: dict = {}

        def keep(t):
            s = t.untyped_storage()
            kept[s.data_ptr()] = s.nbytes()
            return t

        try:
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
                self.batched_losses(W, xb, yb)
        except Exception:
            return 0
        return int(sum(kept.values()))

    def losses_and_grads(self, W, xb, yb, *, by_hand: bool = True):
        """Per-chain minibatch losses ``(C,)`` and their gradients ``(C, D)`` at chain states ``W``: by autograd, or
        through the model's ``forward_batched_vjp`` and the loss's ``batched_vjp`` where both exist (``by_hand``;
        checked against autograd before sampling, as the other fast paths are)."""
        if by_hand and self.fast_vjp is not None and not self.compiled:
            C = W.shape[0]
            out, vjp = self.fast_vjp(self._with_shared(self._chain_views(W.detach()), C), xb)
            losses, g = self.loss_vjp(out, yb)
            grads = vjp(g)
            return losses, torch.cat([grads[k].reshape(C, -1) for k in self.names], dim=1)
        Wg = W.detach().requires_grad_(True)
        with torch.enable_grad():
            losses = self.batched_losses(Wg, xb, yb)
            (grad,) = torch.autograd.grad(losses.sum(), Wg)
        return losses.detach(), grad

    def center_loss(self) -> float:
        """L(w*) on the full data, computed once per problem (by :meth:`check`, or on first use): the mean of
        :meth:`center_per_sample` where the loss is a mean over samples (one forward pass over the data serves both
        the paired baseline and this), else one pass of :meth:`full_loss`."""
        if self._center_loss is None:
            psl = self.center_per_sample()
            self._center_loss = float(psl.mean()) if psl is not None else self.full_loss(self.center)
        return self._center_loss

    def center_per_sample(self) -> torch.Tensor | None:
        """:meth:`per_sample_losses` at the centre w* -- the model exactly as it was passed in -- remembered with
        the model (:data:`_CENTER_LOSSES`): a refined LLC of every head at the same checkpoints, or a second estimate
        on the same model, data and loss, does not run the forward pass over the data again."""
        key = _center_key(self)
        memo = _CENTER_LOSSES.setdefault(self.model, [])
        for k, v in memo:
            if _same_key(k, key):
                return v
        v = self.per_sample_losses(self.center)
        memo.append((key, v))
        del memo[:-_CENTER_LOSSES_PER_MODEL]
        return v

    @torch.no_grad()
    def full_loss(self, w: torch.Tensor, chunk: int = 65536) -> float:
        """L(w) on the full data (chunked, weighted by chunk size)."""
        p = {k: v[0] for k, v in self.views(w[None]).items()}
        total = 0.0
        for s in range(0, self.n, chunk):
            xs, ys = self.x[s:s + chunk], self.y[s:s + chunk]
            total += float(self.loss_fn(self._forward_one(p, xs), ys)) * xs.shape[0]
        return total / self.n

    @torch.no_grad()
    def per_sample_losses(self, w: torch.Tensor, chunk: int = 512, frozen: dict | None = None) -> torch.Tensor | None:
        """The loss of each sample at ``w`` (with the frozen tensors ``frozen`` overriding the problem's) if
        ``loss_fn`` is a mean over samples, else ``None``. Chunks of 512 samples: for the transformers of Part III
        that is 3-4 times faster than chunks of 8,192 (the activations stay in the CPU's cache), with the same values
        to the bit; for small models the chunk size hardly matters."""
        p = {k: v[0] for k, v in self.views(w[None]).items()} | (frozen or {})

        def one(x1, y1):
            return self.loss_fn(self._forward_one(p, x1[None]), y1[None])

        try:
            vals = torch.cat([vmap(one)(self.x[s:s + chunk], self.y[s:s + chunk]) for s in range(0, self.n, chunk)])
        except Exception:
            return None
        m = min(self.n, 257)
        direct = float(self.loss_fn(self._forward_one(p, self.x[:m]), self.y[:m]))
        mean = float(vals[:m].double().mean())
        if not math.isclose(direct, mean, rel_tol=1e-4, abs_tol=1e-6):
            return None
        return vals.double()

    @torch.no_grad()
    def _check_loss_at_center(self, out, loss, b: int) -> None:
        """Before any sampling: output/target shapes that broadcast, a non-finite loss at w*, a summed loss."""
        if isinstance(out, torch.Tensor):
            full = _broadcast_mismatch(out, self.y[:b], self.n)
            if full is not None:
                want = (-1,) + tuple(out.shape[1:])
                raise ValueError(
                    f"model(x) has shape {tuple(out.shape)} but y has shape {tuple(self.y[:b].shape)} (first {b} rows): "
                    f"inside loss_fn they broadcast to {full} with the full data, comparing every output with every "
                    f"target, which gives a wrong λ̂ without an error. Make y match the output, e.g. "
                    f"y = y.reshape{want}, or reshape the model's output to y's shape")
            if _column_mismatch(out, self.y[:b]):
                what = (f"model(x) has shape {tuple(out.shape)} but y has shape {tuple(self.y[:b].shape)} (first {b} "
                        "rows): they broadcast against each other, so an elementwise loss compares every output column "
                        "with every target column")
                if _elementwise_loss(self.loss_fn):
                    raise ValueError(f"{what}, which gives a wrong λ̂ without an error. Give the model as many "
                                     "outputs as y has columns (or y as many columns as the model has outputs)")
                warnings.warn(f"{what}. If loss_fn reads the columns itself (a predicted mean and variance, weights "
                              "in y), ignore this; otherwise make the shapes equal", UserWarning,
                              stacklevel=user_stacklevel())
            if not bool(torch.isfinite(out).all()):
                raise ValueError(f"model(x) is NaN/inf at the centre w* on the first {b} rows of data (x and the "
                                 "parameters are finite): check the model's forward")
        if not math.isfinite(float(loss)):
            raise ValueError(f"loss_fn(model(x), y) is {float(loss)} at the centre w* on the first {b} rows of data "
                             "(x, y and model(x) are finite): check loss_fn (a log of zero, a division by zero?)")
        full_loss = self.center_loss()
        if not math.isfinite(full_loss):
            raise ValueError(f"loss_fn(model(x), y) is {full_loss} at the centre w* on the full data (finite on its "
                             f"first {b} rows): the model or the loss is not finite on some samples")
        k = min(self.n // 2, 4)
        xs, ys = self.x[:2 * k], self.y[:2 * k]
        both = float(self.loss_fn(self.model(xs), ys))
        halves = float(self.loss_fn(self.model(xs[:k]), ys[:k])) + float(self.loss_fn(self.model(xs[k:]), ys[k:]))
        tol = 1e-4 * abs(both) + 1e-6
        if abs(both - halves) <= tol < abs(both - halves / 2):
            raise ValueError(
                "loss_fn(model(x), y) adds up the per-sample losses of the batch instead of averaging them (its value "
                f"on {2 * k} rows is the sum of its values on two halves of {k}); λ̂ = nβ·ΔL would be off by the batch "
                "size. Return the mean over the batch (e.g. reduction='mean', or divide by len(y))")

    def check(self, batch_size: int):
        """Run one vmapped forward/backward on two chains; translate failures into clear errors."""
        buffers = {k: v.detach().clone() for k, v in self.model.named_buffers()}
        b = min(batch_size, self.n, 8)
        W = self.center.expand(2, self.D).clone()
        xb = self.x[:b].expand(2, *self.x[:b].shape)
        yb = self.y[:b].expand(2, *self.y[:b].shape)
        try:
            with torch.no_grad():
                out = self.model(self.x[:b])
        except Exception as err:
            text = str(err).lower()
            if self.x.dtype != self.dtype and ("dtype" in text or "scalar type" in text):   # int x into float weights
                hint = (f"x is {str(self.x.dtype).removeprefix('torch.')}, the model's parameters "
                        f"{str(self.dtype).removeprefix('torch.')}: pass x.to({self.dtype}) (e.g. x.float())")
            else:
                hint = "Check that x's trailing shape matches the model's input"
            raise ValueError(f"model(x) failed on the first {b} rows of data x (shape {tuple(self.x.shape)}): "
                             f"{type(err).__name__}: {err}. {hint}.") from err
        try:
            loss = self.loss_fn(out, self.y[:b])
        except Exception as err:
            what = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"type {type(out).__name__}"
            raise ValueError(f"loss_fn(model(x), y) failed with an output of {what} and y shape "
                             f"{tuple(self.y[:b].shape)}: {type(err).__name__}: {err}") from err
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            raise ValueError("loss_fn(model(x), y) must return a 0-d scalar tensor (the mean loss over the batch); "
                             f"got {type(loss).__name__} of shape {tuple(getattr(loss, 'shape', ()))}: average over "
                             "everything (e.g. .mean()), or .squeeze() a single value")
        self._check_loss_at_center(out, loss, b)
        try:
            losses, grad = self.losses_and_grads(W, xb, yb, by_hand=False)
            changed = [k for k, v in self.model.named_buffers() if not torch.equal(v, buffers[k])]
            if changed:
                raise RuntimeError(f"the forward modified the buffers {changed} in place")
        except Exception as err:
            raise NonFunctionalModelError(
                f"{type(self.model).__name__}.forward could not run under torch.func.functional_call + vmap "
                f"({type(err).__name__}: {err}). SGLD here needs a functional forward: parameters read only "
                "through registered nn.Parameters, no in-place state updates (call model.eval() for BatchNorm), "
                "no .item() or data-dependent Python branches, and a loss_fn made of torch operations."
            ) from err
        finally:
            with torch.no_grad():
                for k, v in self.model.named_buffers():
                    v.copy_(buffers[k])
        # what "equal" means for this dtype: float32 and float64 to 1e-4; half precision to a few of its rounding steps
        steps = 8 * torch.finfo(losses.dtype).eps if losses.dtype.is_floating_point else 0.0
        rtol, atol = max(1e-4, steps), max(1e-6, steps)
        # two chains moved off the centre, where the fast paths and the hand backward are compared
        Wr = W.detach() + 1e-3 * torch.arange(1, 3, dtype=W.dtype, device=W.device)[:, None]
        if self.fast_forward is not None or self.fast_loss is not None:
            with torch.no_grad():
                ref = self.batched_losses(Wr, xb, yb, fast=False)
                got = self.batched_losses(Wr, xb, yb)
            if not torch.allclose(ref, got, rtol=rtol, atol=atol):
                raise ValueError(
                    f"the batched fast path (model.forward_batched / loss_fn.batched) gives {got.tolist()} but "
                    f"the vmapped model and loss give {ref.tolist()}; fix the fast path or remove it")
        if self.fast_vjp is not None:
            ref_l, ref_g = self.losses_and_grads(Wr, xb, yb, by_hand=False)
            try:
                got_l, got_g = self.losses_and_grads(Wr, xb, yb)
            except Exception as err:
                raise ValueError(f"the hand-written backward pass (model.forward_batched_vjp / loss_fn.batched_vjp) "
                                 f"failed: {type(err).__name__}: {err}; fix it or remove it") from err
            # relative to the gradient's size: near a centre at w = 0 (a normal crossing) every entry is tiny
            scale = float(ref_g.abs().max()) if ref_g.numel() else 0.0
            if not (got_g.shape == ref_g.shape and torch.allclose(ref_l, got_l, rtol=rtol, atol=atol) and
                    float((got_g - ref_g).abs().max()) <= rtol * scale + torch.finfo(ref_g.dtype).tiny):
                raise ValueError(
                    "the hand-written backward pass (model.forward_batched_vjp / loss_fn.batched_vjp) disagrees with "
                    f"autograd: gradients of shape {tuple(got_g.shape)} against {tuple(ref_g.shape)}, differing by up "
                    f"to {float((ref_g - got_g).abs().max()) if got_g.shape == ref_g.shape else float('nan'):.3g} "
                    f"(largest entry {scale:.3g}; losses {got_l.tolist()} against {ref_l.tolist()}); fix it or remove it")
        if not torch.allclose(losses[0], loss.to(losses.dtype), rtol=rtol, atol=atol):
            raise NonFunctionalModelError(
                f"the vmapped forward gives loss {float(losses[0]):.6g} but model(x) gives {float(loss):.6g}: "
                f"{type(self.model).__name__}.forward depends on something other than its parameters and input "
                "(random state, dropout in training mode?); call model.eval() or make it deterministic.")


def _rms_preconditioner(V: torch.Tensor, delta: float) -> torch.Tensor:
    """G_i = sqrt(mean V) / sqrt(max(V_i, delta·mean V)), per chain; G = 1 where a chain's V is all zero.

    Normalised by the mean so that ε keeps its plain-SGLD meaning (a coordinate with average drift gets
    step ε); coordinates whose drift is tiny get at most 1/sqrt(delta) times larger steps.
    """
    mean = V.mean(dim=1, keepdim=True)
    G = (mean / torch.maximum(V, delta * mean)).sqrt()
    return torch.where(mean > 0, G, torch.ones_like(G))


def _check_divergence(block_loss, block_center, block_params_ok, start, cfg, D, eps_of):
    """Raise SGLDDivergenceError at the first bad step of this block."""
    finite = torch.isfinite(block_loss) & block_params_ok
    excess = cfg.nbeta * (block_loss - block_center) if block_center is not None else None
    # a healthy chain has nbeta*(L - L*) of order lambda <= D/2; 1000x that is an explosion
    limit = 1000.0 * max(D, 1) + 1e4
    bad = ~finite if excess is None else (~finite | (excess > limit))
    if bool(bad.any()):
        k, c = [int(v) for v in torch.nonzero(bad)[0]]
        step = start + k
        val = float(block_loss[k, c])
        what = "a non-finite loss" if not math.isfinite(val) or not bool(finite[k, c]) else \
            f"an exploding loss (nβ·(L − L*) = {float(excess[k, c]):.3g} > {limit:.3g})"
        raise SGLDDivergenceError(step=step, chain=c, loss=val, step_size=eps_of(c), what=what)


def sgld(model: nn.Module, loss_fn: Callable, data, config: SamplerConfig, *, params=None, device=None,
         progress: bool = True, record_params: bool = False, center_loss: bool = True,
         on_divergence: str = "raise", num_threads: int | str | None = "auto",
         chain_mask: torch.Tensor | None = None, stop: Callable | None = None,
         _problem: _Problem | None = None) -> SGLDResult:
    r"""Run ``config.num_chains`` SGLD chains at once from the model's current parameters :math:`w^*`.

    ``loss_fn(model(x), y)`` must return the mean per-sample loss of the batch (a scalar tensor); ``data`` is
    ``(x, y)`` (or a ``TensorDataset``/object with ``.xy``); ``params`` restricts sampling to some parameters
    (see :func:`select_params`; the others stay at their values). The model itself is not modified.
    ``device=None`` means the device of the model's parameters.
    Raises :class:`~slt_companion.diagnostics.SGLDDivergenceError` when a chain's loss becomes non-finite or
    explodes, naming the step and suggesting a smaller step size; with ``on_divergence="mark"`` it instead
    lets the bad chains run on as NaN and lists them in ``result.extras["diverged"]`` (used by pilot runs).
    ``num_threads="auto"`` runs small CPU problems on one thread (:func:`auto_threads`); an integer sets
    the thread count for the call; ``None`` leaves torch's setting alone. The previous setting is restored.

    ``chain_mask``: an optional ``(num_chains, D)`` 0/1 tensor over the flattened sampled parameters (in the
    order of ``result.param_names``). Chain ``c`` then moves only the coordinates where ``chain_mask[c]`` is 1:
    drift and noise are multiplied by the mask, :math:`\Delta w_c = m_c\odot\Delta w_c`, so the other
    coordinates stay exactly at :math:`w^*`. This samples several weight-refined local posteriors in one
    batched run (:func:`slt_companion.llc.estimate_refined_llcs`).

    ``stop``: an optional rule for ending early (convergence-driven sampling, :mod:`slt_companion.convergence`).
    ``config.num_steps`` is then the most steps run; after every block of :data:`BLOCK` steps,
    ``stop(loss, center, W)`` is called with the traces so far (``(chains, steps)`` float64 CPU tensors;
    ``center`` is ``None`` without ``center_loss``) and the chains' current states ``W`` and returns ``None`` to go on or ``(num_burnin, reason)``
    to stop. The result's ``config`` then has that burn-in and ``num_draws = steps - num_burnin``, and
    ``extras["stop_reason"]`` the reason. Because the random numbers are drawn per block, a run stopped
    after ``T`` steps equals a fixed run of ``T`` steps with the same seed.
    """
    if on_divergence not in ("raise", "mark"):
        raise ValueError(f"on_divergence must be 'raise' or 'mark', got {on_divergence!r}")
    if not isinstance(config, SamplerConfig):
        raise TypeError(f"config must be a SamplerConfig, got {type(config).__name__}")
    if not (num_threads is None or isinstance(num_threads, str) and num_threads == "auto"):
        try:
            num_threads = check_int("num_threads", num_threads)
        except ValueError:
            raise ValueError(f"num_threads must be a positive integer, \"auto\" (one thread for small CPU problems) or "
                             f"None (torch's setting), got {num_threads!r}") from None
    prob = _problem or _Problem(model, loss_fn, data, params, device)
    if num_threads == "auto":
        num_threads = threads_for(prob, config.num_chains, config.batch_size)
    with cpu_threads(num_threads):
        if _problem is None:
            prob.check(config.batch_size)
        mask = _check_chain_mask(chain_mask, config.num_chains, prob)
        return _run(prob, config, progress=progress, record_params=record_params, center_loss=center_loss,
                    on_divergence=on_divergence, mask=mask, stop=stop)


def _check_chain_mask(chain_mask, num_chains: int, prob: _Problem) -> torch.Tensor | None:
    if chain_mask is None:
        return None
    m = torch.as_tensor(chain_mask)
    if tuple(m.shape) != (num_chains, prob.D):
        raise ValueError(f"chain_mask must have shape (num_chains, D) = ({num_chains}, {prob.D}), got {tuple(m.shape)}")
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("chain_mask must hold only 0 and 1 (or booleans)")
    if not bool(m.bool().any(dim=1).all()):
        raise ValueError("every chain must move at least one coordinate: a row of chain_mask is all zero")
    return m.to(device=prob.device, dtype=prob.dtype)


def _run(prob: _Problem, config: SamplerConfig, *, progress, record_params, center_loss, on_divergence,
         mask: torch.Tensor | None = None, stop: Callable | None = None, centers: torch.Tensor | None = None,
         groups: list | None = None, frozen: dict | None = None, center_psl: list | None = None):
    """The SGLD loop. ``centers`` ``(chains, D)``: a centre w* per chain (default: ``prob.center`` for all).
    ``groups``: lists of chain indices that are separate estimates (checkpoints); ``stop`` may then return
    ``{group: (num_burnin, reason)}`` to retire groups, whose chains leave the batch (their traces end there,
    NaN after), and a group whose chain diverges is retired with reason ``"diverged"`` instead of raising.
    ``extras["group_stop"]`` lists ``(steps run, num_burnin, reason)`` per group. A chain's random numbers depend
    only on ``config.seed`` and its index within its group (the generators are those of a one-group run).
    ``frozen`` ``{name: (chains, *shape)}``: values of parameters left out of the sampling that differ per chain
    (:meth:`_Problem.with_chain_frozen`; with ``centers``). ``center_psl``: with ``centers`` and ``groups``, each
    group's per-sample losses at its own centre (:meth:`_Problem.center_per_sample` of its checkpoint), instead of
    computing them here again."""
    cfg = config
    C, D, dev = cfg.num_chains, prob.D, prob.device
    T = cfg.num_steps
    # COMPILE: torch.compile for long runs of large steps, judged on one group's chains (a checkpoint's), so that a
    # checkpoint's arithmetic does not depend on what runs beside it
    prob = prob.compiling(len(groups[0]) if groups else C, cfg.batch_size, T)
    if groups is None:
        gens = chain_generators(cfg.seed, C)
    else:
        if record_params:
            raise ValueError("record_params is not supported with several groups of chains")
        gens = [g for grp in groups for g in chain_generators(cfg.seed, len(grp))]
        order = [c for grp in groups for c in grp]
        if sorted(order) != list(range(C)):
            raise ValueError("groups must partition the chains 0..num_chains-1")
        gens = [gens[order.index(c)] for c in range(C)]
    streams = [_BatchStream(prob.n, cfg.batch_size, g) for g in gens]
    noise_dev = dev if dev.type == "cuda" and DEVICE_NOISE else torch.device("cpu")    # where the noise is drawn
    noise_gens = gens if noise_dev.type == "cpu" else \
        [torch.Generator(device=dev).manual_seed(g.initial_seed()) for g in gens]
    if frozen and centers is None:
        raise ValueError("frozen (per-chain frozen tensors) needs centers (a centre per chain)")
    uniq_frozen = None                                         # per unique centre: its own frozen tensors
    if centers is None:
        center = prob.center                                   # (D,), shared
        inverse = torch.zeros(C, dtype=torch.long)
        uniq = prob.center[None]
    else:
        centers = centers.to(device=dev, dtype=prob.dtype)
        if tuple(centers.shape) != (C, D):
            raise ValueError(f"centers must have shape (num_chains, D) = ({C}, {D}), got {tuple(centers.shape)}")
        key = centers
        if frozen:                 # chains are at the same point only if their frozen tensors agree too
            if any(v.shape[0] != C for v in frozen.values()):
                raise ValueError(f"frozen tensors need one row per chain ({C})")
            frozen = {k: v.to(dev) for k, v in frozen.items()}
            key = torch.cat([centers] + [v.reshape(C, -1).to(prob.dtype) for v in frozen.values()], dim=1)
            prob = prob.with_chain_frozen(frozen)
        # on the CPU: torch.unique(dim=0) sorts rows, which took 0.28 s on a GPU for 36 rows of 53k (gpu_check.py)
        uniq, inverse = torch.unique(key.cpu(), dim=0, return_inverse=True)
        first = [int(torch.nonzero(inverse == j)[0]) for j in range(uniq.shape[0])]   # a chain at each point
        uniq = centers[first]
        if frozen:
            uniq_frozen = [{k: v[c] for k, v in frozen.items()} for c in first]
        center = centers.clone()                               # (C, D), one row per chain
    group_of = torch.empty(C, dtype=torch.long)                # each chain's group (checkpoint)
    for g, grp in enumerate(groups or [range(C)]):
        group_of[list(grp)] = g
    psl = None
    if center_loss:
        if centers is None:
            rows = [prob.center_per_sample()]
        elif center_psl is not None and groups is not None:    # each centre's own problem remembered them
            rows = [center_psl[int(group_of[c])] for c in first]
        else:
            rows = [prob.per_sample_losses(u, frozen=f) for u, f in zip(uniq, uniq_frozen or [None] * len(uniq))]
        psl = torch.stack(rows) if all(r is not None for r in rows) else None   # (unique centres, n)

    W = (center.expand(C, D) if center.dim() == 1 else center).clone()
    nbeta, gamma = float(cfg.nbeta), float(cfg.localization)
    per_chain = isinstance(cfg.step_size, tuple)
    if per_chain:   # coefficients computed in float64 as for a scalar ε, then cast: same rounding as one chain alone
        eps_all = torch.tensor(cfg.step_size, dtype=torch.float64)[:, None]
        half_eps, sqrt_eps = -eps_all / 2, eps_all.sqrt()
        h_eps, s_eps = half_eps.to(device=dev, dtype=prob.dtype), sqrt_eps.to(device=dev, dtype=prob.dtype)
        eps_of = lambda c: cfg.step_size[c]  # noqa: E731
    else:
        half_eps, sqrt_eps = -float(cfg.step_size) / 2, math.sqrt(float(cfg.step_size))
        h_eps, s_eps = half_eps, sqrt_eps
        eps_of = lambda c: float(cfg.step_size)  # noqa: E731
    plain = cfg.preconditioner is None and mask is None
    if plain:   # W <- (1 - εγ/2) W - (ε nβ/2) grad + [sqrt(ε) ξ + (εγ/2) w*]: three in-place ops per step
        shrink, gscale = 1.0 + half_eps * gamma, half_eps * nbeta
        pull = (-half_eps * gamma) * center if not per_chain else \
            (-half_eps * gamma).to(device=dev, dtype=prob.dtype) * center
        if per_chain:
            shrink, gscale = shrink.to(device=dev, dtype=prob.dtype), gscale.to(device=dev, dtype=prob.dtype)
    diverged = torch.zeros(C, dtype=torch.bool)
    rms = cfg.preconditioner == "rmsprop"
    V = torch.zeros_like(W) if rms else None

    fill = torch.full if groups is not None else (lambda shape, _v, **kw: torch.empty(shape, **kw))
    loss_trace = fill((T, C), float("nan"), dtype=torch.float64)
    center_trace = fill((T, C), float("nan"), dtype=torch.float64) if center_loss else None
    param_trace = torch.empty(T, C, D, dtype=torch.float64) if record_params else None
    active = torch.arange(C)                    # the chains still running (original indices)
    group_stop: dict = {}

    def retire(verdicts: dict, steps: int):
        """Drop the chains of the groups in ``verdicts`` from every per-chain array."""
        nonlocal W, V, center, pull, h_eps, s_eps, shrink, gscale, mask, active, gens, noise_gens, streams, inverse, \
            prob
        for g, (burnin, reason) in verdicts.items():
            group_stop[int(g)] = (steps, int(burnin), str(reason))
        gone = torch.isin(group_of[active], torch.tensor(sorted(verdicts), dtype=torch.long))
        keep = torch.nonzero(~gone).flatten()
        kd = keep.to(dev)
        W = W[kd]
        V = V[kd] if V is not None else None
        center = center[kd] if center.dim() == 2 else center
        if plain and pull.dim() == 2:
            pull = pull[kd]
        if per_chain:
            h_eps, s_eps = h_eps[kd], s_eps[kd]
            if plain:
                shrink, gscale = shrink[kd], gscale[kd]
        mask = mask[kd] if mask is not None else None
        if prob.chain_frozen is not None:
            prob = prob.with_chain_frozen({k: v[kd] for k, v in prob.chain_frozen.items()})
        gens = [gens[i] for i in keep.tolist()]
        noise_gens = [noise_gens[i] for i in keep.tolist()]
        streams = [streams[i] for i in keep.tolist()]
        inverse = inverse[keep]
        active = active[keep]

    stop_reason = "budget"   # what ends a run with a stop rule that never fired: the most steps allowed
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=T, desc=f"SGLD {C} chains", unit="step", leave=False)
    start_time = time.perf_counter()
    # the noise is drawn in float64 and rounded once (FLOAT64_NOISE), or in the model's dtype (half: in float32)
    draw_dtype = torch.float64 if FLOAT64_NOISE else \
        prob.dtype if prob.dtype in (torch.float32, torch.float64) else torch.float32
    noise_block = None
    normals_buf = None if draw_dtype == prob.dtype else \
        torch.empty(min(BLOCK, T), D, dtype=draw_dtype, device=noise_dev)
    try:
        for start in range(0, T, BLOCK):
            if active.numel() == 0:
                T = start
                break
            A = active.numel()
            K = min(BLOCK, T - start)
            idx = torch.stack([s.take(K) for s in streams], dim=1).to(dev)           # (K, A, B)
            # each chain's K x D normals drawn from its own generator straight into one (A, K, D) block; each
            # chain's slice is contiguous, so it holds the same draws as randn(K, D, dtype=...) would give
            # (the block is reused from block to block: a fresh one costs a page fault per 4 kB, a quarter of the
            # noise's time)
            if noise_block is None or noise_block.shape[:2] != (A, K):
                noise_block = torch.empty(A, K, D, dtype=prob.dtype, device=noise_dev)
            for a, g in enumerate(noise_gens):
                if normals_buf is None:
                    noise_block[a].normal_(generator=g)
                else:
                    noise_block[a].copy_(normals_buf[:K].normal_(generator=g))
            noise = noise_block.to(dev).transpose(0, 1)                             # (K, A, D)
            xb_all, yb_all = _rows(prob.x, idx).unbind(0), _rows(prob.y, idx).unbind(0)
            if plain:
                noise = noise.mul_(s_eps).add_(pull)
            noise = noise.unbind(0)
            block_loss = []
            params_ok = torch.ones(K, A, dtype=torch.bool)
            if center_loss and psl is None:
                block_center = torch.empty(K, A, dtype=prob.dtype, device=dev)
                cW = center.expand(A, D)
            for k in range(K):
                if record_params:
                    param_trace[start + k] = W.double().cpu()
                losses, grad = prob.losses_and_grads(W, xb_all[k], yb_all[k])
                block_loss.append(losses)
                if center_loss and psl is None:
                    with torch.no_grad():
                        block_center[k] = prob.batched_losses(cW, xb_all[k], yb_all[k])
                if plain:
                    with torch.no_grad():
                        if per_chain:
                            W.mul_(shrink).addcmul_(grad, gscale).add_(noise[k])
                        else:
                            W.mul_(shrink).add_(grad, alpha=gscale).add_(noise[k])
                    continue
                with torch.no_grad():
                    drift = grad.mul_(nbeta)
                    if gamma:
                        drift.add_(W - center, alpha=gamma)
                    if mask is not None:   # frozen coordinates get neither drift nor noise
                        drift.mul_(mask)
                        noise_k = noise[k] * mask
                    else:
                        noise_k = noise[k]
                    if rms:
                        sq = drift * drift
                        if start + k == 0:
                            V.copy_(sq)
                        else:
                            V.mul_(cfg.rmsprop_alpha).add_(sq, alpha=1 - cfg.rmsprop_alpha)
                        G = _rms_preconditioner(V, cfg.rmsprop_delta)
                        if per_chain:
                            W.add_(h_eps * G * drift).add_(s_eps * G.sqrt() * noise_k)
                        else:
                            W.addcmul_(G, drift, value=h_eps).addcmul_(G.sqrt(), noise_k, value=s_eps)
                    elif per_chain:
                        W.add_(h_eps * drift).add_(s_eps * noise_k)
                    else:
                        W.add_(drift, alpha=h_eps).add_(noise_k, alpha=s_eps)
            bl = torch.stack(block_loss).double().cpu()
            if center_loss:
                if psl is not None:
                    inv = inverse.to(psl.device)
                    bc = psl[inv[None, :, None], idx.to(psl.device)].mean(-1).cpu()
                else:
                    bc = block_center.double().cpu()
            else:
                bc = None
            if not bool(torch.isfinite(W).all()):
                params_ok[-1] = torch.isfinite(W).all(dim=1).cpu()
            if groups is not None:     # a diverged group leaves the batch; the others go on
                bad = {}
                for g in torch.unique(group_of[active]).tolist():
                    cols = torch.nonzero(group_of[active] == g).flatten()
                    try:
                        _check_divergence(bl[:, cols], bc[:, cols] if bc is not None else None, params_ok[:, cols],
                                          start, cfg, D, lambda c, cols=cols: eps_of(int(active[cols[c]])))
                    except SGLDDivergenceError as err:
                        bad[g] = (0, f"diverged: {err}")
            elif on_divergence == "raise":
                _check_divergence(bl, bc, params_ok, start, cfg, D, eps_of)
            else:
                diverged |= ~(torch.isfinite(bl).all(0) & params_ok.all(0))
            loss_trace[start:start + K, active] = bl
            if center_loss:
                center_trace[start:start + K, active] = bc
            if bar is not None:
                bar.update(K)
            if groups is not None and bad:
                retire(bad, start + K)
            if stop is not None and start + K < T and active.numel():
                Wfull = W
                if groups is not None:
                    Wfull = torch.full((C, D), float("nan"), dtype=W.dtype, device=dev)
                    Wfull[active.to(dev)] = W
                verdict = stop(loss_trace[:start + K].T, center_trace[:start + K].T if center_loss else None, Wfull)
                if isinstance(verdict, dict):
                    verdict = {g: v for g, v in verdict.items() if int(g) not in group_stop}
                    if verdict:
                        retire(verdict, start + K)
                elif verdict is not None:
                    T = start + K
                    burnin, stop_reason = int(verdict[0]), str(verdict[1])
                    cfg = replace(cfg, num_burnin=burnin, num_draws=T - burnin)
                    break
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start_time
    extras = {"diverged": diverged.tolist()}
    if stop is not None:
        extras["stop_reason"] = stop_reason
    final = W.detach().double().cpu()
    if groups is not None:
        extras["group_stop"] = [group_stop.get(g, (T, None, "budget")) for g in range(len(groups))]
        T = max([T] + [v[0] for v in group_stop.values()])
        final = torch.full((C, D), float("nan"), dtype=torch.float64)
        final[active] = W.detach().double().cpu()   # retired chains: NaN (their traces end at their stop)
    return SGLDResult(
        loss=loss_trace[:T].T.contiguous(),
        center_loss=center_trace[:T].T.contiguous() if center_loss else None,
        config=cfg, param_names=list(prob.names), param_shapes=list(prob.shapes), final=final,
        params=param_trace[:T].transpose(0, 1).contiguous() if record_params else None,
        seconds=seconds, device=str(dev), extras=extras,
    )


@torch.no_grad()
def local_posterior_grid(model: nn.Module, loss_fn: Callable, data, *, nbeta: float, localization: float = 0.0,
                         extent: float | tuple = 1.0, points: int = 121, params=None, device=None):
    r"""The local tempered posterior of a **two-parameter** model on a grid around its current parameters :math:`w^*`.

    Returns ``(g1, g2, density)``: coordinates of the two sampled parameters (1-D arrays, ``points`` each,
    covering :math:`w^*_i \pm` ``extent``) and the normalised density
    :math:`\propto\exp\{-n\beta(L_n(w) - L_n(w^*)) - \frac\gamma2\|w-w^*\|^2\}` (rows index ``g2``), for
    drawing under SGLD samples. The losses are computed batched, many grid points at once, like chains.
    Used in: Part II, "SGLD and the local posterior".
    """
    prob = _Problem(model, loss_fn, data, params, device)
    if prob.D != 2:
        raise ValueError(f"local_posterior_grid needs exactly 2 sampled parameters, the selection has {prob.D}; "
                         "pass params= to pick two")
    ext = (extent, extent) if isinstance(extent, (int, float)) else tuple(extent)
    c = prob.center.double().cpu().numpy()
    g1 = np.linspace(c[0] - ext[0], c[0] + ext[0], int(points))
    g2 = np.linspace(c[1] - ext[1], c[1] + ext[1], int(points))
    A, B = np.meshgrid(g1, g2)
    W = torch.tensor(np.stack([A.ravel(), B.ravel()], 1), dtype=prob.dtype, device=prob.device)
    chunk = max(1, 2_000_000 // max(prob.n, 1))
    losses = []
    for s in range(0, W.shape[0], chunk):
        Wc = W[s:s + chunk]
        xb = prob.x.expand(Wc.shape[0], *prob.x.shape)
        yb = prob.y.expand(Wc.shape[0], *prob.y.shape)
        losses.append(prob.batched_losses(Wc, xb, yb).double().cpu())
    L = torch.cat(losses).numpy().reshape(A.shape)
    L0 = prob.center_loss()
    logp = -nbeta * (L - L0) - 0.5 * localization * ((A - c[0]) ** 2 + (B - c[1]) ** 2)
    dens = np.exp(logp - logp.max())
    dens /= dens.sum() * (g1[1] - g1[0]) * (g2[1] - g2[0])
    return g1, g2, dens
