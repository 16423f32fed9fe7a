r"""Training with a log-spaced checkpoint schedule: the raw material of the developmental chapters.

Developmental interpretability studies a *trajectory* :math:`w_0, w_{t_1}, \dots, w_{t_C}`, not one trained
network (Hoogland et al. 2025). :func:`train` runs a plain training loop (Adam or AdamW, a one-cycle linear
learning-rate schedule as in the paper) and keeps the parameters at checkpoint steps that are dense early
(log-spaced: the early stages are short) and still cover the end. The result is a :class:`Trajectory`.

**Determinism and resumption.** The minibatch of step :math:`s` is drawn by ``batch_fn`` from a generator seeded
with ``(seed, s)`` alone, and the learning rate is a function of :math:`s`, so a run that is stopped and
resumed from its saved state (model, optimizer, step) is bit-identical to an uninterrupted one on the CPU.
With ``cache_name`` the finished trajectory goes through :func:`slt_companion.cache.cached`, and the
in-progress state is saved next to the cache entry (``...partial.pt``) at every checkpoint: an interrupted
build picks up where it stopped. States are read with ``torch.load(..., weights_only=True)``.

Used in: Part III, "Stages in in-context linear regression" and "Stages in a small language model".
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from . import cache as _cache
from ._checks import check_int, check_positive, user_stacklevel
from .config import resolve_device
from .sampling import cpu_threads

__all__ = ["train", "Trajectory", "log_checkpoint_steps", "one_cycle_lr"]


def log_checkpoint_steps(num_steps: int, num_checkpoints: int = 50, *, linear: int = 0) -> np.ndarray:
    r"""Checkpoint steps: 0, then ``num_checkpoints`` log-spaced steps from 1 to ``num_steps`` (rounded, duplicates
    removed, so there are fewer when ``num_steps`` is small), plus ``linear`` evenly spaced steps (the paper
    takes the union of a log and a linear schedule so that late training is not starved). Sorted, unique,
    always containing 0 and ``num_steps``.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if isinstance(num_checkpoints, bool) or not isinstance(num_checkpoints, (int, np.integer)) or num_checkpoints < 2:
        raise ValueError(f"num_checkpoints must be an integer ≥ 2, got {num_checkpoints!r}")
    linear = check_int("linear", linear, 0)
    steps = np.round(np.logspace(0, math.log10(num_steps), int(num_checkpoints))).astype(np.int64)
    if linear:
        steps = np.concatenate([steps, np.linspace(0, num_steps, int(linear) + 1).round().astype(np.int64)])
    return np.unique(np.concatenate([[0], steps, [num_steps]]))


def one_cycle_lr(step: int, num_steps: int, max_lr: float, pct_start: float = 0.5, div_factor: float = 25.0,
                 final_div_factor: float = 1e4) -> float:
    r"""The linear one-cycle schedule (PyTorch's ``OneCycleLR(anneal_strategy="linear")``, the paper's choice):
    from ``max_lr/div_factor`` up to ``max_lr`` over the first ``pct_start`` of training, then down to
    ``max_lr/(div_factor·final_div_factor)``."""
    lo = max_lr / div_factor
    end = lo / final_div_factor
    up = float(pct_start * num_steps) - 1          # PyTorch's phase boundaries, step counted from 0
    last = num_steps - 1
    if step <= up:
        return lo + (max_lr - lo) * step / max(up, 1e-12)
    return max_lr + (end - max_lr) * min(1.0, (step - up) / max(last - up, 1e-12))


def checkpoint_index(name: str, i, n: int, *, range_error: type = ValueError) -> int:
    """``i`` (the argument ``name``) as an ``int`` index into a trajectory of ``n`` checkpoints (negative from the
    end); ValueError for what is no whole number, ``range_error`` for an index outside ``[-n, n - 1]``."""
    try:
        i = check_int(name, i, minimum=-(2 ** 63))
    except ValueError:
        raise ValueError(f"{name} must be an integer index into the trajectory, in [{-n}, {n - 1}] (it has {n} "
                         f"checkpoints), got {i!r}") from None
    if not -n <= i < n:
        raise range_error(f"{name} = {i} is out of range: the trajectory has {n} checkpoints, indices [{-n}, {n - 1}] "
                          "(Trajectory.index_of(step) finds a training step's)")
    return i


@dataclass
class Trajectory:
    """Parameters at the checkpoint ``steps``, and the training loss at every step.

    - ``steps`` ``(C,)``: checkpoint steps (0 = initialisation); ``params`` ``(C, P)``: the flattened
      parameters there (in the model's dtype, in ``names`` order with ``shapes``);
    - ``buffers``: for a model with persistent buffers (BatchNorm's running statistics, say), one
      ``{name: tensor}`` per checkpoint, which :meth:`model_at` loads with the parameters; ``None`` without buffers;
    - ``train_loss`` ``(num_steps,)``: the minibatch loss of each step; ``lr`` ``(num_steps,)``: its learning rate;
    - ``config``: the training settings; ``seconds``: training wall time (of the run that produced it).

    :meth:`model_at` gives a model at a checkpoint; iterate with ``for step, model in traj.models(template)``.
    """

    steps: np.ndarray
    params: torch.Tensor
    names: list
    shapes: list
    train_loss: np.ndarray
    lr: np.ndarray
    config: dict = field(default_factory=dict)
    seconds: float = 0.0
    buffers: list | None = None

    def __len__(self) -> int:
        return int(len(self.steps))

    def fingerprint(self) -> list:
        """A cache-key fingerprint of the stored parameters: the reprs of their sum and absolute sum, and the
        number of checkpoints (what :func:`slt_companion.dynamics.llc_over_trajectory` keys its cache on)."""
        p = self.params.double()
        return [repr(float(p.sum())), repr(float(p.abs().sum())), len(self)]

    def _index(self, i) -> int:
        """``i`` as an ``int`` index into ``steps`` (negative from the end), or a clear error."""
        return checkpoint_index("checkpoint index i", i, len(self), range_error=IndexError)

    def state_dict(self, i: int) -> dict:
        """The parameters of checkpoint ``i`` (an index into ``steps``) as a state dict."""
        i = self._index(i)
        flat, out, pos = self.params[i], {}, 0
        for name, shape in zip(self.names, self.shapes):
            k = int(np.prod(shape)) if len(shape) else 1
            out[name] = flat[pos:pos + k].reshape(tuple(shape)).clone()
            pos += k
        return out

    def model_at(self, i: int, template: nn.Module) -> nn.Module:
        """A deep copy of ``template`` holding checkpoint ``i``'s parameters, in eval mode."""
        i = self._index(i)
        model = copy.deepcopy(template)
        have = {n: tuple(p.shape) for n, p in model.named_parameters()}
        want = dict(zip(self.names, (tuple(s) for s in self.shapes)))
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        wrong = [f"{n} {have[n]} (trained: {want[n]})" for n in self.names if n in have and have[n] != want[n]]
        if missing or extra or wrong:
            raise ValueError("template does not match the trained model: "
                             + "; ".join(f"{what} {names[:3]}" for what, names in
                                         (("missing parameters", missing), ("extra parameters", extra),
                                          ("other shapes", wrong)) if names)
                             + ". Pass a model built with the same class and sizes as the one trained")
        sd = self.state_dict(i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(sd[name].to(p))
            if self.buffers is not None:
                own = dict(model.named_buffers())
                lost = sorted(set(self.buffers[i]) - set(own))
                if lost:
                    raise ValueError(f"template has no buffers {lost[:3]}, which the trained model had: pass a model "
                                     "built with the same class and sizes as the one trained")
                for name, b in self.buffers[i].items():
                    if own[name].shape != b.shape:
                        raise ValueError(f"template's buffer {name} has shape {tuple(own[name].shape)}, the trained "
                                         f"model's {tuple(b.shape)}: pass a model built like the one trained")
                    own[name].copy_(b.to(own[name]))
        return model.eval()

    def models(self, template: nn.Module):
        """Yield ``(step, model)`` for every checkpoint."""
        for i, s in enumerate(self.steps):
            yield int(s), self.model_at(i, template)

    def index_of(self, step: int) -> int:
        """The index of the checkpoint closest to ``step``."""
        return int(np.argmin(np.abs(self.steps - step)))

    def smoothed_loss(self, window: int = 50) -> np.ndarray:
        """The training loss averaged over a trailing window of ``window`` steps (length ``num_steps``)."""
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
            raise ValueError(f"window must be a positive number of steps, got {window!r}")
        x = np.asarray(self.train_loss, dtype=np.float64)
        c = np.concatenate([[0.0], np.cumsum(x)])
        i = np.arange(1, len(x) + 1)
        lo = np.maximum(0, i - window)
        return (c[i] - c[lo]) / (i - lo)

    def to_dict(self) -> dict:
        d = {"steps": self.steps, "params": self.params, "names": list(self.names),
             "shapes": [list(s) for s in self.shapes], "train_loss": self.train_loss, "lr": self.lr,
             "config": self.config, "seconds": self.seconds}
        if self.buffers is not None:
            d["buffers"] = {str(k): dict(b) for k, b in enumerate(self.buffers)}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Trajectory":
        steps = np.asarray(d["steps"], dtype=np.int64)
        buffers = d.get("buffers")
        if buffers is not None:
            buffers = [{k: torch.as_tensor(v) for k, v in buffers[str(i)].items()} for i in range(len(steps))]
        return cls(steps=steps, params=torch.as_tensor(d["params"]),
                   names=list(d["names"]), shapes=[tuple(s) for s in d["shapes"]],
                   train_loss=np.asarray(d["train_loss"]), lr=np.asarray(d["lr"]),
                   config=dict(d.get("config", {})), seconds=float(d.get("seconds", 0.0)), buffers=buffers)


def _flat(model: nn.Module) -> torch.Tensor:
    """The parameters as one flat CPU tensor, in their own dtype (float32 models stay float32, float64 float64)."""
    return torch.cat([p.detach().reshape(-1).cpu() for p in model.parameters()])


def _buffers(model: nn.Module) -> dict:
    """The model's persistent buffers (what its ``state_dict`` holds besides parameters), cloned to the CPU."""
    params = {n for n, _ in model.named_parameters()}
    return {n: t.detach().cpu().clone() for n, t in model.state_dict().items() if n not in params}


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(step)) % (2 ** 63))


def _fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256(repr(model).encode())
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def train(model: nn.Module, loss_fn: Callable, batch_fn: Callable[[torch.Generator], tuple], *, num_steps: int,
          lr: float = 3e-3, optimizer: str = "adam", betas: Sequence[float] = (0.9, 0.999), weight_decay: float = 0.0,
          schedule: str = "onecycle", pct_start: float = 0.5, checkpoints=None, seed: int = 0, device=None,
          cache_name: str | None = None, cache_config: dict | None = None, stop_at: int | None = None,
          progress: bool = True, num_threads: int | None = None, grad_clip: float | None = None,
          compile: bool = False) -> Trajectory:
    r"""Train ``model`` for ``num_steps`` steps and return its :class:`Trajectory` (the model itself ends trained).

    Parameters
    ----------
    model : the network (trained in place from its current parameters).
    loss_fn : ``loss_fn(model(x), y)`` -> scalar mean loss.
    batch_fn : ``batch_fn(generator) -> (x, y)``, a pair of torch tensors, e.g.
        :meth:`slt_companion.data.ICLTaskSampler.batch_fn`; it must draw all its randomness from ``generator``
        (seeded from ``(seed, step)``).
    num_steps, lr : steps and the (peak) learning rate.
    optimizer : ``"adam"`` or ``"adamw"`` (with ``weight_decay``), ``betas`` as in PyTorch; ``"sgd"`` (plain),
        ``"momentum"`` (SGD with heavy-ball momentum ``betas[0]``), ``"entropy-sgd"``
        (:class:`slt_companion.optim.EntropySGD` with its defaults and outer learning rate ``lr``); or a callable
        ``params -> torch.optim.Optimizer`` (then ``cache_config`` must describe it). An optimizer whose ``step``
        needs a closure (Entropy-SGD) gets one that draws a fresh minibatch on every call after the first, from
        the step's generator; the recorded loss is the first call's.
    schedule : ``"onecycle"`` (:func:`one_cycle_lr` with ``pct_start``; the paper's) or ``"constant"``.
    checkpoints : steps at which to keep the parameters (a 1-D sequence); default :func:`log_checkpoint_steps`
        ``(num_steps, 50)``.
    seed : a whole number; seeds the minibatch stream (the model's initialisation is its own ``seed``).
    cache_name, cache_config : if ``cache_name`` is given the trajectory is cached under ``cache_name`` with a
        key made of ``cache_config``, the training settings and a fingerprint of the initial model; ``cache_config``
        must describe whatever ``loss_fn`` and ``batch_fn`` do (they cannot be hashed). The run is then also resumable.
    stop_at : stop after this step, save the resumable state and return the partial trajectory (not cached);
        the next call with the same arguments continues from there -- with a freshly initialised model or with the
        same (now partly trained) model object: the stopped weights are recognised as a state of the run.
    num_threads : CPU threads during training; ``None``: one thread for models under a million parameters on the
        CPU (faster there, and much faster on a busy machine), else torch's setting.
    grad_clip : clip the gradient's global norm to this value before each step (``None``: no clipping; the
        language-model runs of Hoogland et al. 2025 clip at 1).
    compile : run the model's forward and backward through :func:`torch.compile` (the optimizer stays eager). On
        this book's 2-core CPU a training step of Part III's transformers ran 1.2-1.5 times faster after 10-16 s of
        compiling (``benchmarks/compiled_training.py``). The arithmetic rounds differently, so the trajectory differs
        from the eager one by rounding, growing over training: a compiled run is cached under a key of its own. The
        chapters' main runs train eagerly; the transient-ridge and language-model reruns compile. If compilation
        fails the run warns and goes on eagerly. An optimizer
        whose step takes a closure (Entropy-SGD) trains eagerly.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    num_steps = int(num_steps)
    lr = check_positive("lr", lr)
    if not callable(optimizer) and optimizer not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {list(_OPTIMIZERS)} or a callable params -> Optimizer, "
                         f"got {optimizer!r}")
    opt_factory = optimizer if callable(optimizer) else None
    if opt_factory is not None:
        optimizer = "callable:" + getattr(optimizer, "__qualname__", type(optimizer).__name__)
    if schedule not in ("onecycle", "constant"):
        raise ValueError(f"schedule must be 'onecycle' or 'constant', got {schedule!r}")
    if schedule == "onecycle" and not (isinstance(pct_start, (int, float)) and 0 < pct_start <= 1):
        raise ValueError(f"pct_start (the fraction of steps spent warming up) must lie in (0, 1], got {pct_start!r}")
    if not callable(loss_fn) or not callable(batch_fn):
        raise TypeError("loss_fn and batch_fn must be callables: loss_fn(model(x), y), batch_fn(generator) -> (x, y)")
    if checkpoints is not None:
        raw = np.asarray(checkpoints)
        if raw.ndim != 1:
            raise ValueError(f"checkpoints must be a 1-D sequence of training steps, e.g. [0, 10, 100], got "
                             + (f"the number {checkpoints!r}: for that many log-spaced checkpoints pass "
                                f"log_checkpoint_steps(num_steps, {checkpoints!r}), for one step [{checkpoints!r}]"
                                if raw.ndim == 0 else f"an array of shape {raw.shape}"))
        if raw.dtype.kind not in "iuf" or (raw.dtype.kind == "f" and not np.all(raw == np.round(raw))):
            raise ValueError(f"checkpoints must be whole training steps, got {list(raw.reshape(-1))[:5]}")
    ckpts = log_checkpoint_steps(num_steps) if checkpoints is None else np.unique(np.asarray(checkpoints, dtype=np.int64))
    if ckpts.size == 0 or ckpts.min() < 0 or ckpts.max() > num_steps:
        raise ValueError(f"checkpoints must be steps in [0, num_steps={num_steps}], got {list(ckpts)[:5]}...")
    if stop_at is not None and not (0 < int(stop_at) <= num_steps):
        raise ValueError(f"stop_at must lie in [1, num_steps={num_steps}], got {stop_at!r}")
    if grad_clip is not None:
        grad_clip = check_positive("grad_clip (or None)", grad_clip)
    try:
        seed = check_int("seed", seed, minimum=-(2 ** 63))
    except ValueError:
        raise ValueError(f"seed must be a whole number (it seeds the minibatch stream, which must be reproducible: "
                         f"None is not accepted), got {seed!r}") from None
    try:
        betas = [float(b) for b in betas]
    except (TypeError, ValueError):
        raise TypeError(f"betas must be a sequence of numbers, e.g. (0.9, 0.999), got {betas!r}") from None
    if optimizer in ("adam", "adamw") and len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2) for optimizer={optimizer!r}, e.g. (0.9, 0.999); "
                         f"got {tuple(betas)!r}")
    if optimizer == "momentum" and not betas:
        raise ValueError("betas must hold the momentum first for optimizer='momentum', e.g. (0.9,); got ()")
    dev = resolve_device(device)
    model.to(dev)
    settings = {"num_steps": num_steps, "lr": float(lr), "optimizer": optimizer, "betas": betas,
                "weight_decay": float(weight_decay), "schedule": schedule, "pct_start": float(pct_start),
                "checkpoints": [int(c) for c in ckpts], "seed": int(seed),
                "grad_clip": None if grad_clip is None else float(grad_clip)}
    if compile:                   # only then: the eager runs' cache keys stay as they were
        settings["compile"] = True

    def run(partial_path=None, restart_ok=True) -> dict:
        return _run(model, loss_fn, batch_fn, settings, ckpts, dev, partial_path, stop_at, progress, num_threads,
                    opt_factory, restart_ok)

    if cache_name is None:
        return Trajectory.from_dict(run())
    base = {"user": dict(cache_config or {}), "train": settings, "device": dev.type}
    fingerprint = _fingerprint(model)
    key = _resumed_key(cache_name, base, fingerprint)
    path = _cache.entry_path(cache_name, key)
    partial = path.with_name(path.name[:-4] + ".partial.pt")
    restart_ok = key["model"] == fingerprint      # the model passed is the run's initialisation
    if stop_at is not None and int(stop_at) < num_steps:
        traj = Trajectory.from_dict(run(partial, restart_ok))
        # the model now holds the stopped weights: remember which run they belong to
        _write_resume_pointer(cache_name, base, _fingerprint(model), key["model"])
        return traj
    result = _cache.cached(cache_name, key, lambda: run(partial, restart_ok))
    for leftover in (partial, partial.with_name(partial.name + ".tmp")):   # (the second: written by older versions)
        try:
            leftover.unlink(missing_ok=True)
        except OSError:
            pass
    traj = Trajectory.from_dict(result)
    final = result.get("final") or traj.state_dict(-1)   # after the last step (older entries: the last checkpoint)
    with torch.no_grad():                       # leave the model trained, as without the cache
        for name, p in model.named_parameters():
            p.copy_(torch.as_tensor(final[name]).to(p))
        for name, b in model.named_buffers():
            if name in final:
                b.copy_(torch.as_tensor(final[name]).to(b))
    return traj


def _compiled(model: nn.Module):
    """``torch.compile(model)``, or the model itself (with a warning) where torch cannot compile here."""
    try:
        return torch.compile(model)
    except Exception as err:
        warnings.warn(f"torch.compile is not available here ({type(err).__name__}: {err}); training runs eagerly",
                      RuntimeWarning, stacklevel=user_stacklevel())
        return model


def _loss_and_backward(fwd, loss_fn, opt, x, y) -> torch.Tensor:
    """One step's loss through ``fwd`` (the model, or it compiled) and its gradients, freshly zeroed first."""
    loss = loss_fn(fwd(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    return loss


def _pointer_name(cache_name: str) -> str:
    return f"{cache_name}.resume"


def _resumed_key(cache_name: str, base: dict, fingerprint: str) -> dict:
    """The cache key of a run started from the model whose parameters have ``fingerprint``.

    After ``train(..., stop_at=k)`` the model object holds the weights of step ``k``; a pointer file (written by
    :func:`_write_resume_pointer`) maps their fingerprint to the fingerprint of the initial model, so that a later
    ``train(...)`` with the same object continues *that* run (from its saved state, or its cached result) instead of
    starting a new one from the step-``k`` weights labelled as step 0. Without a pointer, or when the run it names
    has neither a saved state nor a cached result, the key is that of the model as passed.
    """
    own = {**base, "model": fingerprint}
    pointer = _cache.entry_path(_pointer_name(cache_name), own)
    if not pointer.exists():
        return own
    try:
        origin = str(_cache.load(pointer)["model"])
    except (ValueError, KeyError, TypeError):
        return own
    key = {**base, "model": origin}
    path = _cache.entry_path(cache_name, key)
    if path.exists() or path.with_name(path.name[:-4] + ".partial.pt").exists():
        return key
    return own


def _write_resume_pointer(cache_name: str, base: dict, stopped: str, origin: str) -> None:
    """Record that weights with fingerprint ``stopped`` are a stopped state of the run from ``origin``."""
    pointer = _cache.entry_path(_pointer_name(cache_name), {**base, "model": stopped})
    try:
        _cache.save(pointer, {"model": origin})
    except OSError as err:
        warnings.warn(f"could not write the resume pointer {pointer} ({err}); to resume this run, call train() "
                      "again with a freshly initialised model rather than the stopped one", RuntimeWarning,
                      stacklevel=user_stacklevel())


_OPTIMIZERS = ("adam", "adamw", "sgd", "momentum", "entropy-sgd")


def _make_optimizer(model, s, opt_factory):
    params = model.parameters()
    if opt_factory is not None:
        return opt_factory(params)
    name = s["optimizer"]
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        # foreach: one kernel per operation for all tensors (torch's default only on GPUs); on the CPU the same
        # trajectory to the bit as the per-tensor loop (tested), a few per cent faster for the book's small models
        return cls(params, lr=s["lr"], betas=tuple(s["betas"]), weight_decay=s["weight_decay"], foreach=True)
    if name in ("sgd", "momentum"):
        return torch.optim.SGD(params, lr=s["lr"], momentum=s["betas"][0] if name == "momentum" else 0.0,
                               weight_decay=s["weight_decay"])
    from .optim import EntropySGD

    return EntropySGD(params, lr=s["lr"], weight_decay=s["weight_decay"], seed=s["seed"])


def _load_partial(path, model, opt, N: int, ckpts, has_buffers: bool = False) -> tuple:
    """Read a saved training state and load it into ``model`` and ``opt``; raise on anything inconsistent.

    Returns ``(start, seconds, losses, lrs, kept, kept_buffers)``."""
    state = torch.load(path, weights_only=True)
    start = int(state["step"])
    if not 0 < start < N:
        raise ValueError(f"saved step {start} is not in (0, num_steps={N})")
    losses, lrs = state["losses"].numpy(), state["lrs"].numpy()
    if losses.shape != (N,) or lrs.shape != (N,):
        raise ValueError(f"saved losses have shape {losses.shape}, expected ({N},)")
    kept = {int(k): v for k, v in zip(state["kept_steps"].tolist(), state["kept"])}
    if not set(kept) <= {int(c) for c in ckpts}:
        raise ValueError(f"saved checkpoints {sorted(kept)[:5]} are not in this run's schedule")
    kept_buffers = dict(zip(kept, state["kept_buffers"])) if has_buffers else {}
    if has_buffers and len(kept_buffers) != len(kept):
        raise ValueError("the saved state's buffers do not match its checkpoints")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    return start, float(state["seconds"]), losses, lrs, kept, kept_buffers


def _batch(batch_fn, gen) -> tuple:
    """``batch_fn(gen)``, checked to be a pair ``(x, y)`` of torch tensors."""
    out = batch_fn(gen)
    if isinstance(out, torch.Tensor) or not isinstance(out, (tuple, list)) or len(out) != 2:
        got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else (
            f"a {type(out).__name__} of length {len(out)}" if isinstance(out, (tuple, list)) else type(out).__name__)
        raise TypeError(f"batch_fn(generator) must return a pair (x, y) of torch tensors, got {got}")
    bad = [f"{n} is a {type(v).__module__}.{type(v).__name__}" for n, v in zip("xy", out)
           if isinstance(v, np.ndarray) or not callable(getattr(v, "to", None))]
    if bad:
        raise TypeError(f"batch_fn(generator) must return torch tensors (x, y), but {' and '.join(bad)}: convert them "
                        "inside batch_fn, e.g. with torch.as_tensor")
    return out


def _run(model, loss_fn, batch_fn, s, ckpts, dev, partial_path, stop_at, progress, num_threads,
         opt_factory=None, restart_ok=True) -> dict:
    from tqdm.auto import tqdm

    N = s["num_steps"]
    names = [n for n, _ in model.named_parameters()]
    shapes = [list(p.shape) for p in model.parameters()]
    opt = _make_optimizer(model, s, opt_factory)
    needs_closure = getattr(opt, "needs_closure", False) or type(opt).__name__ == "EntropySGD"
    if needs_closure and s["grad_clip"] is not None:
        raise ValueError("grad_clip is not supported with an optimizer whose step takes a closure (it computes the "
                         "gradients itself); pass grad_clip=None")
    losses = np.full(N, np.nan)
    lrs = np.full(N, np.nan)
    kept: dict[int, torch.Tensor] = {}
    has_buffers = bool(_buffers(model))
    kept_buffers: dict[int, dict] = {}
    start, elapsed = 0, 0.0
    if partial_path is not None and os.path.exists(partial_path):
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        try:
            start, elapsed, saved_losses, saved_lrs, kept, kept_buffers = _load_partial(partial_path, model, opt, N,
                                                                                        ckpts, has_buffers)
            losses[:start], lrs[:start] = saved_losses[:start], saved_lrs[:start]
        except Exception as err:      # truncated or foreign file: never let it block every later run
            with torch.no_grad():
                model.load_state_dict(initial)
            opt = _make_optimizer(model, s, opt_factory)
            start, elapsed, kept, kept_buffers = 0, 0.0, {}, {}
            aside = f"{partial_path}.corrupt"
            try:
                os.replace(partial_path, aside)
            except OSError:
                aside = None
            reason = (str(err).strip().splitlines() or [""])[0][:160]
            what = (f"the saved training state {partial_path} cannot be resumed ({type(err).__name__}: {reason}); "
                    + (f"moved it to {aside}" if aside else "could not move it aside"))
            if not restart_ok:
                raise RuntimeError(
                    f"{what}. The model passed holds the weights of that stopped run, not its initialisation, so "
                    "the run cannot restart from step 0: call train() with a freshly initialised model") from err
            warnings.warn(f"{what}; restarting the run from step 0.", RuntimeWarning, stacklevel=user_stacklevel())
    if stop_at is not None and int(stop_at) < start:
        with torch.no_grad():
            model.load_state_dict(initial)          # the model as it was passed; the saved state stays as it is
        raise ValueError(f"this run is already saved at step {start}, after stop_at={int(stop_at)}: pass a stop_at "
                         f"of at least {start}, or none to finish the run")
    can_save = partial_path is not None

    def save_partial(step):
        nonlocal can_save
        if not can_save:
            return
        ks = sorted(kept)
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "seconds": elapsed,
                 "losses": torch.from_numpy(losses), "lrs": torch.from_numpy(lrs),
                 "kept_steps": torch.tensor(ks, dtype=torch.int64), "kept": [kept[k] for k in ks]}
        if has_buffers:
            state["kept_buffers"] = [kept_buffers[k] for k in ks]
        try:
            _cache.atomic_write(partial_path, lambda fh: torch.save(state, fh))
        except OSError as err:        # keep training; only resumability is lost
            can_save = False
            warnings.warn(f"could not save the training state to {partial_path} ({type(err).__name__}: {err}); "
                          "training goes on, but an interruption will not be resumable", RuntimeWarning,
                          stacklevel=user_stacklevel())

    if start == 0 and 0 in ckpts:
        kept[0] = _flat(model)
        if has_buffers:
            kept_buffers[0] = _buffers(model)
    end = N if stop_at is None else int(stop_at)
    ckpt_set = set(int(c) for c in ckpts)
    if num_threads is None and dev.type == "cpu" and sum(p.numel() for p in model.parameters()) < 1_000_000:
        num_threads = 1        # small models: thread hand-offs cost more than they save (see sampling.auto_threads)
    model.train()
    fwd = _compiled(model) if s.get("compile") and not needs_closure else model   # (Entropy-SGD: eager)
    t0 = time.perf_counter()
    try:
        with cpu_threads(num_threads):
            bar = tqdm(range(start, end), desc="training", disable=not progress, initial=start, total=end,
                       mininterval=1.0)
            for step in bar:                        # step s takes the model from w_s to w_{s+1}
                gen = _step_generator(s["seed"], step)
                x, y = _batch(batch_fn, gen)
                lr = one_cycle_lr(step, N, s["lr"], s["pct_start"]) if s["schedule"] == "onecycle" else s["lr"]
                for g in opt.param_groups:
                    g["lr"] = lr
                if needs_closure:
                    batches = [(x, y)]

                    def closure():
                        xb, yb = batches.pop() if batches else _batch(batch_fn, gen)
                        opt.zero_grad(set_to_none=True)
                        out = loss_fn(model(xb.to(dev)), yb.to(dev))
                        out.backward()
                        return out

                    loss = opt.step(closure)
                else:
                    try:
                        loss = _loss_and_backward(fwd, loss_fn, opt, x.to(dev), y.to(dev))
                    except Exception as err:
                        if fwd is model:
                            raise
                        # compiling failed: nothing was applied yet; this step and the rest run eagerly
                        warnings.warn(f"torch.compile of the training step failed ({type(err).__name__}: "
                                      f"{str(err).splitlines()[0] if str(err) else ''}); training goes on eagerly "
                                      "(compile=False skips the attempt)", RuntimeWarning, stacklevel=user_stacklevel())
                        fwd = model
                        loss = _loss_and_backward(fwd, loss_fn, opt, x.to(dev), y.to(dev))
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss became {float(loss.detach())} at step {step}; lower lr (now {s['lr']})")
                if not needs_closure:
                    if s["grad_clip"] is not None:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), s["grad_clip"])
                    opt.step()
                losses[step], lrs[step] = float(loss.detach()), lr
                if step + 1 in ckpt_set:
                    kept[step + 1] = _flat(model)
                    if has_buffers:
                        kept_buffers[step + 1] = _buffers(model)
                    elapsed_now = elapsed + time.perf_counter() - t0
                    if partial_path is not None and (step + 1) < N:
                        elapsed, t0 = elapsed_now, time.perf_counter()
                        save_partial(step + 1)
                if progress and step % 100 == 0:
                    bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    finally:
        model.eval()
    elapsed += time.perf_counter() - t0
    if end < N:
        save_partial(end)
    ks = sorted(kept)
    return {"steps": np.asarray(ks, dtype=np.int64), "params": torch.stack([kept[k] for k in ks]),
            "names": names, "shapes": shapes, "train_loss": losses, "lr": lrs, "config": s, "seconds": elapsed,
            "final": {n: t.detach().cpu().clone() for n, t in model.state_dict().items()},
            **({"buffers": {str(j): kept_buffers[k] for j, k in enumerate(ks)}} if has_buffers else {})}


def icl_settings() -> dict:
    r"""The sizes of the in-context regression run in Part III (``SLT_QUICK=1`` shrinks them; same code path).

    The architecture and task are the paper's (:class:`~slt_companion.models.ICLTransformer` defaults: D = 4,
    K = 16, σ² = 0.125, M = ∞). Training: Adam, one-cycle linear schedule with peak lr 3e-3 (the paper's), but
    ``num_steps × batch_size`` sequences instead of the paper's 500,000 × 256. LLC at each checkpoint: the paper's
    nβ = 60 and γ = 6, a 5× smaller step size ε = 2e-4 (the paper's ε = 1e-3 diverges within ten steps on our
    parametrisation; see the chapter) and a burn-in long enough for the chains to relax from w* at that step size:
    400 steps, then 600 draws (the paper: 8 chains × 500 draws after 500 burn-in at its 5× larger step, gradient
    batch 1024). λ̂ levels off within two hundred steps at the last checkpoint (the chapter shows it and asserts the
    last quarter of the burn-in within 5 % of the kept draws). A longer burn-in does not buy convergence on the
    plateau: with 1,000 + 400 steps (2026-12-01, 1.4 times the cost) 18 of the 24 checkpoints ended unconverged at
    R̂ 1.010--1.022, with 400 + 600 steps 17 at R̂ 1.012--1.022 (measured on the same trajectory; the converged
    checkpoints' λ̂ agreed within 3 %). 50 + 50 steps at ε = 1e-4, this page's earlier setting, stopped while λ̂ was
    still rising along the chains; the chapter shows the relaxation and measures how low that left the estimate.
    """
    from .config import size

    return {
        "task": {"task_dim": 4, "num_examples": 16, "noise_var": 0.125, "num_tasks": None},
        "num_steps": size(2000, 250), "batch_size": size(64, 48), "lr": 3e-3, "num_checkpoints": size(24, 8),
        "seed": 0,
        "llc": {"num_chains": size(4, 2), "num_burnin": size(400, 100), "num_draws": size(600, 40),
                "batch_size": size(12, 8), "step_size": 2e-4, "nbeta": 60.0, "localization": 6.0, "seed": 0},
        "llc_data": size(4096, 256), "probe": size(256, 32), "eval": size(2048, 512),
        "monte_carlo": size(50_000, 10_000),
        "paper": {"num_steps": 500_000, "batch_size": 256, "llc_chains": 8, "llc_draws": 500, "llc_burnin": 500,
                  "llc_batch": 1024, "step_size": 1e-3, "nbeta": 60.0, "localization": 6.0},
    }


__all__ += ["icl_settings"]


def lm_settings() -> dict:
    r"""The sizes of the language-model run in Part III (``SLT_QUICK=1`` shrinks them; same code path).

    A two-layer attention-only :class:`~slt_companion.models.AttentionOnlyLM` (4 heads per layer, width 64,
    context 32) on the character-level ``"code"`` corpus (:func:`slt_companion.data.char_corpus`), every window
    carrying one repeated random span of 4–15 characters (``repeat_span``) so that copying pays within a CPU-sized
    run. Training as in Hoogland et al. (2025) and Wang et al. (2025): AdamW, constant lr (ours 3e-3, theirs
    1e-3), weight decay 0.05, gradient clipping at 1; a log-spaced plus a linear checkpoint schedule. LLC: the
    refined-LLC paper's sampler (ε = 1e-3, nβ = 30, γ = 200, batch 32, no burn-in) with 4 chains × 100 draws
    (theirs 4 × 200).
    """
    from .config import size

    return {
        "corpus": {"kind": "code", "max_chars": 2_000_000}, "repeat_span": (4, 16),
        "model": {"n_ctx": 32, "d_model": 64, "num_heads": 4, "num_layers": 2, "seed": 0},
        "num_steps": size(8000, 100), "batch_size": 64, "seq_len": 32, "lr": 3e-3, "weight_decay": 0.05,
        "grad_clip": 1.0, "num_log_checkpoints": size(22, 6), "num_linear_checkpoints": size(10, 2), "seed": 0,
        "llc": {"num_chains": size(4, 2), "num_burnin": 0, "num_draws": size(100, 12), "batch_size": 32,
                "step_size": 1e-3, "nbeta": 30.0, "localization": 200.0, "seed": 0},
        "llc_data": size(2048, 128), "probe": size(64, 16), "eval": size(256, 64),
        "paper": {"num_steps": 50_000, "batch_size": 100, "n_ctx": 1024, "d_model": 256, "num_heads": 8,
                  "params": "3M", "lr": 1e-3, "stage_ends": [900, 6_500, 8_500, 17_000, 50_000]},   # TMLR version
    }


__all__ += ["lm_settings"]


#: What a replication over seeds changes in :func:`lm_settings` (full size; ``SLT_QUICK=1`` keeps the quick sizes).
LM_REPLICA_SIZES = {"num_steps": 2000, "num_log_checkpoints": 14, "num_linear_checkpoints": 8}


def lm_replica_settings(seed: int, settings: dict | None = None) -> dict:
    """The Part III language-model run (``settings``, default :func:`lm_settings`) reduced for a replication over
    seeds: the sizes of :data:`LM_REPLICA_SIZES` (at full size), and the initialisation and the training windows
    seeded by ``seed``. The chapters on stages in a language model and on the refined LLC of its heads both pass it to
    :func:`lm_run`, so they share these runs through the cache. At full size the replicas train through
    ``torch.compile`` (``compile``: a step 1.5 times faster, ``benchmarks/compiled_training.py``; the same arithmetic,
    rounded differently)."""
    from .config import size

    S = lm_settings() if settings is None else settings
    reduced = {k: size(v, S[k]) for k, v in LM_REPLICA_SIZES.items()}
    return dict(S, **reduced, seed=int(seed), model=dict(S["model"], seed=int(seed)), compile=size(True, False))


__all__ += ["LM_REPLICA_SIZES", "lm_replica_settings"]


def lm_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats): ``logits (..., T, V)`` against integer targets ``y (..., T)``."""
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def _lm_loss_batched(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``lm_loss`` of every chain at once: ``logits`` ``(C, ..., V)``, ``y`` ``(C, ...)`` -> ``(C,)``."""
    per = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
    return per.view(logits.shape[0], -1).mean(-1)


lm_loss.batched = _lm_loss_batched  # the sampler's fast path (checked against vmap before use)


@dataclass
class LMRun:
    """The Part III language-model run: ``corpus`` (:class:`slt_companion.data.CharCorpus`), ``trajectory``,
    ``make_model()`` (a fresh :class:`~slt_companion.models.AttentionOnlyLM` of the run's shape, the template for
    :meth:`Trajectory.model_at`), ``loss_fn`` (:func:`lm_loss`) and the ``settings`` (:func:`lm_settings`)."""

    corpus: object
    trajectory: Trajectory
    make_model: Callable
    loss_fn: Callable
    settings: dict


def lm_run(settings: dict | None = None, *, progress: bool = True) -> LMRun:
    """Train the two-layer attention-only language model of Part III with ``settings`` (default
    :func:`lm_settings`), or read its trajectory from the cache: the chapters on stages in a language model and on
    the refined LLC of its heads share this one run."""
    from .data import char_corpus
    from .models import AttentionOnlyLM

    S = lm_settings() if settings is None else settings
    corpus = char_corpus(**S["corpus"])

    def make_model():
        return AttentionOnlyLM(corpus.vocab_size, **S["model"])

    checkpoints = log_checkpoint_steps(S["num_steps"], S["num_log_checkpoints"], linear=S["num_linear_checkpoints"])
    traj = train(make_model(), lm_loss, corpus.batch_fn(S["batch_size"], S["seq_len"], repeat_span=S["repeat_span"]),
                 num_steps=S["num_steps"], lr=S["lr"], optimizer="adamw", weight_decay=S["weight_decay"],
                 schedule="constant", grad_clip=S["grad_clip"], checkpoints=checkpoints, seed=S["seed"], device="cpu",
                 compile=bool(S.get("compile", False)), cache_name="lm-run",
                 cache_config={"corpus": S["corpus"], "repeat_span": list(S["repeat_span"]), "batch": S["batch_size"],
                               "seq_len": S["seq_len"], "loss": "cross-entropy"}, progress=progress)
    return LMRun(corpus, traj, make_model, lm_loss, S)


__all__ += ["lm_loss", "LMRun", "lm_run"]
