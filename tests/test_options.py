"""One option vocabulary: README's option table against every parser's ``--help``, deprecated
aliases, the device checked before any work, ``simulate`` without ``--out``, ``etc import
--help``, time-stamped lines in a redirected run, an exact hint after Ctrl-C."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_dataset

from specdenoise import cli
from specdenoise.train.presets import PRESETS

README = Path(__file__).resolve().parents[1] / "README.md"


def _leaves() -> tuple[str, ...]:
    """Every command that does something (the leaves of the parser's command tree), so that a
    command added later is held to the table too."""
    import argparse

    found = []

    def walk(parser, prefix):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if prefix and (not subs or parser.get_default("func") is not None):
            found.append(prefix)  # a command, perhaps with commands of its own (etc, etc import)
        if not subs:
            return
        for name, sub in subs[0].choices.items():
            walk(sub, f"{prefix} {name}".strip())

    walk(cli.build_parser(), "")
    return tuple(found)


#: ``etc import`` is a form of ``etc`` (a positional word), with a --help of its own
LEAVES = (*_leaves(), "etc import")
STAMP = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\]"
NO_GPU = pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="this machine has a CUDA GPU")


def help_text(command: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        cli.main([*command.split(), "--help"])
    assert e.value.code == 0
    return out.getvalue()


def listed_options(text: str) -> set[str]:
    """The options a --help lists (its option lines, not options named in prose)."""
    return set(re.findall(r"^  (?:-\w, )?(--[\w-]+)", text, flags=re.M))


def option_table() -> dict[str, set[str]]:
    """README's 'Options' table: option -> the commands it names."""
    text = README.read_text()
    section = text.split("\n## Options\n", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        m = re.match(r"\| `(--[\w-]+)` \|.*\| ([^|]+) \|$", line)
        if m:
            cmds = m.group(2).strip()
            table[m.group(1)] = (set(LEAVES) if cmds == "every command"
                                 else {c.strip() for c in cmds.split(",")})
    return table


def test_readme_option_table_matches_every_help():
    table = option_table()
    assert {"--out", "--overwrite", "--no-progress", "--device", "--run", "--arch", "--preset",
            "--workers", "--loader-workers", "--seed", "--debug"} <= set(table)
    helps = {leaf: listed_options(help_text(leaf)) for leaf in LEAVES}
    problems = []
    for option, commands in table.items():
        assert commands <= set(LEAVES), f"{option}: unknown command in {commands}"
        for leaf in LEAVES:
            if (option in helps[leaf]) != (leaf in commands):
                problems.append(f"{option}: 'specdenoise {leaf} --help' "
                                + ("lists it but the table does not name the command"
                                   if option in helps[leaf] else "does not list it"))
    assert not problems, "README 'Options' table: " + "; ".join(problems)


def _action(command: str, option: str):
    parser = cli.build_parser()
    for word in command.split():
        parser = next(a for a in parser._actions
                      if isinstance(a, type(parser._subparsers._group_actions[0]))
                      ).choices[word]
    return next(a for a in parser._actions if option in a.option_strings)


def test_shared_options_read_the_same_everywhere():
    for option, commands in (("--device", ("train", "denoise", "evaluate", "run")),
                             ("--no-progress", ("grid build", "grid import", "etc", "simulate",
                                                "train", "denoise", "evaluate", "run"))):
        helps = {c: _action(c, option).help for c in commands}
        assert len(set(helps.values())) == 1, helps
    for option in ("--epochs", "--lr", "--seed", "--batch-size"):
        assert _action("train", option).help, option


def test_preset_help_lists_every_choice_and_the_default():
    for command in ("simulate", "train", "run"):
        action = _action(command, "--preset")
        assert action.default in (*action.choices, None)  # train: None keeps a resumed run's
        for choice in action.choices:
            assert f"{choice}: " in action.help
        assert action.help.count("(default)") == 1
    h = _action("train", "--preset").help  # tiny, quick (default), paper, best
    assert h.index("quick: ") < h.index("(default)") < h.index("paper: ")
    assert "1.02 GFLOP" in _action("train", "--preset").help


def test_train_quick_is_what_run_quick_trains():
    from specdenoise.stage_run import PRESETS as RUN_PRESETS
    from specdenoise.stage_train import DEFAULT_WORKERS
    from specdenoise.train.config import make_config

    # one network, the U-Net with train's quick preset and no other option
    assert [(t.model, t.preset) for t in RUN_PRESETS["quick"].train] == [("unet", "quick")]
    assert RUN_PRESETS["quick"].train[0] == make_config(
        "train.zarr", "val.zarr", "run-unet", model="unet", preset="quick",
        workers=DEFAULT_WORKERS)
    quick, best = PRESETS["quick"], PRESETS["best"]
    assert quick["model_cfg"] == best["model_cfg"]
    assert (quick["epochs"], quick["epoch_size"]) == (10, 3000)
    assert {k: v for k, v in quick.items() if k not in ("epochs", "epoch_size")} == \
        {k: v for k, v in best.items() if k not in ("epochs", "epoch_size")}


@pytest.mark.parametrize("argv,dest,value", [
    (["train", "--data", "d", "--out", "o", "--model", "dae"], "model", "dae"),
    (["train", "--data", "d", "--out", "o", "--workers", "3"], "workers", 3),
    (["denoise", "--model", "r", "--data", "d", "--out", "o"], "run_dir", "r"),
    (["evaluate", "--model", "a", "--model", "b", "--run", "c", "--data", "d", "--out", "o"],
     "runs", ["a", "b", "c"]),
])
def test_deprecated_alias_works_and_says_so_once(argv, dest, value, capsys):
    args = cli.build_parser().parse_args(argv)
    assert getattr(args, dest) == value
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is deprecated; use --" in err[0], err


def test_alias_reaches_the_stage(tmp_path, capsys):
    status = cli.main(["evaluate", "--model", str(tmp_path / "no-run"), "--data",
                       str(make_dataset(tmp_path / "v.zarr", n=4, chunk=4)), "--out",
                       str(tmp_path / "e"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 2
    assert "--model is deprecated; use --run" in err[0] and "no checkpoint at" in err[1]


def test_run_is_required_with_or_without_the_alias(capsys):
    assert cli.main(["denoise", "--data", "d.zarr", "--out", "o.zarr"]) == 2
    assert "give --run RUN_DIR" in capsys.readouterr().err


@NO_GPU
@pytest.mark.parametrize("argv", [
    ["train", "--data", "{tmp}/missing.zarr", "--out", "{tmp}/r"],
    ["denoise", "--run", "{tmp}/missing", "--data", "{tmp}/missing.zarr", "--out", "{tmp}/o"],
    ["evaluate", "--run", "{tmp}/missing", "--data", "{tmp}/missing.zarr", "--out", "{tmp}/e"],
    ["run", "--workdir", "{tmp}/work"],
])
def test_cuda_without_a_gpu_is_refused_before_any_work(argv, tmp_path, capsys):
    status = cli.main([a.format(tmp=tmp_path) for a in argv] + ["--device", "cuda"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in err and "no CUDA GPU" in err, err
    assert not list(tmp_path.iterdir())  # nothing simulated, trained or written


def test_unknown_device_is_one_line(tmp_path, capsys):
    assert cli.main(["denoise", "--run", str(tmp_path), "--data", "x.zarr", "--out",
                     str(tmp_path / "o.zarr"), "--device", "tpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown device 'tpu'" in err


def test_simulate_needs_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["simulate", "--n", "4"]) == 2
    assert "give --out OUT.zarr" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # no ./dataset.zarr
    assert cli.main(["simulate", "--print-config"]) == 0  # needs no --out


def test_etc_import_help_is_its_own():
    text = help_text("etc import")
    assert text.startswith("usage: specdenoise etc import")
    assert "PATH" in text and "--mag" not in text
    assert "--mag" in help_text("etc")


def test_library_warnings_stay_out_unless_debug():
    """Dask's loggers (the nanny's 'Worker process still alive ... killing') pass only
    critical records during a command, unless --debug; the environment is put back."""
    code = ("import logging, sys; from specdenoise import cli, options\n"
            "with options.quiet_libraries('--debug' in sys.argv):\n"
            "    import distributed\n"
            "    print(logging.getLogger('distributed.nanny').getEffectiveLevel())\n"
            "print(int(bool(__import__('os').environ.get('DASK_LOGGING__DISTRIBUTED'))))")
    env = {k: v for k, v in os.environ.items() if k != "DASK_LOGGING__DISTRIBUTED"}
    runs = [subprocess.run([sys.executable, "-c", code, *extra], capture_output=True,
                           text=True, timeout=120, env=env).stdout.split()
            for extra in ([], ["--debug"])]
    assert int(runs[0][0]) >= logging.CRITICAL > int(runs[1][0]), runs
    assert runs[0][1] == runs[1][1] == "0"  # the environment is put back afterwards


def test_redirected_logs_are_time_stamped(tmp_path):
    """train and evaluate written to a file: every epoch and progress line has a time stamp."""
    data = make_dataset(tmp_path / "d.zarr", n=24, chunk=8, params=True)
    log = tmp_path / "log.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as fh:
        for argv in (["train", "--data", data, "--out", tmp_path / "run", "--preset", "tiny",
                      "--epochs", "2", "--batch-size", "8", "--loader-workers", "0",
                      "--device", "cpu", "--model-cfg", '{"depth": 2, "filters": 4}'],
                     ["evaluate", "--run", tmp_path / "run", "--data", data, "--baselines",
                      "none", "--out", tmp_path / "eval", "--device", "cpu"]):
            r = subprocess.run([sys.executable, "-m", "specdenoise.cli", *map(str, argv)],
                               stdout=fh, stderr=subprocess.STDOUT, timeout=300, env=env)
            assert r.returncode == 0, log.read_text()
    text = log.read_text()
    epochs = [ln for ln in text.splitlines() if ln.startswith("epoch ")]
    assert len(epochs) == 2 and all(re.search(STAMP + "$", ln) for ln in epochs), text
    progress = [ln for ln in text.splitlines() if ln.startswith("evaluate: ")]
    assert progress and all(re.search(r"% \(.*\) " + STAMP + "$", ln) for ln in progress), text
    assert "\r" not in text


def _sigint() -> None:
    """Ctrl-C reaches the child even when the tests run in the background (where the shell
    starts them with SIGINT ignored, and Python then never raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_in_the_first_epoch_does_not_ask_for_resume(tmp_path):
    """Interrupted before a checkpoint exists: the message says to start again, and doing so
    works; it asks for --resume only when there is something to resume."""
    data = make_dataset(tmp_path / "d.zarr", n=512, chunk=64)
    out = tmp_path / "run"  # the quick preset's 1.07 M-parameter U-Net: seconds per epoch
    argv = [sys.executable, "-m", "specdenoise.cli", "train", "--data", str(data), "--out",
            str(out), "--epochs", "1", "--loader-workers", "0", "--device", "cpu"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=_sigint)
    deadline = time.monotonic() + 120
    while not (out / "config.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # config.json is written when training starts
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if (out / "checkpoint.pt").exists():
        pytest.skip("the epoch finished before the interrupt arrived")
    assert proc.returncode == 130, err
    assert "no checkpoint to resume from" in err and "without --resume" in err
    last = err.strip().splitlines()[-1]
    assert "--resume to" not in last


def test_ctrl_c_leaves_dask_chatter_out_of_the_log(small_grid, tmp_path):
    """A real simulate on a local Dask cluster, interrupted: the log ends with the one-line
    hint, without the nanny's 'still alive ... killing', task-cancelled warnings or
    multiprocessing's leaked-semaphore report (all of which --debug shows)."""
    argv = [sys.executable, "-m", "specdenoise.cli", "simulate", "--n", "40000", "--chunk-size",
            "500", "--grid", str(small_grid), "--out", str(tmp_path / "s.zarr"), "--workers",
            "1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_sigint)
    lines = []
    for line in proc.stdout:  # interrupt once the work is under way
        lines.append(line)
        if line.startswith("simulate: "):
            break
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    text = "".join(lines) + rest
    if proc.returncode == 0:
        pytest.skip("the simulation finished before the interrupt arrived")
    assert proc.returncode == 130, text
    for noise in ("distributed.", "WARNING", "Traceback", "CancelledError", "leaked"):
        assert noise not in text, text
    assert text.strip().splitlines()[-1].startswith("specdenoise simulate: interrupted; "
                                                     "finished chunks are kept")


def test_quiet_libraries_outlives_distributed_setting_its_own_levels():
    """A stage imports distributed inside the block; the import sets tornado.application and
    distributed.client back to its defaults (error, warning), and CI once saw a Ctrl-C logged
    as a tornado traceback. Those records stay out unless --debug."""
    import dask
    from distributed.config import initialize_logging

    from specdenoise import options

    names = options.DISTRIBUTED_OWN_LEVELS
    levels = {n: logging.getLogger(n).level for n in names}
    seen = io.StringIO()
    handler = logging.StreamHandler(seen)  # as distributed's own handler on stderr
    for n in ("tornado.application", "distributed.client"):
        logging.getLogger(n).addHandler(handler)
    try:
        with options.quiet_libraries(False):
            initialize_logging(dask.config.config)  # what a later `import distributed` does
            assert logging.getLogger("tornado.application").level == logging.ERROR
            logging.getLogger("tornado.application").error("Exception in callback")
            logging.getLogger("distributed.client").warning("Couldn't gather 1 keys")
        assert seen.getvalue() == ""
        # outside the block (and with --debug) they are the library's again
        logging.getLogger("tornado.application").error("after the block")
        assert "after the block" in seen.getvalue()
    finally:
        for n in ("tornado.application", "distributed.client"):
            logging.getLogger(n).removeHandler(handler)
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
