r"""λ̂ at saved checkpoints, from the command line: one process, or sharded over ``torchrun`` ranks.

    python -m slt_companion.llc_trajectory --model mypkg.nets:make_model --checkpoints runs/ckpts \
        --data runs/data.pt --loss half_mse --out llc.json
    torchrun --nproc-per-node 4 -m slt_companion.llc_trajectory ...the same arguments...

Every checkpoint (a state dict saved with ``torch.save(model.state_dict(), path)``) is loaded with
``weights_only=True`` and checked against the template model before any sampling; a file that fails gives an error
naming it and exit code 2. Then :func:`slt_companion.llc.estimate_llcs` samples them all (under ``torchrun``:
each rank its block of checkpoints, :mod:`slt_companion.distributed`), and rank 0 writes one JSON row per
checkpoint (written to a temporary file beside ``--out`` and renamed, so a reader never sees half a file). Exit
codes: 0 done; 1 sampling failed on some rank (nothing is written); 2 bad arguments or input files.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import math
import os
import pickle
import re
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

import torch

PROG = "python -m slt_companion.llc_trajectory"
LOSSES = ("mse", "half_mse", "cross_entropy")

EPILOG = """\
examples:
  one process:
    python -m slt_companion.llc_trajectory --model mypkg.nets:make_model \\
        --checkpoints runs/ckpts --data runs/data.pt --loss half_mse --out llc.json
  4 processes on this machine (gloo on CPU; add --device cuda for NCCL, one GPU per process):
    torchrun --standalone --nproc-per-node 4 -m slt_companion.llc_trajectory --model mypkg.nets:make_model \\
        --checkpoints runs/ckpts --data runs/data.pt --loss half_mse --out llc.json

With the same --seed the numbers do not depend on the number of processes. Exit codes: 0 done, 1 sampling
failed (no output written), 2 bad arguments or input files.
"""


class InputError(Exception):
    """A problem with the arguments or the input files: reported in one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Estimate the local learning coefficient λ̂ at every saved checkpoint of a training run\n"
                    "(slt_companion.llc.estimate_llcs), in one process or sharded over torchrun processes,\n"
                    "and write one JSON row per checkpoint.")
    io = ap.add_argument_group("inputs and output")
    io.add_argument("--model", required=True, metavar="MODULE:CALLABLE",
                    help="a function that takes no arguments and returns the model (nn.Module) the checkpoints "
                         "are state dicts of, e.g. mypkg.nets:make_model (MODULE must be importable: install it, "
                         "or run from its folder / set PYTHONPATH)")
    io.add_argument("--checkpoints", required=True, nargs="+", metavar="PATH",
                    help="checkpoint files (state dicts saved with torch.save), or folders whose *.pt files are "
                         "taken in natural order (step_2.pt before step_10.pt)")
    io.add_argument("--data", required=True, metavar="PATH",
                    help="the data, saved with torch.save({'x': x, 'y': y}, PATH) or torch.save((x, y), PATH)")
    io.add_argument("--loss", required=True, metavar="LOSS",
                    help="mse, half_mse, cross_entropy or MODULE:CALLABLE. mse: torch.nn.functional.mse_loss; "
                         "half_mse: slt_companion.llc.half_mse (½‖y - f(x)‖² per sample); cross_entropy: "
                         "torch.nn.functional.cross_entropy; or MODULE:CALLABLE, loss_fn(output, y) -> the mean "
                         "loss of the batch")
    io.add_argument("--out", required=True, metavar="PATH.json", help="where rank 0 writes the results")
    s = ap.add_argument_group("sampler (slt_companion.llc.estimate_llc's arguments of the same names)")
    s.add_argument("--num-chains", type=int, default=4, metavar="N", help="chains per checkpoint (default 4)")
    s.add_argument("--num-draws", type=_auto_or(int), default="auto", metavar="auto|N",
                   help="'auto' (default): sample each checkpoint until its chains converge (R̂ ≤ 1.01, ESS ≥ 400) "
                        "or --max-draws runs out; or a fixed number of draws per chain")
    s.add_argument("--num-burnin", type=int, default=None, metavar="N",
                   help="burn-in steps for a fixed --num-draws (default max(500, num_draws / 2))")
    s.add_argument("--max-draws", type=int, default=None, metavar="N",
                   help="with --num-draws auto: at most N kept draws per chain (default 5000)")
    s.add_argument("--step-size", type=_auto_or(float), default="auto", metavar="auto|EPS",
                   help="SGLD step size ε, or 'auto' (default: chosen per checkpoint by a short pilot run)")
    s.add_argument("--nbeta", type=float, default=None, help="nβ (default n / log n)")
    s.add_argument("--localization", type=float, default=1.0, metavar="GAMMA", help="γ (default 1)")
    s.add_argument("--batch-size", type=int, default=500, metavar="B", help="minibatch per chain and step (500)")
    s.add_argument("--seed", type=int, default=0, help="the same seed for every checkpoint (default 0)")
    s.add_argument("--device", default=None,
                   help="cpu, cuda, ... (default: the model's device); under torchrun, cuda means cuda:LOCAL_RANK")
    return ap


def _auto_or(kind):
    def parse(text: str):
        if text == "auto":
            return text
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected 'auto' or a{'n integer' if kind is int else ' number'}, "
                                             f"got {text!r}") from None
    parse.__name__ = f"auto or {kind.__name__}"
    return parse


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def checkpoint_paths(items: list[str]) -> list[Path]:
    """Files as given; folders expanded to their ``*.pt`` files in natural order."""
    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted((q for q in p.glob("*.pt") if q.is_file()), key=_natural_key)
            if not found:
                raise InputError(f"--checkpoints: folder {p} has no *.pt files")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise InputError(f"--checkpoints: {p} does not exist")
    return paths


def _import(spec: str, what: str):
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise InputError(f"{what}: expected MODULE:CALLABLE (e.g. mypkg.nets:make_model), got {spec!r}")
    try:
        obj = importlib.import_module(module)
    except Exception as err:                                        # noqa: BLE001 -- any import failure
        raise InputError(f"{what}: cannot import module {module!r} ({type(err).__name__}: {err}); install it or "
                         "run from its folder / add it to PYTHONPATH") from None
    for part in name.split("."):
        if not hasattr(obj, part):
            raise InputError(f"{what}: module {module!r} has no attribute {name!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError(f"{what}: {spec} is not callable")
    return obj


def make_template(spec: str) -> torch.nn.Module:
    factory = _import(spec, "--model")
    try:
        model = factory()
    except Exception as err:                                        # noqa: BLE001
        raise InputError(f"--model: {spec}() raised {type(err).__name__}: {err}") from None
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"--model: {spec}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def resolve_loss(spec: str):
    if spec in LOSSES:
        import torch.nn.functional as F

        from .llc import half_mse

        return {"mse": F.mse_loss, "half_mse": half_mse, "cross_entropy": F.cross_entropy}[spec]
    if ":" not in spec:
        raise InputError(f"--loss: expected one of {', '.join(LOSSES)} or MODULE:CALLABLE, got {spec!r}")
    return _import(spec, "--loss")


def _load_error_detail(err: Exception) -> str:
    """The informative line of a ``torch.load`` error (its messages are long and carry terminal escapes)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return f"{type(err).__name__}: empty or truncated"
    first = lines[0].split(". ")[0].rstrip(".")                    # its first sentence
    return first if isinstance(err, pickle.UnpicklingError) else f"{type(err).__name__}: {first}"


def _safe_load(path: Path, what: str):
    """``torch.load(path, weights_only=True)`` with an error that names the file and says what to do."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")           # e.g. its note on pickle protocols: the error says enough
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:                                        # noqa: BLE001 -- corrupt, truncated, not torch
        detail = _load_error_detail(err)
        if isinstance(err, pickle.UnpicklingError) and "Unsupported global" in detail:
            raise InputError(f"{what} {path}: cannot be loaded safely (weights_only=True refused it: {detail}). It "
                             "holds Python objects other than tensors (a pickled model or custom class?). Re-save it "
                             "as a state dict, torch.save(model.state_dict(), path), from code you trust") from None
        raise InputError(f"{what} {path}: not a readable torch file ({detail}); is it corrupt, truncated, or not "
                         "written by torch.save?") from None


def load_checkpoints(paths: list[Path], template: torch.nn.Module) -> list[dict]:
    """Every checkpoint as a state dict, each checked to load into ``template`` (strictly)."""
    probe = copy.deepcopy(template).cpu()
    states = []
    for p in paths:
        sd = _safe_load(p, "checkpoint")
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            kind = (f"a dict with keys {sorted(map(str, sd))[:6]}" if isinstance(sd, dict)
                    else f"a {type(sd).__name__}")
            raise InputError(f"checkpoint {p}: {kind}, not a state dict of tensors; save checkpoints with "
                             "torch.save(model.state_dict(), path)")
        try:
            probe.load_state_dict(sd, strict=True)
        except (RuntimeError, KeyError, TypeError) as err:
            detail = " ".join(str(err).split())
            raise InputError(f"checkpoint {p} does not fit the --model template ({type(template).__name__}): "
                             f"{detail}") from None
        bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise InputError(f"checkpoint {p}: {', '.join(bad[:4])} hold NaN/inf (a diverged training step?); "
                             "λ̂ needs a finite centre: leave this checkpoint out")
        states.append(sd)
    return states


def precheck(template: torch.nn.Module, state: dict, path: Path, loss_fn, data, batch_size: int) -> None:
    """The sampler's own check (a functional forward under vmap, shapes, a scalar loss) on one checkpoint, before
    any process group or sampling: a model or loss that cannot work is an input error (exit code 2)."""
    from .sampling import _Problem

    model = copy.deepcopy(template)
    model.load_state_dict(state)
    try:
        _Problem(model, loss_fn, data, None, None).check(batch_size)
    except (ValueError, TypeError) as err:          # NonFunctionalModelError is a TypeError
        raise InputError(f"checkpoint {path} with --model, --data and --loss: {err}") from None


def load_data(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--data: {p} does not exist")
    d = _safe_load(p, "--data")
    if isinstance(d, dict) and "x" in d and "y" in d:
        x, y = d["x"], d["y"]
    elif isinstance(d, (tuple, list)) and len(d) == 2:
        x, y = d
    else:
        raise InputError(f"--data {p}: expected {{'x': x, 'y': y}} or (x, y), got a {type(d).__name__}")
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) or len(x) != len(y) or len(x) == 0:
        raise InputError(f"--data {p}: x and y must be tensors with the same (non-zero) number of rows")
    return x, y


def check_out(out: Path) -> None:
    """Before any sampling: ``out`` is no folder, and a file can be written in its folder, or in the nearest existing
    folder above it when it is still to be created (a probe file created and removed there: race-free between
    ranks, and right where permission bits are not, as for root on a read-only file system)."""
    if out.is_dir():
        raise InputError(f"--out {out} is a folder; give a file name such as {out / 'llc.json'}")
    where = out.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        raise InputError(f"--out {out}: {where} is a file, not a folder; give a path in a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=where, prefix=f".{out.name}.", suffix=".check")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        what = "its folder" if where == out.parent else f"{where}, where its folder {out.parent} would be created"
        raise InputError(f"--out {out}: cannot write in {what} ({err.strerror or err}); give a writable path") from None


def _number(v):
    v = float(v)
    return v if math.isfinite(v) else None                          # JSON has no NaN / inf


def write_json_atomic(path: Path, obj) -> None:
    """Write to a temporary file in the same folder, then rename it over ``path`` (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _rank_device(device):
    """``cuda`` without an index means this rank's GPU (set by :func:`slt_companion.distributed.init`)."""
    if device is None:
        return None
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return dev


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_draws == "auto" and args.num_burnin is not None:
        parser.error("--num-burnin applies to a fixed --num-draws only (with 'auto' the burn-in is the first half "
                     "of the run)")
    if args.num_draws != "auto" and args.max_draws is not None:
        parser.error("--max-draws applies to --num-draws auto only")
    from . import distributed
    from .config import resolve_device
    from .llc import estimate_llcs

    try:                           # the sampler's numbers, checked as estimate_llcs checks them, before any process
        from .llc import _check_sampler_args, _plan, _sampling_defaults   # group or sampling starts

        draws, burnin, _ = _sampling_defaults(None, args.num_draws, args.num_burnin, None)
        _, burnin, draws = _plan(draws, burnin, args.max_draws, None)
        _check_sampler_args(draws, burnin, nbeta=args.nbeta, localization=args.localization,
                            num_chains=args.num_chains, batch_size=args.batch_size, seed=args.seed,
                            step_size=args.step_size)
    except (TypeError, ValueError) as err:
        sys.stderr.write(f"{PROG}: error: {err} (the sampler's arguments: see --help)\n")
        return 2
    try:                                                        # every check before sampling: exit code 2
        template = make_template(args.model)
        loss_fn = resolve_loss(args.loss)
        paths = checkpoint_paths(args.checkpoints)
        states = load_checkpoints(paths, template)
        x, y = load_data(args.data)
        precheck(template, states[0], paths[0], loss_fn, (x, y), args.batch_size)
        if args.device is not None:
            try:
                resolve_device(args.device)
            except ValueError as err:
                raise InputError(f"--device: {err}") from None
        out = Path(args.out)
        check_out(out)
    except InputError as err:      # printed by every rank: they read the same files, but one may differ
        sys.stderr.write(f"{PROG}: error: {err}\n")
        return 2
    rank, world = distributed.init(args.device)
    try:
        distributed.shard(len(states), rank, world)
    except ValueError as err:      # the same on every rank: rank 0 says it
        if rank == 0:
            sys.stderr.write(f"{PROG}: error: {err}\n")
        distributed.finalize()
        return 2

    try:
        device = _rank_device(args.device)
        if device is not None:
            template = template.to(device)
        with warnings.catch_warnings():
            who = f"{PROG} (rank {rank})" if world > 1 else PROG
            warnings.showwarning = lambda message, category, *_, **__: sys.stderr.write(   # one line, no source
                f"{who}: {category.__name__}: {message}\n")
            if rank != 0:      # the end-of-run convergence warning is the same on every rank: rank 0 says it
                from .convergence import LLCConvergenceWarning

                warnings.simplefilter("ignore", LLCConvergenceWarning)
            ests = estimate_llcs(states, loss_fn, (x, y), template=template, num_chains=args.num_chains,
                                 num_draws=args.num_draws, num_burnin=args.num_burnin, max_draws=args.max_draws,
                                 step_size=args.step_size, nbeta=args.nbeta, localization=args.localization,
                                 batch_size=args.batch_size, seed=args.seed, device=device,
                                 progress=rank == 0 and sys.stderr.isatty())
    except Exception as err:                                        # noqa: BLE001 -- reported, exit code 1
        if rank == 0:
            detail = str(err) if isinstance(err, RuntimeError) and world > 1 else traceback.format_exc().rstrip()
            which = getattr(err, "checkpoint", None)                 # an SGLDDivergenceError names its checkpoint
            if isinstance(which, int) and 0 <= which < len(paths):
                detail += f"\n(checkpoint {which} is {paths[which]})"
            sys.stderr.write(f"{PROG}: sampling failed, nothing written to {out}:\n{detail}\n")
        distributed.finalize()
        return 1

    if rank == 0:
        rows = [{"path": str(p), "mean": _number(e.mean), "sem": _number(e.sem), "std": _number(e.std),
                 "rhat": _number(e.rhat), "ess": _number(e.ess), "converged": bool(e.converged),
                 "stop_reason": e.stop_reason, "step_size": _number(e.config.step_size),
                 "num_draws": int(e.config.num_draws)} for p, e in zip(paths, ests)]
        settings = {k: getattr(args, k) for k in ("model", "data", "loss", "num_chains", "num_draws", "num_burnin",
                                                   "max_draws", "step_size", "nbeta", "localization", "batch_size",
                                                   "seed", "device")}
        from . import __version__

        try:
            write_json_atomic(out, {"settings": settings, "world_size": world, "n": int(len(x)),
                                    "slt_companion": __version__, "torch": torch.__version__, "checkpoints": rows})
        except OSError as err:
            sys.stderr.write(f"{PROG}: cannot write {out}: {err}\n")
            distributed.finalize()
            return 1
        good = sum(r["converged"] for r in rows)
        print(f"λ̂ at {len(rows)} checkpoint(s), {world} process(es): {good} converged"
              + (f", {len(rows) - good} NOT converged (not results; see rhat, ess)" if good < len(rows) else "")
              + f" -> {out}")
    distributed.finalize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
