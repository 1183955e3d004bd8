"""The first hour at the command line: help and defaults, --version, missing extras, the
README's commands, and the import layers."""
import argparse
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import adirec
from adirec.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def _commands(parser=None, path=()):
    """(command path, its parser) of every subcommand, nested ones included."""
    parser = parser or build_parser()
    for name, sub in _subparsers(parser).items():
        yield (*path, name), sub
        yield from _commands(sub, (*path, name))


def _options(parser: argparse.ArgumentParser):
    return [a for a in parser._actions if a.option_strings
            and not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]


def test_every_option_has_help_that_shows_its_default():
    missing, no_default = [], []
    commands = list(_commands())
    assert {("train",), ("evaluate",), ("data", "convert"), ("bench",), ("serve",), ("index", "add")} <= {
        c for c, _ in commands}
    for path, parser in commands:
        for action in _options(parser):
            where = f"adirec {' '.join(path)} {action.option_strings[0]}"
            if not action.help:
                missing.append(where)
            elif action.default not in (None, False, [], argparse.SUPPRESS) and "default" not in action.help:
                no_default.append(where)
    assert missing == [] and no_default == []
    # defaults are shown the way they are typed
    help_text = _commands_by_path()[("evaluate",)].format_help()
    assert "(default: 10,50)" in re.sub(r"\s+", " ", help_text)


def _commands_by_path():
    return dict(_commands())


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"adirec {adirec.__version__}"
    assert re.search(r'^dynamic = \["version"\]', (ROOT / "pyproject.toml").read_text(), re.M)


def test_a_missing_extra_names_the_install_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if faiss-cpu were not installed
    for name in [m for m in sys.modules if m.startswith("adirec.serve.") and m != "adirec.serve.cli"]:
        monkeypatch.delitem(sys.modules, name)
    # before: a ModuleNotFoundError traceback; now one line and exit status 2
    assert main(["export", "some-run", "--out", "some-bundle"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("adirec: error: adirec export needs the optional dependency 'faiss', which is not "
                           "installed: pip install 'adirec[serve]'")


def test_tensorboard_without_its_extra_is_refused_before_training(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(SystemExit) as stop:
        main(["train", "--data", "synthetic:tiny", "--out", str(tmp_path / "run"), "--tensorboard", str(tmp_path)])
    assert stop.value.code == 2
    assert "pip install 'adirec[tensorboard]'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_core_install_trains_and_evaluates_without_any_extra(tmp_path):
    from adirec.extras import EXTRAS
    blocked = sorted(m for modules in EXTRAS.values() for m in modules)
    run = tmp_path / "run"
    code = (f"import sys\nfor m in {blocked!r}: sys.modules[m] = None\n"
            "from adirec.cli import main\n"
            f"assert main(['train', '--data', 'synthetic:tiny', '--out', {str(run)!r}, '--epochs', '1', "
            "'--embedding-dim', '8', '--batch-size', '128', '--negatives', '64', '--no-progress', '--threads', '1']) == 0\n"
            f"assert main(['evaluate', {str(run)!r}, '--k', '10']) == 0\n"
            f"assert main(['export', {str(run)!r}, '--out', {str(tmp_path / 'bundle')!r}]) == 2\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "hitrate@10" in done.stdout
    assert "pip install 'adirec[serve]'" in done.stderr


# ------------------------------------------------------------------ the README's commands
def _readme_commands() -> list[str]:
    """Every ``adirec ...`` command of the README: the lines of its fenced blocks (with their
    continuation lines, and the part after ``-m adirec`` of torchrun lines) and its inline code."""
    text = (ROOT / "README.md").read_text()
    found = []
    for lang, block in re.findall(r"```(\w*)\n(.*?)```", text, re.S):
        if lang:
            continue
        command = None
        for line in block.split("\n") + [""]:
            if command is not None and (line.startswith((" ", "\t")) and "adirec" not in line):
                command += " " + line.strip()
                continue
            if command is not None:
                found.append(command)
                command = None
            m = re.search(r"(?:^|&& |-m )(adirec\b.*)$", line.rstrip(" \\"))
            if m:
                command = m.group(1)
    found += re.findall(r"`(adirec [^`]+)`", text)
    return [re.split(r"\s+#\s", c)[0].strip() for c in found]


def test_readme_commands_exist_with_their_options(capsys):
    commands = _readme_commands()
    assert len(commands) >= 20 and "adirec --version" in commands
    parsers = _commands_by_path()
    top = build_parser()
    checked = set()
    for command in commands:
        words = shlex.split(command.replace("[", " ").replace("]", " "))[1:]
        path = ()
        while words and (*path, words[0]) in parsers:
            path += (words.pop(0),)
        parser = parsers[path] if path else top
        known = {s for a in parser._actions for s in a.option_strings}
        unknown = [w for w in words if w.startswith("--") and w.split("=")[0] not in known]
        assert unknown == [], f"README: `{command}`: {unknown} not options of adirec {' '.join(path)}"
        if path and path not in checked:
            checked.add(path)
            with pytest.raises(SystemExit) as stop:
                main([*path, "--help"])
            assert stop.value.code == 0, command
    assert {("train",), ("evaluate",), ("data", "inspect"), ("data", "convert"), ("export",), ("serve",),
            ("bench",), ("demo",)} <= checked
    capsys.readouterr()


def test_readme_quotes_shell_sensitive_arguments():
    text = (ROOT / "README.md").read_text()
    # a comparison like rating>=4 outside quotes is a shell redirection
    unquoted = [c for c in _readme_commands() if re.search(r"(?<!['\"\w])\w+[<>]=?[\w.]+", c)]
    assert unquoted == []
    assert re.findall(r"--positive [^'\"\s`]*[<>]", text) == []
    assert "--positive 'rating>=4'" in text


def test_readme_inspect_command_runs_on_synthetic_data(capsys):
    assert main(["data", "inspect", "synthetic:tiny"]) == 0
    assert "users in >= 2 domains" in capsys.readouterr().out


# ------------------------------------------------------------------ import layers
@pytest.mark.skipif(shutil.which("lint-imports") is None and not (Path(sys.executable).parent / "lint-imports").exists(),
                    reason="import-linter is not installed (pip install -e '.[test]')")
def test_import_layers_hold(tmp_path):
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    done = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "2 kept, 0 broken" in done.stdout
    # the contract can fail: an upward import in a copy of the package is found
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "adirec", copy / "adirec", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    metrics = copy / "adirec" / "eval" / "metrics.py"
    metrics.write_text(metrics.read_text() + "\n\ndef _upward():\n    from adirec.runs import train_run\n")
    done = subprocess.run([exe], cwd=copy, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(copy)})
    assert done.returncode != 0
    assert "adirec.eval is not allowed to import adirec.runs" in done.stdout


# what each preset must mean, as `adirec train --dry-run` prints it on three domains: the paper's
# presets the paper's models and training, adirec's own additions only in the plus presets
_PAPER_TRAINING = {"softmax": "sampled", "batch_size": 1024, "lr": 3e-3}
_PRESET_MEANS = {
    "adi-se": ({"backbone": "adi", "dial": "se", "dial_per_domain": True, "shared_experts": 1, "gate": "linear",
                "gate_input": "domain", "fusion": "concat", "dsbn": True, "domain_forward": True}, True),
    "adi-va": ({"backbone": "adi", "dial": "va", "gate_input": "domain", "fusion": "concat", "dsbn": True}, True),
    "adi-lt": ({"backbone": "adi", "dial": "lt", "gate_input": "domain", "fusion": "concat", "dsbn": True}, True),
    "adi-se-max": ({"backbone": "adi", "dial": "se", "shared_experts": 3, "gate_input": "domain"}, True),
    "dnn": ({"backbone": "mlp", "dial": "none", "dsbn": False, "domain_forward": False,
             "per_domain_features": True}, False),
    "dnn-blind": ({"backbone": "mlp", "dial": "none", "per_domain_features": False}, False),
    "dnn-single": ({"backbone": "mlp", "dial": "none"}, False),
    "shared-bottom": ({"backbone": "shared-bottom", "dial": "none", "dsbn": False, "domain_forward": True}, False),
    "cross-stitch": ({"backbone": "cross-stitch", "dial": "none", "dsbn": False}, False),
    "mmoe": ({"backbone": "mmoe", "shared_experts": 4, "gate": "softmax", "gate_input": "features",
              "dial": "none"}, False),
    "ple": ({"backbone": "ple", "shared_experts": 1, "specific_experts": 1, "gate": "softmax",
             "gate_input": "features", "dial": "none"}, False),
    "star": ({"backbone": "star", "dsbn": True, "dial": "none"}, False),
}


@pytest.mark.parametrize("name", sorted(_PRESET_MEANS))
def test_dry_run_prints_the_papers_model_and_training_for_each_paper_preset(name, capsys):
    import json
    assert main(["train", "--data", "synthetic:tiny", "--model", name, "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    model, self_training = _PRESET_MEANS[name]
    assert plan["model"] == name and len(plan["domains"]) == 3
    assert {k: plan["model_config"][k] for k in model} == model
    # none of adirec's additions
    assert {k: plan["model_config"][k] for k in ("history_encoder", "item_bias", "item_tower", "history_dropout")} \
        == {"history_encoder": "mean", "item_bias": False, "item_tower": "full", "history_dropout": 0.0}
    train = plan["train_config"]
    assert {k: train[k] for k in _PAPER_TRAINING} == _PAPER_TRAINING
    assert train["self_training"]["enabled"] is self_training  # part of ADI, not of the baselines
    assert train["corpus_negatives_only"] is (name != "dnn-blind")  # dnn-blind: one softmax over everything


@pytest.mark.parametrize("name, backbone", [("adi-plus", "adi"), ("dnn-plus", "mlp")])
def test_dry_run_shows_the_plus_presets_additions(name, backbone, capsys):
    import json
    assert main(["train", "--data", "synthetic:tiny", "--model", name, "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    m, t = plan["model_config"], plan["train_config"]
    assert m["backbone"] == backbone and m["item_bias"] is True
    # auto, resolved from the data's time order (the synthetic world has time), and the history
    # dropout by that encoder
    assert (m["history_encoder"], m["history_dropout"]) == ("transformer", 0.0)
    assert {k: t[k] for k in ("softmax", "batch_size", "lr")} == {"softmax": "auto", "batch_size": "auto", "lr": 5e-3}
    assert t["self_training"]["enabled"] is False
    if name == "adi-plus":  # narrower experts than the paper's ADI-SE
        assert (m["expert_hidden"], m["expert_out"]) == ([64], 32)
    # flags still apply over a preset's defaults, and the plan says so
    assert main(["train", "--data", "synthetic:tiny", "--model", name, "--dry-run", "--softmax", "sampled",
                 "--set", "history_encoder=mean"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["train_config"]["softmax"] == "sampled" and plan["model_config"]["history_encoder"] == "mean"
    assert plan["model_config"]["history_dropout"] == 0.25  # auto, under the mean encoder
    assert main(["train", "--data", "synthetic:tiny", "--model", name, "--dry-run", "--history-dropout", "0.1"]) == 0
    assert json.loads(capsys.readouterr().out)["model_config"]["history_dropout"] == 0.1


def test_dry_run_of_adi_plus_on_one_domain_is_dnn_plus(capsys):
    import json
    plans = {}
    for name in ("adi-plus", "dnn-plus"):
        assert main(["train", "--data", "synthetic:tiny", "--domains", "d2", "--model", name, "--dry-run"]) == 0
        plans[name] = json.loads(capsys.readouterr().out)
    assert plans["adi-plus"]["domains"] == ["d2"]
    assert plans["adi-plus"]["model_config"] == plans["dnn-plus"]["model_config"]
    assert plans["adi-plus"]["model_config"]["backbone"] == "mlp"
    # ADI's network on one domain, when asked for field by field
    assert main(["train", "--data", "synthetic:tiny", "--domains", "d2", "--model", "adi-plus", "--dry-run",
                 "--set", "backbone=adi", "--set", "dial=se", "--set", "dsbn=true", "--set", "domain_forward=true",
                 "--set", "expert_hidden=64", "--set", "expert_out=32"]) == 0
    m = json.loads(capsys.readouterr().out)["model_config"]
    assert (m["backbone"], m["dial"], m["dsbn"], m["domain_forward"], m["expert_hidden"]) == ("adi", "se", True, True, [64])


def test_adi_plus_is_what_train_builds_without_model(capsys):
    import json
    assert main(["train", "--data", "synthetic:tiny", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "adi-plus"


def test_batch_size_flag_takes_a_number_or_auto(capsys):
    import json
    for text, value in (("512", 512), ("auto", "auto")):
        assert main(["train", "--data", "synthetic:tiny", "--model", "adi-se", "--dry-run", "--batch-size", text]) == 0
        assert json.loads(capsys.readouterr().out)["train_config"]["batch_size"] == value
    with pytest.raises(SystemExit):
        main(["train", "--data", "synthetic:tiny", "--dry-run", "--batch-size", "large"])
    assert "expected a positive integer or auto, got 'large'" in capsys.readouterr().err
