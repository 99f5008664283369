"""Every Triton kernel of kernels/ compiled without a GPU for each NVIDIA generation the package
checks (kernels._triton_support.GENERATIONS: sm_75 T4 to sm_90a H100): registers, spills, shared memory
and the instruction its dots became, for every config its autotuner would offer there.

Triton compiles for a GPU that is not there (`triton.compile` with `GPUTarget("cuda", 80, 32)` and
the ptxas its wheel ships). The kernels are compiled exactly as the package launches them: the
launch functions run on meta tensors laid out as the models lay them out, inside `record_launches`
and `compile_target` (the autotuners offer that generation's configs), and each recorded launch is
specialised as triton's JIT would specialise it. From each compile: registers and local memory per
thread (cuobjdump -res-usage; local memory in these kernels is spilled registers), shared memory per
block (triton's metadata, against the generation's limit) and the dot instruction in the SASS: HGMMA
(wgmma), HMMA (mma.sync) or FFMA only. A generation that takes the torch paths (no Triton kernels
offered) is compiled with the configs the next generation offers, as the evidence why: those rows
are marked not offered and fail nothing.

Kernels are decorated at import, interpreted under TRITON_INTERPRET=1, so the report is always
built in a fresh process without it (`compile_report`); `python -m tritonsagan.bench.compile_check`
prints it. Compiles run in parallel; each result is kept in compile_cache/ by the kernel's source,
the compile's arguments, the target and the triton version, so a run with nothing changed compiles
nothing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import importlib
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tritonsagan.kernels._triton_support import GENERATIONS, Generation, compile_target

from tritonsagan.atomic_write import atomic_write_bytes, atomic_write_json
from tritonsagan.errors import TritonsaganError

TARGETS = {generation.target: generation for generation in GENERATIONS}
CACHE_DIR = Path(__file__).parent / "compile_cache"
ATTENTION_WIDTHS = (32, 64, 128)  # base widths ch whose G and D attention shapes are compiled
SN_WIDTH = 64  # base width whose SN weight shapes are compiled
ATTENTION_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SN_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
REPORT_BATCH = 64  # the batch only enters the strides, which are multiples of 16 at any batch
GROUPED_SHAPE = "all SN layers of G and D"


class CompileCheckUnavailable(TritonsaganError, RuntimeError):
    """This triton has no NVIDIA backend (or no ptxas/cuobjdump) to compile for NVIDIA GPUs with."""


@dataclass(frozen=True)
class CompileJob:
    """One compile: a kernel at one specialisation and one config."""

    kernel: str  # "module:attribute" of the @triton.jit or @triton.autotune object
    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, Any], ...]
    divisible: tuple[int, ...]  # argument indices triton marks divisible by 16
    num_warps: int
    num_stages: int
    target: str  # a key of TARGETS


@dataclass(frozen=True)
class Case:
    """A kernel launch as the package makes it on one target: which kernel, for which layer shape and dtype."""

    target: str
    offered: bool  # whether the package offers these configs on the target (else: the evidence why not)
    op: str
    shape: str
    dtype: str
    kernel: str
    signature: tuple[tuple[str, str], ...]
    constexprs: tuple[tuple[str, Any], ...]
    divisible: tuple[int, ...]
    configs: tuple[tuple[tuple[tuple[str, Any], ...], int, int], ...]  # (config kwargs, num_warps, num_stages)


# ---- the launches the package makes ----------------------------------------------------------------


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _jit_function(kernel: Any) -> Any:
    return kernel.fn if hasattr(kernel, "configs") else kernel  # an Autotuner wraps the JITFunction


def _kernel_path(kernel: Any) -> str:
    function = _jit_function(kernel).fn  # the decorated Python function, named as its module attribute
    return f"{function.__module__}:{function.__name__}"


def _resolve(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _specialise(kernel: Any, args: tuple, kwargs: dict) -> tuple[dict, dict, list[int]]:
    """Signature, constexprs and divisible-by-16 arguments, as triton's JIT derives them at launch."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    jit = _jit_function(kernel)
    signature, constexprs, divisible = {}, {}, []
    params = jit.params
    for index, param in enumerate(params):
        name = param.name
        if param.is_constexpr:
            signature[name] = "constexpr"
            if index < len(args):
                constexprs[name] = args[index]
            elif name in kwargs:
                constexprs[name] = kwargs[name]
            continue  # autotuned constexprs come from each config
        value = args[index] if index < len(args) else kwargs[name]
        kind, attr = native_specialize_impl(BaseBackend, value, False, True, True)
        signature[name] = kind
        if kind == "constexpr":  # an integer equal to 1 becomes a constant
            constexprs[name] = value
        elif attr == "D":
            divisible.append(index)
    return signature, constexprs, divisible


def _offered_configs(kernel: Any, args: tuple, kwargs: dict, pruned: bool) -> list[tuple[dict, int, int]]:
    """The configs the autotuner would try for this launch (after its pruning, unless not `pruned`);
    triton's default launch options for a plain kernel."""
    if not hasattr(kernel, "configs"):
        return [({}, kwargs.get("num_warps", 4), kwargs.get("num_stages", 3))]
    configs = kernel.configs
    prune = getattr(kernel, "early_config_prune", None)
    if pruned and prune is not None:
        configs = prune(configs, dict(zip(_jit_function(kernel).arg_names, args)), **kwargs)
    return [(dict(c.kwargs), c.num_warps, c.num_stages) for c in configs]


def _cases_from(op: str, shape: str, dtype: torch.dtype, record: Callable[[], None], all_configs: bool) -> list[Case]:
    from tritonsagan.kernels._triton_support import record_launches

    with record_launches() as launches:
        record()
    cases = []
    for launch in launches:
        signature, constexprs, divisible = _specialise(launch.kernel, launch.args, launch.kwargs)
        configs = _offered_configs(launch.kernel, launch.args, launch.kwargs, pruned=not all_configs)
        cases.append(
            Case(
                "",  # the target and whether it is offered there: set by cases_for
                True,
                op,
                shape,
                _dtype_name(dtype),
                _kernel_path(launch.kernel),
                tuple(signature.items()),
                tuple(constexprs.items()),
                tuple(divisible),
                tuple((tuple(kw.items()), w, s) for kw, w, s in configs),
            )
        )
    return cases


def _conv_layout(batch: int, channels: int, tokens: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, N, C) as SelfAttention hands it over: a transposed view of a (B, C, N) conv output."""
    return torch.empty(batch, channels, tokens, device="meta", dtype=dtype).transpose(1, 2)


@contextlib.contextmanager
def _allow_tf32(allowed: bool) -> Iterator[None]:
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def attention_cases(
    widths: Iterable[int] = ATTENTION_WIDTHS,
    dtypes: Iterable[torch.dtype] = ATTENTION_DTYPES,
    all_configs: bool = False,
) -> list[Case]:
    """Forward and backward launches of G's and D's attention at 32x32 for each base width; float32
    both with exact dots and with TF32 allowed (torch.backends.cuda.matmul.allow_tf32)."""
    from tritonsagan.kernels.attention_kernels import attention_bwd_launch, attention_fwd_launch
    from tritonsagan.models import Discriminator, Generator

    variants = [(dtype, tf32) for dtype in dtypes for tf32 in ((False, True) if dtype == torch.float32 else (False,))]
    cases, seen = [], set()
    for ch in widths:
        with torch.device("meta"):
            models = {"G": Generator(ch=ch), "D": Discriminator(ch=ch)}
        for model_name, model in models.items():
            channels = model.attention.channels
            d_qk, d_v, n_q = channels // 8, channels // 2, 32 * 32
            for dtype, tf32 in variants:
                if (d_qk, d_v, dtype, tf32) in seen:
                    continue
                seen.add((d_qk, d_v, dtype, tf32))
                q, k = _conv_layout(REPORT_BATCH, d_qk, n_q, dtype), _conv_layout(REPORT_BATCH, d_qk, n_q // 4, dtype)
                v, grad_out = (
                    _conv_layout(REPORT_BATCH, d_v, n_q // 4, dtype),
                    _conv_layout(REPORT_BATCH, d_v, n_q, dtype),
                )
                out = torch.empty(REPORT_BATCH, n_q, d_v, device="meta", dtype=dtype)
                lse = torch.empty(REPORT_BATCH, n_q, device="meta")
                grads = [torch.empty(t.shape, device="meta", dtype=dtype) for t in (q, k, v)]
                shape = f"{model_name} ch {ch}: d_qk {d_qk}, d_v {d_v}"
                with _allow_tf32(tf32):
                    cases += _cases_from(
                        "attention forward",
                        shape,
                        dtype,
                        lambda: attention_fwd_launch(q, k, v, 1.0, out, lse),
                        all_configs,
                    )
                    cases += _cases_from(
                        "attention backward",
                        shape,
                        dtype,
                        lambda: attention_bwd_launch(grad_out, q, k, v, out, lse, 1.0, *grads),
                        all_configs,
                    )
    return cases


def spectral_norm_cases(
    ch: int = SN_WIDTH, dtypes: Iterable[torch.dtype] = SN_DTYPES, all_configs: bool = False
) -> list[Case]:
    """Every launch of the fused spectral norm (training forward, eval sigma, backward; W / sigma
    also written in bfloat16 and float16 from float32, as under autocast) for each SN weight shape of
    G and D at width ch, and the grouped power iteration over all of them."""
    from tritonsagan.kernels.spectral_norm_kernels import (
        power_iteration_grouped_launch,
        power_iteration_launch,
        rows_launch,
        scale_backward_launch,
        scale_launch,
    )

    from .spectral_norm import layer_shapes

    cases = []
    shapes = layer_shapes(ch, num_classes=1000)
    for shape in sorted(shapes):
        rows, cols = shape[0], torch.Size(shape[1:]).numel()
        for dtype in dtypes:
            w = torch.empty(rows, cols, device="meta", dtype=dtype)
            u, v = torch.empty(rows, device="meta", dtype=dtype), torch.empty(cols, device="meta", dtype=dtype)
            sigma = torch.empty((), device="meta")

            def record() -> None:
                power_iteration_launch(w, u, v, 1, 1e-12, torch.empty_like(u), torch.empty_like(v), sigma)
                rows_launch(w, v, torch.empty(rows, device="meta"))
                scale_launch(w, sigma, torch.empty_like(w))
                if w.dtype == torch.float32:
                    for autocast_dtype in (torch.bfloat16, torch.float16):
                        scale_launch(w, sigma, torch.empty_like(w, dtype=autocast_dtype))
                scale_backward_launch(torch.empty_like(w), w, u, v, sigma, torch.empty_like(w))

            cases += _cases_from("spectral norm", f"{rows} x {cols}", dtype, record, all_configs)
    matrices = [
        (shape[0], torch.Size(shape[1:]).numel()) for shape, count in sorted(shapes.items()) for _ in range(count)
    ]
    for dtype in dtypes:
        weights = [torch.empty(r, c, device="meta", dtype=dtype) for r, c in matrices]
        us = [torch.empty(r, device="meta", dtype=dtype) for r, _ in matrices]
        vs = [torch.empty(c, device="meta", dtype=dtype) for _, c in matrices]
        sigmas = [torch.empty((), device="meta") for _ in matrices]
        record_group = lambda: power_iteration_grouped_launch(weights, us, vs, sigmas, 1, 1e-12)  # noqa: E731
        cases += _cases_from(
            "spectral norm, grouped", f"{GROUPED_SHAPE} ({len(matrices)})", dtype, record_group, all_configs
        )
    return cases


def _configs_source(generation: Generation) -> Generation:
    """The generation whose configs a target is compiled with: its own, or for one that takes the
    torch paths, those of the next generation that offers Triton kernels."""
    if generation.triton:
        return generation
    return next(g for g in GENERATIONS if g.capability > generation.capability and g.triton)


def cases_for(target: str, all_configs: bool = False, quick: bool = False) -> list[Case]:
    """Every launch of the package's kernels as the autotuners offer it on `target`. quick: G and D
    at ch 64 in bfloat16 and the SN layers in float32 only."""
    generation = TARGETS[target]
    with compile_target(_configs_source(generation)):
        if quick:
            cases = attention_cases((SN_WIDTH,), (torch.bfloat16,), all_configs)
            cases += spectral_norm_cases(SN_WIDTH, (torch.float32,), all_configs)
        else:
            cases = attention_cases(all_configs=all_configs) + spectral_norm_cases(all_configs=all_configs)
    return [dataclasses.replace(case, target=target, offered=generation.triton) for case in cases]


# ---- compiling and reading the binary ---------------------------------------------------------------


def _tool(name: str) -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not path.is_file():
        raise CompileCheckUnavailable(f"this triton wheel has no {name} (no NVIDIA backend)")
    return str(path)


def check_available() -> None:
    """Raise CompileCheckUnavailable unless this triton can compile for NVIDIA GPUs here."""
    try:
        import triton.backends.nvidia  # noqa: F401
    except ImportError as err:
        raise CompileCheckUnavailable(f"triton has no NVIDIA backend: {err}") from None
    for tool in ("ptxas", "cuobjdump"):
        _tool(tool)


def _resources(cubin: bytes) -> tuple[int, int, str]:
    """(registers, stack frame bytes per thread, dot instruction) from a cubin. These kernels have no
    local arrays, so a stack frame is spilled registers (ptxas puts spills there, not in LOCAL)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run(
            [_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True, check=True).stdout
    registers = int(re.search(r"REG:(\d+)", usage).group(1))
    stack = int(re.search(r"STACK:(\d+)", usage).group(1)) + int(re.search(r"LOCAL:(\d+)", usage).group(1))
    instruction = "wgmma" if "HGMMA" in sass else "mma" if "HMMA" in sass else "fma"
    return registers, stack, instruction


def compile_job(job: CompileJob) -> dict:
    """Compile one job for its target; its resources, or the compiler's error."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    jit = _jit_function(_resolve(job.kernel))
    attrs = {(i,): [["tt.divisibility", 16]] for i in job.divisible}
    source = ASTSource(jit, dict(job.signature), dict(job.constexprs), attrs)
    options = {"num_warps": job.num_warps, "num_stages": job.num_stages}
    try:
        major, minor = TARGETS[job.target].capability
        compiled = triton.compile(source, target=GPUTarget("cuda", 10 * major + minor, 32), options=options)
    except Exception as err:  # the compiler's own errors (e.g. out of resources at compile time)
        first_line = (str(err).strip().splitlines() or [""])[0][:300]
        return {"error": f"{type(err).__name__}: {first_line}"}
    registers, spill_bytes, instruction = _resources(compiled.asm["cubin"])
    has_dot = "tt.dot" in compiled.asm["ttir"]
    return {
        "registers": registers,
        "spill_bytes": spill_bytes,
        "shared_bytes": compiled.metadata.shared,
        "dot": instruction if has_dot else None,
    }


def _verdict(row: dict) -> list[str]:
    """What keeps a compiled config from being usable on its target."""
    if "error" in row:
        return [row["error"]]
    generation, problems = TARGETS[row["target"]], []
    if row["spill_bytes"]:
        problems.append(f"spills {row['spill_bytes']} B/thread")
    if row["shared_bytes"] > generation.shared_bytes:
        problems.append(f"shared memory {row['shared_bytes']} B > {generation.shared_bytes} B")
    if row["dot"] and row["dtype"] in ("float16", "bfloat16") and row["dot"] != generation.tensor_dot:
        problems.append(f"{row['dtype']} dots became {row['dot']}, not {generation.tensor_dot}")
    return problems


def _config_label(kwargs: tuple, warps: int, stages: int) -> str:
    return ", ".join([f"{k} {v}" for k, v in kwargs] + [f"warps {warps}", f"stages {stages}"])


class CompileCache:
    """Compile results kept in CACHE_DIR/triton-<version>.json, keyed by the kernel's source (triton's
    own hash of the function, the jit functions it calls and the globals it reads) and the job
    (arguments, config, target): a kernel edit or another triton compiles afresh."""

    def __init__(self, triton_version: str) -> None:
        self.path = CACHE_DIR / f"triton-{triton_version}.json"
        self.triton_version = triton_version
        try:
            self.entries: dict[str, dict] = json.loads(self.path.read_text())
        except (OSError, ValueError):  # none yet, or unreadable: compile everything
            self.entries = {}

    def key(self, job: CompileJob) -> str:
        source = _jit_function(_resolve(job.kernel)).cache_key
        text = json.dumps([self.triton_version, source, dataclasses.astuple(job)], default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def save(self, used: dict[str, dict], complete: bool) -> None:
        """Keep `used`; a complete run (every target, every case) drops what no job uses any more."""
        entries = dict(sorted((used if complete else {**self.entries, **used}).items()))
        if entries == self.entries:
            return
        try:
            CACHE_DIR.mkdir(exist_ok=True)
            atomic_write_json(self.path, entries)
        except OSError as err:  # an installed package's folder may be read-only: the report stands without it
            print(f"warning: compile cache not written: {err}", file=sys.stderr)


def build_report(cases: list[Case], workers: int, cache: CompileCache, complete: bool) -> list[dict]:
    """One row per (case, config); identical compiles run once, and those in the cache not at all."""
    jobs: dict[CompileJob, list[tuple[Case, str]]] = {}
    for case in cases:
        for kwargs, warps, stages in case.configs:
            job = CompileJob(
                case.kernel, case.signature, case.constexprs + kwargs, case.divisible, warps, stages, case.target
            )
            jobs.setdefault(job, []).append((case, _config_label(kwargs, warps, stages)))
    keys = {job: cache.key(job) for job in jobs}
    results = {job: cache.entries[keys[job]] for job in jobs if keys[job] in cache.entries}
    missing = [job for job in jobs if job not in results]
    if missing:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            results.update(zip(missing, pool.map(compile_job, missing)))
    cache.save({keys[job]: result for job, result in results.items()}, complete)
    rows = []
    for job, uses in jobs.items():
        for case, label in uses:
            precision = dict(case.constexprs).get("PRECISION")  # the dots' input precision, for kernels with dots
            row = {
                "target": case.target,
                "offered": case.offered,
                "op": case.op,
                "kernel": case.kernel.split(":")[1],
                "shape": case.shape,
                "dtype": case.dtype,
                "precision": precision,
                "config": label,
                **results[job],
            }
            row["problems"] = _verdict(row)
            rows.append(row)
    return rows


def run_in_this_process(
    targets: Iterable[str] = TARGETS, all_configs: bool = False, workers: int | None = None, quick: bool = False
) -> dict:
    """The report; only valid in a process where the kernels were not decorated for the interpreter.
    quick: G and D at ch 64 in bfloat16 and the SN layers in float32 only (a rehearsal's check)."""
    import triton
    from tritonsagan.kernels._triton_support import INTERPRET

    if INTERPRET:
        raise RuntimeError("the compile report cannot be built under TRITON_INTERPRET=1; use compile_report()")
    targets = list(targets)
    check_available()
    cases = [case for target in targets for case in cases_for(target, all_configs, quick)]
    complete = set(targets) == set(TARGETS) and not (all_configs or quick)
    rows = build_report(cases, workers or os.cpu_count() or 1, CompileCache(triton.__version__), complete)
    return {
        "triton": triton.__version__,
        "targets": {
            target: {
                "capability": "{}.{}".format(*TARGETS[target].capability),
                "shared_limit_bytes": TARGETS[target].shared_bytes,
                "gpus": TARGETS[target].gpus,
                "tensor_dot": TARGETS[target].tensor_dot,
                "triton_kernels": TARGETS[target].triton,
            }
            for target in targets
        },
        "all_configs": all_configs,
        "quick": quick,
        "rows": rows,
    }


def parse_targets(text: str) -> list[str]:
    """A --targets comma list (an argparse type), each a checked generation."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in TARGETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown target {', '.join(unknown) or repr(text)}; the checked targets: {', '.join(TARGETS)}"
        )
    return names


def describe_failure(row: dict) -> str:
    """A failing row in one line: where, which launch and config, what is wrong."""
    return f"{row['target']} {row['kernel']} [{row['shape']}, {row['dtype']}] {row['config']}: {'; '.join(row['problems'])}"


def failures(report: dict) -> list[dict]:
    """The rows that fail the check: configs the package offers that spill, overflow shared memory,
    fail to compile, or whose half-precision dots miss the tensor cores."""
    return [row for row in report["rows"] if row["offered"] and row["problems"]]


def compile_report(
    targets: Iterable[str] = TARGETS,
    all_configs: bool = False,
    workers: int | None = None,
    timeout: float = 3600,
    quick: bool = False,
) -> dict:
    """The report, built in a fresh process without TRITON_INTERPRET. Raises CompileCheckUnavailable
    where triton cannot compile for NVIDIA GPUs."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when unset; 1 is its default
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "tritonsagan.bench.compile_check", "--json", str(out), "--quiet"]
        command += ["--targets", ",".join(targets)] + ["--all-configs"] * all_configs + ["--quick"] * quick
        command += ["--workers", str(workers)] if workers else []
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if result.returncode == UNAVAILABLE_EXIT:
            raise CompileCheckUnavailable(result.stderr.strip().splitlines()[-1])
        if result.returncode not in (0, FAILED_EXIT):
            raise RuntimeError(f"the compile report failed:\n{result.stderr[-4000:]}")
        return json.loads(out.read_text())


UNAVAILABLE_EXIT = 3
FAILED_EXIT = 1


def report_table(report: dict):
    """Per target and kernel: how many configs, the most registers, spills and shared memory any
    uses, the dot instructions, and how many fail; the JSON report has every config's row."""
    from rich.table import Table

    table = Table(title=f"Compile check (triton {report['triton']}; offered configs, without a GPU)")
    for column in ("target", "GPUs", "kernel", "configs", "max regs", "max spill B", "max shared B", "dots", "verdict"):
        table.add_column(column)
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in report["rows"]:
        groups.setdefault((row["target"], row["kernel"]), []).append(row)
    for (target, kernel), rows in groups.items():
        compiled = [r for r in rows if "error" not in r]
        worst = {
            key: max((r[key] for r in compiled), default=0) for key in ("registers", "spill_bytes", "shared_bytes")
        }
        dots = ", ".join(sorted({r["dot"] for r in compiled if r["dot"]})) or "-"
        bad = [r for r in rows if r["problems"]]
        if not rows[0]["offered"]:
            verdict = f"not offered (torch paths); {len(bad)} of {len(rows)} unusable"
        else:
            verdict = f"{len(bad)} fail" if bad else "ok"
        cells = [str(len(rows)), *(str(worst[k]) for k in ("registers", "spill_bytes", "shared_bytes")), dots, verdict]
        table.add_row(target, report["targets"][target]["gpus"], kernel, *cells)
    return table


def write_report(path: Path, report: dict) -> None:
    """The report as JSON with one row per line (bench/results/compile/ keeps one per triton)."""
    head = json.dumps({key: value for key, value in report.items() if key != "rows"}, indent=1)
    rows = ",\n".join(json.dumps(row) for row in report["rows"])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, f'{head[:-2]},\n "rows": [\n{rows}\n ]\n}}\n'.encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tritonsagan.bench.compile_check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--json", help="write the report to this file")
    parser.add_argument(
        "--targets", type=parse_targets, default=list(TARGETS), help=f"comma list (default: {','.join(TARGETS)})"
    )
    parser.add_argument("--all-configs", action="store_true", help="every config of each autotuner, before pruning")
    parser.add_argument("--workers", type=int, help="parallel compiles (default: one per CPU)")
    parser.add_argument("--quiet", action="store_true", help="no table")
    parser.add_argument("--quick", action="store_true", help="G and D at ch 64 in bfloat16, SN in float32 only")
    args = parser.parse_args(argv)
    try:
        report = run_in_this_process(args.targets, args.all_configs, args.workers, args.quick)
    except CompileCheckUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return UNAVAILABLE_EXIT
    if args.json:
        write_report(Path(args.json), report)
    if not args.quiet:
        from rich.console import Console

        Console(width=200).print(report_table(report))
    bad = failures(report)
    for row in bad:
        print(f"FAIL {describe_failure(row)}", file=sys.stderr)
    return FAILED_EXIT if bad else 0


if __name__ == "__main__":
    sys.exit(main())
