"""Every example in README.md runs as written, at tiny sizes, so none can rot.

Each fenced `bash` block is split into commands and each `python` block is executed. A command runs
as a newcomer would type it, from a scratch folder, with flags appended that shrink it (argparse
takes the last value of a flag) and the README's placeholder dataset paths pointing at small
folders made here. `make demo` runs the commands its recipe prints (`make -n demo`). A command this
test does not know how to run fails it, so a new kind of example cannot slip in untested.
"""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from helpers import cli_flags, free_port, image_folder, stand_in_network
from tritonsagan.bench import learning

from tritonsagan.checkpoint import list_checkpoints
from tritonsagan.config_flags import build_config
from tritonsagan.train import TrainConfig, build_parser

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
ENTRY_POINTS = PYPROJECT["project"]["scripts"]  # tritonsagan-train -> tritonsagan.train:main

# Appended to each command, by program: the same run, small enough for a CPU test. Training also gets
# --steps: two more than the run directory's checkpoint holds (several examples train one run).
TRAIN_TINY = cli_flags(log_every=1, sample_every=2, save_every=2)
TINY_FLAGS = {
    "tritonsagan-train": TRAIN_TINY,
    "tritonsagan-generate": ["--n", "3"],
    "tritonsagan-eval": ["--n", "40", "--kid-subset-size", "20", "--batch-size", "20", "--workers", "0"],
    "tritonsagan-prepare": ["--workers", "1"],
    "tritonsagan-curves": [],
    "tritonsagan-export": ["--kid-n", "0"],
}
TORCHRUN_TINY = [*TRAIN_TINY, "--no-sync-bn"]  # on two CPU ranks, where SyncBatchNorm (CUDA only) cannot run
FID_EVERY_TINY = ["--fid-every", "1", "--fid-n", "24"]


def code_blocks(markdown: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", markdown, re.MULTILINE | re.DOTALL)]


def shell_commands(script: str) -> list[list[str]]:
    """A shell script's commands as argument lists: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", script)
    return [argv for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


def demo_commands(*make_args: str, cwd: Path = ROOT) -> list[list[str]]:
    """The tritonsagan commands of `make demo`'s recipe, as make prints them without running them."""
    dry_run = subprocess.run(
        ["make", "-n", "--no-print-directory", "-f", str(ROOT / "Makefile"), "demo", *make_args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    commands = [argv for argv in shell_commands(dry_run.stdout) if Path(argv[0]).name.startswith("tritonsagan-")]
    assert commands and all(argv[0].startswith(".venv/bin/") for argv in commands), dry_run.stdout
    return commands


class Examples:
    """Runs README commands in a scratch folder, where /data/imagenet/train is a small class folder."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.paths = {
            "/data/imagenet/train": str(image_folder(scratch / "imagenet-train", per_class=6)),
            "/data/imagenet128": str(scratch / "imagenet128"),
        }
        self.ran: list[str] = []

    def run(self, argv: list[str]) -> None:
        argv = [self.paths.get(arg, arg) for arg in argv]
        if "--beside" in argv:  # the cards drawn beside are committed reports, read from the repository
            at = argv.index("--beside") + 1
            argv[at:] = [str(ROOT / arg) if (ROOT / arg).is_file() else arg for arg in argv[at:]]
        program = Path(argv[0]).name
        self.ran.append(program if program != "make" else " ".join(argv[:2]))
        if argv[:2] == ["make", "demo"]:
            for command in demo_commands():
                self.run(command)
        elif argv[:2] == ["make", "test"]:
            assert "make test" in (ROOT / ".ci" / "run").read_text()  # CI runs it, this suite included
        elif argv == ["source", ".venv/bin/activate"]:
            assert re.search(
                r"^VENV \?= \.venv$", (ROOT / "Makefile").read_text(), re.MULTILINE
            )  # where make puts the environment
        elif len(argv) == 1 and re.fullmatch(r"[A-Z_]+=\S+", argv[0]):
            pass  # a shell variable for the commands after it
        elif argv[:2] == ["pip", "install"]:
            self._check_pip_install(argv[2:])
        elif program in TINY_FLAGS:
            module, function = ENTRY_POINTS[program].split(":")
            tiny = TINY_FLAGS[program] + (FID_EVERY_TINY if "--fid-every" in argv else [])
            if program == "tritonsagan-train":
                tiny += self._two_more_steps(argv)
            assert getattr(importlib.import_module(module), function)([*argv[1:], *tiny]) == 0, argv
        elif program == "torchrun":
            self._torchrun(argv[1:])
        elif program == "tritonsagan-bench":
            # The benchmark's sections run in tests/test_bench.py; here each command parses.
            from tritonsagan.bench.cli import build_parser

            build_parser().parse_args([arg.replace("$REPORT", str(self.scratch / "report.json")) for arg in argv[1:]])
        elif argv[:5] == ["python", "-m", "pytest", "-m", "gpu"]:
            assert "gpu:" in " ".join(PYPROJECT["tool"]["pytest"]["ini_options"]["markers"])  # the marker exists
        else:
            pytest.fail(f"README example this test does not know how to run: {shlex.join(argv)}")

    def _two_more_steps(self, args: list[str]) -> list[str]:
        checkpoints = list_checkpoints(self.scratch / args[args.index("--out") + 1] / "checkpoints")
        return ["--steps", str((checkpoints[-1][0] if checkpoints else 0) + 2)]

    def _check_pip_install(self, args: list[str]) -> None:
        """`pip install -e '.[extra,...]'` (or `-e .`): the extras exist in pyproject.toml; or a
        package an extra names, installed alone."""
        target = next(arg for arg in args if not arg.startswith("-"))
        extra_packages = {
            re.split(r"[<>=\[; ]", dependency)[0]
            for extra in PYPROJECT["project"]["optional-dependencies"].values()
            for dependency in extra
        }
        if "-e" not in args and target in extra_packages:
            return
        match = re.fullmatch(r"\.(?:\[([\w,]+)\])?", target)
        assert match and "-e" in args, f"pip install {shlex.join(args)}: install the clone, editable"
        extras = set(match.group(1).split(",")) if match.group(1) else set()
        assert extras <= set(PYPROJECT["project"]["optional-dependencies"]), extras

    def _torchrun(self, args: list[str]) -> None:
        """Two CPU ranks (gloo): two processes under one agent, or for a multi-node command one process
        under each of its agents, which meet at its rendezvous moved to a free port on localhost."""
        module = args.index("-m")
        launcher = args[:module]
        nodes = int(launcher[launcher.index("--nnodes") + 1]) if "--nnodes" in launcher else 1
        launcher[launcher.index("--nproc-per-node") + 1] = "2" if nodes == 1 else "1"
        if nodes == 1:
            launcher.insert(0, "--standalone")
        else:
            launcher[launcher.index("--rdzv-endpoint") + 1] = f"localhost:{free_port()}"
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            *launcher,
            *args[module:],
            *TORCHRUN_TINY,
            *self._two_more_steps(args),
        ]
        agents = [
            subprocess.Popen(command, cwd=self.scratch, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for _ in range(nodes)
        ]
        for agent in agents:
            _, stderr = agent.communicate(timeout=300)
            assert agent.returncode == 0, stderr[-3000:]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_every_readme_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRITONSAGAN_FID_WEIGHTS", str(stand_in_network(tmp_path / "standin.pt")))
    examples = Examples(tmp_path)
    blocks = code_blocks((ROOT / "README.md").read_text())
    for language, body in blocks:
        if language == "bash":
            for argv in shell_commands(body):
                examples.run(argv)
        elif language == "python":
            exec(compile(body, "README.md", "exec"), {})
        else:
            pytest.fail(f"README code block in {language or 'no language'}: mark it bash or python so it is run")
    for program in (
        "make demo",
        "tritonsagan-train",
        "tritonsagan-generate",
        "tritonsagan-eval",
        "tritonsagan-prepare",
        "tritonsagan-export",
        "tritonsagan-bench",
        "torchrun",
    ):
        assert program in examples.ran, program
    assert (tmp_path / "runs" / "demo" / "classes.png").is_file() and (
        tmp_path / "runs" / "demo" / "attention.png"
    ).is_file()


def test_the_demo_trains_the_defaults_for_minutes_on_cuda():
    train, *_ = demo_commands("HAS_CUDA=1")
    cfg = build_config(TrainConfig, build_parser().parse_args(train[1:]))
    default = TrainConfig()
    assert (cfg.ch, cfg.batch_size, cfg.compile, cfg.precision) == (
        default.ch,
        default.batch_size,
        default.compile,
        default.precision,
    )
    assert cfg.conditional and 0 < cfg.max_minutes <= 5 and cfg.steps > cfg.ema_start


def test_the_demo_draws_the_shipped_grid_and_attention_beside_its_own(tmp_path):
    (tmp_path / "pyproject.toml").touch()  # what `make -n` needs of a checkout to print the recipe
    alone = demo_commands(cwd=tmp_path)
    assert (
        alone[1][:4] == [".venv/bin/tritonsagan-generate", "--weights", "runs/demo", "--class-per-row"]
        and len(alone) == 4
    )
    (tmp_path / "tritonsagan" / "pretrained" / "builtin-photos-64").mkdir(parents=True)
    (tmp_path / "tritonsagan" / "pretrained" / "builtin-photos-64" / "model.safetensors").touch()
    shipped = demo_commands(cwd=tmp_path)
    assert shipped[1][:4] == [".venv/bin/tritonsagan-generate", "--weights", "runs/demo", "builtin-photos-64"]
    assert (
        shipped[3][:3] == [".venv/bin/tritonsagan-generate", "--weights", "builtin-photos-64"]
        and "--attention-maps" in shipped[3]
    )
    assert shipped[4][:2] == [".venv/bin/tritonsagan-export", "runs/demo"]


def test_the_demo_on_a_cpu_trains_the_learning_benchmarks_recipe():
    train, *_ = demo_commands("HAS_CUDA=0")
    cfg = build_config(TrainConfig, build_parser().parse_args(train[1:]))
    recipe = {key: getattr(cfg, key) for key in learning.RECIPE}
    assert recipe == learning.RECIPE and cfg.ema_start < cfg.steps
    # At most 6 minutes of training on any CPU (the last log interval and checkpoint after the limit fit in the rest).
    assert 0 < cfg.max_minutes <= 5.5
