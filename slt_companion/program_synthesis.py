r"""A smoothed Turing machine: program synthesis as a singular learning problem.

Clift, Murfet & Wallbridge (2021), *Geometry of program synthesis*: a Turing machine's transition table is
a discrete object, but if every entry of the table is replaced by a probability distribution the machine
becomes a smooth (analytic) function of a point :math:`w` in a product of simplices, its *code*. Running
the smoothed machine on an input gives a distribution over outputs, and

.. math::
    K(w) = \frac1n\sum_{i=1}^n \mathrm{KL}\big(q(\cdot\mid x_i)\,\|\,p(\cdot\mid x_i, w)\big)
         = -\frac1n\sum_i \log p(y_i\mid x_i, w)\quad(\text{deterministic targets } y_i)

is zero exactly on the codes that compute the target behaviour. Many codes do (unused states, transitions
that are never taken, equivalent states), so the zero set of :math:`K` is a singular variety, and its
learning coefficient ranks the programs.

**The machine.** ``num_states`` states (state 0 is the start state), ``num_symbols`` tape symbols, a cyclic
tape of the input's length, and for each row :math:`(q, \sigma)` of the table three distributions:
the symbol written (``write``), the head move (``move``, over ``("L", "R")`` or ``("L", "S", "R")``) and
the next state (``next``). The smooth run keeps, per input, a distribution over the state, a distribution
over the head position and an independent distribution per tape cell (a mean-field relaxation, as in the
paper's smooth relaxation of a universal machine), and updates them by the exact law of one step of the
machine under that product assumption. For a one-hot code the run is exactly the discrete machine's run
(:func:`run_program` is the discrete reference). The output is the distribution of one tape cell
(``output_cell``, default the last) after ``steps`` steps.

**Parametrisations.** ``"softmax"``: each distribution is the softmax of a logit vector (vertices of the
simplex, the deterministic programs, lie at infinity). ``"sphere"``: each distribution is
:math:`p_j = \theta_j^2/\|\theta\|^2`; a deterministic program is the finite point :math:`\theta = e_j`, and
:math:`K` is analytic around it, so SGLD can be centred on a true program and its local learning
coefficient estimated (Part IV, "The geometry of program synthesis").

Used in: Part IV, "The geometry of program synthesis".
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from ._checks import check_int, check_symbols

__all__ = ["SmoothTuringMachine", "Program", "run_program", "parity_task", "parity_programs", "tm_loss",
           "langevin_codes", "classify_codes",
           "flat_coordinates", "hessian_spectrum", "classify_parity_code"]

_MOVES = {2: ("L", "R"), 3: ("L", "S", "R")}
_TABLES = ("write", "move", "next")


@dataclass(frozen=True)
class Program:
    """A deterministic Turing machine table: integer arrays of shape ``(num_states, num_symbols)``.

    ``write[q, s]`` is the symbol written, ``move[q, s]`` the index of the move in the machine's move list
    (``("L", "R")``: 0 = left, 1 = right) and ``next[q, s]`` the next state, in state ``q`` reading ``s``.
    """

    write: np.ndarray
    move: np.ndarray
    next: np.ndarray
    name: str = ""

    def __post_init__(self):
        shapes = {np.shape(getattr(self, t)) for t in _TABLES}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(f"write, move and next must be integer arrays of one shape (num_states, num_symbols), "
                             f"got shapes {[np.shape(getattr(self, t)) for t in _TABLES]}")

    @property
    def num_states(self) -> int:
        return int(np.shape(self.write)[0])

    @property
    def num_symbols(self) -> int:
        return int(np.shape(self.write)[1])


def _execute(program: Program, x, steps: int, moves) -> tuple[list, set]:
    """Run ``program`` for ``steps`` steps on each tape of ``x``: the final tapes, and the states a step was taken in."""
    shift = {"L": -1, "S": 0, "R": 1}
    tapes, seen = [], set()
    for tape in np.asarray(x):
        tape, q, h = tape.copy(), 0, 0
        for _ in range(steps):
            seen.add(q)
            s = tape[h]
            tape[h] = program.write[q, s]
            h = (h + shift[moves[program.move[q, s]]]) % len(tape)
            q = program.next[q, s]
        tapes.append(tape)
    return tapes, seen


def run_program(program: Program, x, steps: int, *, moves=("L", "R"), output_cell: int = -1) -> np.ndarray:
    """Run a deterministic :class:`Program` on each input tape in ``x`` ``(B, L)``; return the symbols at
    ``output_cell`` after ``steps`` steps (the discrete reference for :class:`SmoothTuringMachine`)."""
    return np.array([tape[output_cell] for tape in _execute(program, x, steps, moves)[0]])


class SmoothTuringMachine(nn.Module):
    r"""A Turing machine whose transition table is a point in a product of simplices (a *code*).

    Parameters
    ----------
    num_states, num_symbols : states (0 is the start state) and tape symbols.
    steps : how many steps the machine runs before its output cell is read.
    num_moves : 2 (moves left and right) or 3 (left, stay, right).
    parametrization : ``"softmax"`` (logits) or ``"sphere"`` (:math:`p = \theta^2/\|\theta\|^2`); see the module
        docstring.
    output_cell : the tape cell read as the output (default ``-1``, the last cell).
    seed : seed of the random initial code (``None``: all-equal parameters, the barycentre of the code space).

    Notes
    -----
    ``forward(x)`` takes integer tapes ``(B, L)`` with entries in ``range(num_symbols)`` and returns the
    log-probabilities ``(B, num_symbols)`` of the output cell's symbol. It is a pure function of the
    parameters ``write``, ``move``, ``next`` (each ``(num_states, num_symbols, k)``), so it works under
    ``torch.func.vmap`` and :func:`slt_companion.llc.estimate_llc`. :meth:`codes` returns the distributions.
    """

    def __init__(self, num_states: int = 3, num_symbols: int = 2, steps: int = 4, *, num_moves: int = 2,
                 parametrization: str = "softmax", output_cell: int = -1, seed: int | None = 0):
        super().__init__()
        self.num_states = check_int("num_states", num_states)
        self.num_symbols = check_int("num_symbols", num_symbols, 2)
        self.steps = check_int("steps", steps)
        if num_moves not in _MOVES:
            raise ValueError(f"num_moves must be 2 (L, R) or 3 (L, S, R), got {num_moves!r}")
        self.moves = _MOVES[num_moves]
        if parametrization not in ("softmax", "sphere"):
            raise ValueError(f"parametrization must be 'softmax' or 'sphere', got {parametrization!r}")
        self.parametrization = parametrization
        self.output_cell = int(output_cell)
        Q, S = self.num_states, self.num_symbols
        sizes = {"write": S, "move": num_moves, "next": Q}
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for t, k in sizes.items():
            base = torch.zeros(Q, S, k) if parametrization == "softmax" else torch.ones(Q, S, k)
            if gen is not None:
                base = base + 0.5 * torch.randn(Q, S, k, generator=gen, dtype=base.dtype)
            setattr(self, t, nn.Parameter(base))

    # ------------------------------------------------------------------ codes
    def _probs(self, raw: torch.Tensor) -> torch.Tensor:
        if self.parametrization == "softmax":
            return torch.softmax(raw, -1)
        sq = raw * raw
        return sq / sq.sum(-1, keepdim=True)

    def codes(self) -> dict:
        """The code: ``{"write", "move", "next"}`` -> probability tables ``(num_states, num_symbols, k)``."""
        return {t: self._probs(getattr(self, t)).detach() for t in _TABLES}

    @torch.no_grad()
    def load_program(self, program: Program, *, sharpness: float | None = None) -> "SmoothTuringMachine":
        """Set the parameters to the exact code of a deterministic ``program`` (in place; returns ``self``).

        ``"sphere"``: :math:`\\theta = e_j` per row, exact. ``"softmax"``: logits ``sharpness`` on the chosen
        entry and 0 elsewhere; ``sharpness=None`` puts :math:`-\\infty` on the others, which is exact but
        has no gradient (for evaluation only).
        """
        if not isinstance(program, Program):
            raise TypeError(f"program must be a Program, got {type(program).__name__}")
        if (program.num_states, program.num_symbols) != (self.num_states, self.num_symbols):
            raise ValueError(f"program has shape {(program.num_states, program.num_symbols)} (states, symbols) but "
                             f"the machine has {(self.num_states, self.num_symbols)}")
        for t in _TABLES:
            param = getattr(self, t)
            idx = torch.as_tensor(np.asarray(getattr(program, t)), dtype=torch.long)
            k = param.shape[-1]
            if idx.min() < 0 or idx.max() >= k:
                raise ValueError(f"program.{t} has entries outside range({k})")
            onehot = (idx[..., None] == torch.arange(k)).to(param.dtype)
            if self.parametrization == "sphere":
                param.copy_(onehot)
            elif sharpness is None:
                param.copy_(torch.where(onehot > 0, 0.0, float("-inf")))
            else:
                param.copy_(float(sharpness) * onehot)
        return self

    # ------------------------------------------------------------------ the smooth run
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_x(x)
        params = {t: getattr(self, t)[None] for t in _TABLES}
        return self.forward_batched(params, x[None])[0]

    def _check_x(self, x):
        if x.dim() < 2 or x.is_floating_point():
            raise ValueError(f"x must be an integer tensor of tapes (batch, length), got dtype {x.dtype}, "
                             f"shape {tuple(x.shape)}")
        check_symbols("x's symbols", x, self.num_symbols, f"num_symbols = {self.num_symbols}")

    def forward_batched(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        """All chains at once: ``params[t]`` of shape ``(C, num_states, num_symbols, k)``, ``x`` ``(C, B, L)``
        (the fast path used by :mod:`slt_companion.sampling`)."""
        write, move, nxt = (self._probs(params[t]) for t in _TABLES)
        C, B, L = x.shape
        dt, dev = write.dtype, x.device
        tape = (x[..., None] == torch.arange(self.num_symbols, device=dev)).to(dt)            # (C, B, L, S)
        head = (torch.arange(L, device=dev) == 0).to(dt).expand(C, B, L)                     # (C, B, L)
        state = (torch.arange(self.num_states, device=dev) == 0).to(dt).expand(C, B, self.num_states)
        shifts = {"L": -1, "S": 0, "R": 1}
        for _ in range(self.steps):
            read = torch.einsum("cbl,cbls->cbs", head, tape)
            joint = state[..., :, None] * read[..., None, :]                                  # (C, B, Q, S)
            new_state = torch.einsum("cbqs,cqsr->cbr", joint, nxt)
            mv = torch.einsum("cbqs,cqsm->cbm", joint, move)
            # what would be written in each cell if the head were there
            written = torch.einsum("cbls,cbst->cblt", tape, torch.einsum("cbq,cqst->cbst", state, write))
            tape = (1 - head)[..., None] * tape + head[..., None] * written
            head = sum(mv[..., j, None] * torch.roll(head, shifts[m], dims=-1) for j, m in enumerate(self.moves))
            state = new_state
        out = tape[..., self.output_cell, :]
        return torch.log(out.clamp_min(torch.finfo(dt).tiny))

    def extra_repr(self) -> str:
        return (f"num_states={self.num_states}, num_symbols={self.num_symbols}, steps={self.steps}, "
                f"moves={self.moves}, parametrization={self.parametrization!r}")


def tm_loss(logp: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Mean negative log-likelihood of the target symbols ``y`` ``(B,)`` under the machine's output
    log-probabilities ``logp`` ``(B, S)``: :math:`K(w)` for deterministic targets (the entropy term is 0)."""
    return -logp.gather(-1, y[..., None].long()).mean()


# ---------------------------------------------------------------------- a concrete synthesis problem
def parity_task(length: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    r"""All :math:`2^{\text{length}}` binary tapes and the target: the parity of each tape, to be written in
    the last cell. Returns ``(x, y)``, ``x`` long ``(2^length, length)``, ``y`` long ``(2^length,)``."""
    length = check_int("length", length, 2)
    x = torch.tensor(list(itertools.product((0, 1), repeat=length)), dtype=torch.long)
    return x, x.sum(1) % 2


def parity_programs() -> dict:
    r"""Two exact solutions of :func:`parity_task` on a 3-state, 2-symbol machine (moves L, R), both of which
    scan right once, carrying the parity so far in the state and writing it over the cell just read:

    - ``"lean"``: states E (0) and O (1); state 2 is never entered (its rows are a dead sink);
    - ``"redundant"``: states E (0), O (1) and E' (2), a copy of E that E moves to on a 0 and back from on
      a 0; every row of the table is used and O's "return to even" transition could go to either copy.
    """
    R = 1
    lean = Program(write=np.array([[0, 1], [1, 0], [0, 0]]),
                   move=np.array([[R, R], [R, R], [0, 0]]),
                   next=np.array([[0, 1], [1, 0], [2, 2]]), name="lean")
    redundant = Program(write=np.array([[0, 1], [1, 0], [0, 1]]),
                        move=np.array([[R, R], [R, R], [R, R]]),
                        next=np.array([[2, 1], [1, 0], [0, 1]]), name="redundant")
    return {"lean": lean, "redundant": redundant}


def classify_parity_code(model: SmoothTuringMachine, x, y) -> str:
    """Round a code to its most likely deterministic program and name it: ``"wrong"`` if that program fails
    on ``(x, y)``, else ``"lean"`` (it visits two states) or ``"redundant"`` (it visits three)."""
    c = model.codes()
    prog = Program(*(c[t].argmax(-1).numpy() for t in _TABLES))
    tapes, visited = _execute(prog, x, model.steps, model.moves)         # one run: the outputs and the states
    if not np.array_equal(np.array([t[model.output_cell] for t in tapes]), np.asarray(y)):   # the cell the model reads
        return "wrong"
    return "lean" if len(visited) <= 2 else "redundant"


# ---------------------------------------------------------------------- the zero set near a true code
def _flat(model: nn.Module) -> tuple[list, torch.Tensor]:
    names = [k for k, _ in model.named_parameters()]
    return names, torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _loss_at(model, names, w, x, y):
    from torch.func import functional_call
    params, off = {}, 0
    for k, p in model.named_parameters():
        params[k] = w[off:off + p.numel()].view_as(p)
        off += p.numel()
    return tm_loss(functional_call(model, params, (x,)), y)


def hessian_spectrum(model: nn.Module, x, y) -> np.ndarray:
    r"""Eigenvalues (ascending) of the Hessian of :math:`K` in the model's raw parameters at their current
    values, computed in float64 (``torch.autograd.functional.hessian``)."""
    m64 = _double(model)
    names, w = _flat(m64)
    H = torch.autograd.functional.hessian(lambda v: _loss_at(m64, names, v, x, y), w, vectorize=True)
    return torch.linalg.eigvalsh(0.5 * (H + H.T)).numpy()


def flat_coordinates(model: nn.Module, x, y, *, t: float = 0.5, tol: float = 1e-12) -> np.ndarray:
    r"""For each raw coordinate :math:`j`, whether :math:`K(w + t e_j) \le` ``tol`` (the line stays in the zero
    set for a finite step, not just to second order). Returns a boolean array of length :math:`d`."""
    m64 = _double(model)
    names, w = _flat(m64)
    out = np.zeros(w.numel(), dtype=bool)
    with torch.no_grad():
        for j in range(w.numel()):
            v = w.clone()
            v[j] += t
            out[j] = float(_loss_at(m64, names, v, x, y)) <= tol
    return out


def _double(model):
    import copy
    return copy.deepcopy(model).double()


# ---------------------------------------------------------------------- the posterior over codes
def langevin_codes(model: SmoothTuringMachine, x, y, *, nbeta: float, num_chains: int = 64,
                   steps: int | None = None, step_size: float = 1e-3, seed: int = 0, progress: bool = True) -> dict:
    r"""Sample the tempered posterior :math:`p(\theta) \propto \exp(-n\beta K(\theta))\,\mathcal N(\theta; 0, I)` over
    codes with ``num_chains`` independent Langevin chains started from independent prior draws, all chains in
    one batched forward pass (:meth:`SmoothTuringMachine.forward_batched`).

    For the ``"sphere"`` parametrisation the standard Gaussian prior on :math:`\theta` is exactly a
    Dirichlet(½, ..., ½) prior on each distribution of the code. Full-batch gradients (the inputs are all
    tapes), so this is unadjusted Langevin dynamics :math:`\theta \leftarrow \theta - \tfrac\epsilon2\nabla U + \sqrt\epsilon\,\xi`.
    Returns ``{"loss": (steps/ (steps//100) records, chains) K along the run, "final": {table: (C, Q, S, k)
    raw parameters}}``; ``steps`` defaults to 4000 (300 in quick mode).
    """
    from tqdm.auto import tqdm

    from . import config as _config
    from .sampling import cpu_threads
    steps = _config.size(4000, 300) if steps is None else int(steps)
    if steps < 1 or num_chains < 1 or not nbeta > 0 or not step_size > 0:
        raise ValueError(f"need steps >= 1, num_chains >= 1, nbeta > 0 and step_size > 0; got steps={steps}, "
                         f"num_chains={num_chains}, nbeta={nbeta}, step_size={step_size}")
    gen = torch.Generator().manual_seed(seed)
    params = {t: torch.randn(num_chains, *getattr(model, t).shape, generator=gen).requires_grad_(True)
              for t in _TABLES}
    xb = x.expand(num_chains, *x.shape)
    record, every = [], max(1, steps // 100)
    with cpu_threads(1):
        for it in tqdm(range(steps), disable=not progress, desc="Langevin over codes"):
            logp = model.forward_batched(params, xb)                                       # (C, B, S)
            K = -logp.gather(-1, y.expand(num_chains, -1)[..., None]).squeeze(-1).mean(-1)  # (C,)
            prior = sum(0.5 * (p * p).flatten(1).sum(1) for p in params.values())
            grads = torch.autograd.grad((nbeta * K + prior).sum(), list(params.values()))
            with torch.no_grad():
                for p, g in zip(params.values(), grads):
                    p.add_(-0.5 * step_size * g + step_size ** 0.5 * torch.randn(p.shape, generator=gen))
            if it % every == 0 or it == steps - 1:
                record.append(K.detach().clone())
    return {"loss": torch.stack(record).numpy(), "final": {t: p.detach() for t, p in params.items()}}


def classify_codes(model: SmoothTuringMachine, final: dict, x, y) -> list:
    """:func:`classify_parity_code` for every chain of :func:`langevin_codes`' ``final`` parameters."""
    import copy
    m = copy.deepcopy(model)
    out = []
    with torch.no_grad():
        for c in range(next(iter(final.values())).shape[0]):
            for t in _TABLES:
                getattr(m, t).copy_(final[t][c])
            out.append(classify_parity_code(m, x, y))
    return out
