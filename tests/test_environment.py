"""The two pinned stacks (laptop and V100 cluster) and the start-up checks of the GPU and its precision."""
import os
import re

import pytest
import torch
import yaml

import main_cross_domain_emb as entry
from utils.distributed import UnsupportedGPU, amp_error, check_gpu, gpu_arch_error

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "demo.yaml")
# torch._C._cuda_getArchFlags() of the two pinned builds
ARCHS_2_14 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
ARCHS_2_7 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]


def pins(name):
    pinned = {}
    with open(os.path.join(REPO, name), encoding="utf-8") as f:
        for line in f:
            line = line.split("#")[0].strip()
            if line:
                package, version = line.split("==")
                pinned[package] = version
    return pinned


@pytest.mark.parametrize("capability,archs,runs", [
    ((7, 0), ARCHS_2_14, False),              # V100 on the laptop pins
    ((7, 0), ARCHS_2_7, True),                # V100 on the cluster pins
    ((8, 9), ARCHS_2_7, True),                # sm_86 kernels run on sm_89 (same major, higher minor)
    ((9, 0), ["sm_80", "sm_86"], False),      # cubins do not cross a major version
    ((12, 0), ARCHS_2_7, False),
    ((12, 0), ARCHS_2_7 + ["compute_90"], True),  # PTX is compiled for newer GPUs
    ((7, 0), ["sm_90a", "sm_100a"], False),
])
def test_gpu_arch_check(capability, archs, runs):
    error = gpu_arch_error(capability, archs, "2.x")
    assert (error is None) == runs
    if not runs:
        assert "\n" not in error and f"sm_{capability[0]}{capability[1]}" in error and "environment.yml" in error


def test_bf16_needs_ampere():
    error = amp_error("bf16", (7, 0), "Tesla V100-SXM2-32GB")
    assert "Tesla V100-SXM2-32GB" in error and "train.amp=fp16" in error
    assert amp_error("fp16", (7, 0), "V100") is None and amp_error("bf16", (8, 0), "A100") is None


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch believes it sees one GPU of the given capability; set_device is a no-op."""
    def install(capability, archs, name="Tesla V100-SXM2-32GB"):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: archs)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    return install


def test_check_gpu_raises_on_a_gpu_without_kernels(fake_gpu):
    fake_gpu((7, 0), ARCHS_2_14)
    with pytest.raises(UnsupportedGPU, match="environment.yml"):
        check_gpu(torch.device("cuda", 0))


@pytest.mark.parametrize("evaluate", [False, True])
def test_start_up_on_an_unsupported_gpu_stops_with_one_line(fake_gpu, capsys, tmp_path, mini_root, evaluate):
    fake_gpu((7, 0), ARCHS_2_14)
    argv = ["--config", DEMO, f"output_dir={tmp_path}", f"data.root={mini_root}"] + (["--evaluate"] if evaluate else [])
    assert entry.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: this GPU is sm_70") and "environment.yml" in err
    assert not os.listdir(tmp_path)


def test_bf16_on_a_v100_is_a_config_error(fake_gpu, capsys, tmp_path, mini_root):
    fake_gpu((7, 0), ARCHS_2_7)
    assert entry.main(["--config", DEMO, f"output_dir={tmp_path}", f"data.root={mini_root}", "train.amp=bf16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("config error: train.amp=bf16: Tesla V100") and "train.amp=fp16" in err


def test_environment_yml_installs_the_cluster_pins():
    with open(os.path.join(REPO, "environment.yml"), encoding="utf-8") as f:
        env = yaml.safe_load(f)
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == ["-r requirements-cluster.txt"]
    # torch and faiss come from pip: a conda pytorch-cuda or faiss beside them would be a second copy
    assert not [d for d in conda if re.match(r"(pytorch|faiss|torch)", d)]
    laptop, cluster = pins("requirements.txt"), pins("requirements-cluster.txt")
    assert "faiss-gpu-cu12" in cluster and "faiss-cpu" not in cluster
    torch_major, torch_minor = map(int, cluster["torch"].split(".")[:2])
    assert (torch_major, torch_minor) >= (2, 6)  # transformers 5 needs torch >= 2.6
    # the same stack apart from torch, torchvision and faiss's build
    different = {"torch", "torchvision", "faiss-cpu", "faiss-gpu-cu12"}
    assert {k: v for k, v in laptop.items() if k not in different} == {
        k: v for k, v in cluster.items() if k not in different}


@pytest.mark.skipif(torch.__version__.split("+")[0] != pins("requirements-cluster.txt")["torch"],
                    reason="runs on the cluster pins (sh tests/run.sh --cluster-pins)")
def test_cluster_torch_ships_v100_kernels():
    archs = torch._C._cuda_getArchFlags().split()
    assert "sm_70" in archs
    assert gpu_arch_error((7, 0), archs, torch.__version__) is None
