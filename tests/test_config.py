"""The config system (utils/config.py) and the run checks (engine/checks.py): bad configs fail before any work,
each failure in one line with its exit code."""
import logging
import os
import re
import subprocess
import sys

import pytest
import yaml

import main_cross_domain_emb as entry
from engine.checks import CHOICES, preflight, run_cli, validate_config
from engine.run_dir import config_changes
from engine.trainer import NonFiniteLoss
from evaluate.features import DiskFull, NonFiniteFeatures
from evaluate.pipeline import FolderInUse
from utils.checkpoint import CheckpointWriteError, WeightsMismatch
from utils.config import ConfigError, load_config, save_config
from utils.distributed import UnsupportedGPU
from utils.logging import LOGGER_NAME
from tests.helpers import REPO_ROOT as REPO

BASE = os.path.join(REPO, "configs", "base.yaml")


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_base_chain_later_files_win(tmp_path):
    write(tmp_path / "mid.yaml", f"_base_: {BASE}\ntrain:\n  epochs: 4\n  lr: 2.0e-4\n")
    child = write(tmp_path / "child.yaml", "_base_: mid.yaml\ntrain:\n  epochs: 7\nloss:\n  weights:\n    qt: 0.5\n")
    cfg = load_config(child)
    assert cfg["train"]["epochs"] == 7          # child over mid
    assert cfg["train"]["lr"] == 2e-4           # mid over base
    assert cfg["train"]["batch_size"] == 80     # base
    assert cfg["loss"]["weights"] == {"qu": 1.0, "qv": 1.0, "qt": 0.5, "recon_text": 1.0, "recon_vision": 1.0}
    assert cfg["config_path"] == child


def test_shipped_configs_resolve_and_validate():
    for name in ("demo.yaml", "qcd_real400k.yaml"):
        validate_config(load_config(os.path.join(REPO, "configs", name)))
    real = load_config(os.path.join(REPO, "configs", "qcd_real400k.yaml"))
    t = real["train"]
    assert (t["batch_size"], t["epochs"], t["optimizer"], t["lr"], t["lr_visual"], t["lr_recon"]) == (
        80, 10, "adam", 1e-4, 1e-5, 1e-5)
    assert (real["data"]["num_frames"], real["data"]["query_max_len"], real["data"]["text_max_len"],
            real["data"]["image_size"], real["loss"]["temperature"]) == (5, 20, 90, 224, 0.07)


def test_typed_overrides():
    cfg = load_config(BASE, ["train.lr=3e-5", "train.epochs=2", "resume=null", "train.max_steps=50",
                             "data.crop_scale=[0.5, 1.0]", "output_dir=runs/a=b", "train.grad_clip=2"])
    assert cfg["train"]["lr"] == 3e-5 and isinstance(cfg["train"]["lr"], float)
    assert cfg["train"]["epochs"] == 2 and cfg["train"]["max_steps"] == 50
    assert cfg["resume"] is None and cfg["data"]["crop_scale"] == [0.5, 1.0]
    assert cfg["output_dir"] == os.path.abspath("runs/a=b")  # only the first "=" separates key and value
    assert cfg["train"]["grad_clip"] == 2.0 and isinstance(cfg["train"]["grad_clip"], float)


@pytest.mark.parametrize("override,message", [
    ("train.epochs=two", "key 'train.epochs' expects int"),
    ("train.lr=fast", "key 'train.lr' expects float"),
    ("train.epoch=3", "unknown config key 'train.epoch'; did you mean 'train.epochs'?"),
    ("trian.lr=1", "unknown config key 'trian'; did you mean 'train'?"),
    ("train.warmup_ratoi=0.1", "unknown config key 'train.warmup_ratoi'; did you mean 'train.warmup_ratio'?"),
    ("train.epochs", "override 'train.epochs': expected key=value"),
    ("train.lr=null", "key 'train.lr' expects float (default 0.0001), got null"),
    ("data.num_frames=null", "key 'data.num_frames' expects int (default 5), got null"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(BASE, [override])


def test_free_form_mappings_merge_key_by_key(tmp_path):
    demo = os.path.join(REPO, "configs", "demo.yaml")
    sizes = load_config(demo)["model"]["backbone"]["overrides"]
    child = write(tmp_path / "child.yaml", f"_base_: {demo}\nmodel:\n  backbone:\n    overrides: {{text_num_hidden_layers: 6}}\n")
    merged = load_config(child, ["model.backbone.overrides.vision_layers=1"])["model"]["backbone"]["overrides"]
    assert merged == dict(sizes, text_num_hidden_layers=6, vision_layers=1)


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    path = write(tmp_path / "exp.yaml", f"_base_: {BASE}\ntrain:\n  save_every: 5\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml:3: unknown config key 'train.save_every'; did you mean 'train.save_every_steps'"):
        load_config(path)


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path / "broken.yaml", f"_base_: {BASE}\ntrain:\n  epochs: 2\n   lr: [1e-4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "broken.yaml: invalid YAML" in str(err.value) and "line 4" in str(err.value)


@pytest.mark.parametrize("override,message", [
    ("train.optimizer=sgd", "train.optimizer='sgd': expected one of ['adam', 'adamw']"),
    ("train.amp=fp8", "train.amp='fp8': expected one of"),
    ("train.epochs=0", "train.epochs=0: expected an integer >= 1"),
    ("train.max_steps=0", "train.max_steps=0: expected null or an integer >= 1"),
    ("train.grad_clip=-1", "train.grad_clip=-1.0: expected 0 (off) or a norm > 0"),
    ("resume=/no/such/file.pth.tar", "resume='/no/such/file.pth.tar': expected null, auto or an existing checkpoint"),
    ("init_from=/no/such/file.pth.tar", "init_from='/no/such/file.pth.tar': checkpoint file not found"),
])
def test_entry_point_rejects_bad_values_before_any_work(tmp_path, capsys, override, message):
    out = tmp_path / "run"
    code = entry.main(["--config", BASE, f"output_dir={out}", override])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing was created: no process group, no data, no output folder


def test_cli_reports_a_malformed_config_without_a_traceback(tmp_path):
    path = write(tmp_path / "broken.yaml", "train: [unclosed\n")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "main_cross_domain_emb.py"), "--config", path,
                           f"output_dir={out}"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.startswith("config error: ") and "broken.yaml: invalid YAML" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(os.path.join(REPO, "configs", "demo.yaml"), ["train.lr=5e-4", "data.crop_scale=[0.3, 1.0]"])
    save_config(cfg, str(tmp_path / "out" / "config.yaml"))
    with open(tmp_path / "out" / "config.yaml", encoding="utf-8") as f:
        assert yaml.safe_load(f) == cfg
    # the saved file is itself a loadable config giving the same run
    again = load_config(str(tmp_path / "out" / "config.yaml"))
    assert {k: v for k, v in again.items() if k != "config_path"} == {k: v for k, v in cfg.items() if k != "config_path"}


def test_config_changes_between_checkpoint_and_resumed_run():
    old = load_config(BASE)
    new = load_config(BASE, ["train.weight_decay=1e-3", "train.max_steps=10", "loss.weights.qt=0.5", "output_dir=elsewhere"])
    assert config_changes(old, new) == ["loss.weights.qt: 1.0 -> 0.5", "train.weight_decay: 0.0 -> 0.001"]
    assert config_changes(old, old) == []


def test_every_enumerated_setting_is_checked_against_its_registry():
    base = load_config(BASE)
    for path, allowed in CHOICES.items():
        value = base
        for p in path:
            value = value[p]
        assert (set(value) <= set(allowed)) if isinstance(value, list) else value in allowed, path
        cfg = load_config(BASE)
        node = cfg
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = ["no-such-value"] if isinstance(value, list) else "no-such-value"
        with pytest.raises(ConfigError, match=re.escape(f"{'.'.join(path)}=")):
            validate_config(cfg)


def test_the_file_checks_come_first_and_name_their_setting(tmp_path):
    cfg = load_config(BASE, [f"data.root={tmp_path / 'nowhere'}", f"resume={tmp_path / 'old.pth.tar'}"])
    validate_config(cfg)  # the files are preflight's
    with pytest.raises(ConfigError, match=r"resume='.*old\.pth\.tar': expected null, auto or an existing checkpoint"):
        preflight(cfg)
    cfg["resume"] = None
    with pytest.raises(FileNotFoundError, match=r"data\.root=.*nowhere: folder not found"):
        preflight(cfg)


def fails_with(error):
    def fn():
        raise error
    return fn


@pytest.mark.parametrize("error,line,code", [
    (ConfigError("train.amp='x': expected one of"), "config error: train.amp='x': expected one of", 2),
    (FileNotFoundError("data.root=x: folder not found"), "error: data.root=x: folder not found", 2),
    (UnsupportedGPU("this GPU is sm_70"), "error: this GPU is sm_70", 2),
    (WeightsMismatch("x does not fit"), "error: x does not fit", 2),
    (ValueError("data.image_size=64 differs"), "error: data.image_size=64 differs", 2),
    (NonFiniteFeatures("a feature row holds NaN"), "error: a feature row holds NaN", 1),
    (DiskFull("out/gallery: disk full writing shard_0_of_1.npy"), "error: out/gallery: disk full writing shard_0_of_1.npy", 1),
    (FolderInUse("out/gallery is in use by another evaluation"), "error: out/gallery is in use by another evaluation", 1),
    (NonFiniteLoss("non-finite loss"), None, 1),
    (CheckpointWriteError(28, "No space left"), None, 1),
])
def test_one_mapping_from_failure_to_message_and_exit_code(capsys, monkeypatch, error, line, code):
    # the run's logger gets only this test's handler: earlier tests' handlers write to streams pytest has closed
    logged = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    monkeypatch.setattr(logging.getLogger(LOGGER_NAME), "handlers", [handler])
    monkeypatch.setattr(logging.getLogger(LOGGER_NAME), "propagate", False)
    assert run_cli(fails_with(error)) == code
    err = capsys.readouterr().err
    if line is None:  # the run's logger reports it, after its own lines
        assert err == "" and logged == [str(error)]
    else:
        assert err == line + "\n"


def test_run_cli_passes_the_exit_code_through_and_lets_a_bug_show_its_traceback():
    assert run_cli(lambda a, b: a + b, 0, 3) == 3
    with pytest.raises(KeyError):
        run_cli(fails_with(KeyError("bug")))
