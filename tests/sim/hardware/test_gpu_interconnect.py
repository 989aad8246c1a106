"""GPU <-> GPU interconnect and all-reduce latency: every preset has sourced figures, and a TOML file or a dimension
string states them like the other optional figures (a bad value stops with a UserError)."""

import json

import pytest

from sim.cli.main import main
from sim.errors import UserError
from sim.hardware.gpus import (
    ALLREDUCE_LATENCY_S,
    GPUS,
    INFINITY_FABRIC_MI300,
    NVLINK3,
    NVLINK4,
    NVLINK5,
    PCIE_ALLREDUCE_LATENCY_S,
    PCIE_GEN4_X16,
    PCIE_GEN5_X16,
    resolve_gpu,
)

BASE = "memory=80GiB,bandwidth=3.35e12,bf16_flops=989.4e12"


def test_preset_figures_each_direction():
    # datasheet totals (both directions) halved: NVLink 3 600 GB/s, NVLink 4 900 GB/s, NVLink 5 1.8 TB/s,
    # Infinity Fabric 7 x 128 GB/s = 896 GB/s
    assert (NVLINK3, NVLINK4, NVLINK5, INFINITY_FABRIC_MI300) == (600e9 / 2, 900e9 / 2, 1.8e12 / 2, 7 * 128e9 / 2)
    want = {
        "a100-40gb": NVLINK3,
        "a100-80gb": NVLINK3,
        "h100-80gb": NVLINK4,
        "h100-pcie": PCIE_GEN5_X16,
        "h200": NVLINK4,
        "b200": NVLINK5,
        "gb200": NVLINK5,
        "mi300x": INFINITY_FABRIC_MI300,
        "mi325x": INFINITY_FABRIC_MI300,
        "l40s": PCIE_GEN4_X16,
        "l4": PCIE_GEN4_X16,
        "a10g": PCIE_GEN4_X16,
    }
    assert {name: g.interconnect_bandwidth for name, g in GPUS.items()} == want
    for name, g in GPUS.items():  # PCIe parts all-reduce through NCCL: a longer fixed latency
        pcie = g.interconnect_bandwidth in (PCIE_GEN4_X16, PCIE_GEN5_X16)
        assert g.allreduce_latency_s == (PCIE_ALLREDUCE_LATENCY_S if pcie else ALLREDUCE_LATENCY_S), name
    assert (ALLREDUCE_LATENCY_S, PCIE_ALLREDUCE_LATENCY_S) == (5e-6, 20e-6)


def test_toml_file_states_both(tmp_path):
    path = tmp_path / "pair.toml"
    path.write_text(
        'memory = "80GiB"\nhbm_bandwidth = 2e12\nbf16_flops = 756e12\n'
        'interconnect_bandwidth = "300GB/s"\nallreduce_latency = "8us"\n'
    )
    g = resolve_gpu(str(path))
    assert (g.interconnect_bandwidth, g.allreduce_latency_s) == (300e9, 8e-6)
    path.write_text('memory = "80GiB"\nhbm_bandwidth = 2e12\nbf16_flops = 756e12\nallreduce_latency = 0\n')
    g = resolve_gpu(str(path))  # latency 0 is allowed (a bandwidth-only model); no interconnect: None
    assert (g.interconnect_bandwidth, g.allreduce_latency_s) == (None, 0.0)
    path.write_text('memory = "80GiB"\nhbm_bandwidth = 2e12\nbf16_flops = 756e12\n')
    assert resolve_gpu(str(path)).allreduce_latency_s == ALLREDUCE_LATENCY_S  # the default


def test_dimension_string_states_both():
    g = resolve_gpu(BASE + ",interconnect_bandwidth=450e9,allreduce_latency=5us")
    assert (g.interconnect_bandwidth, g.allreduce_latency_s) == (450e9, 5e-6)
    g = resolve_gpu(BASE + ",interconnect_bandwidth=0.9TB/s,allreduce_latency=1.5e-5")
    assert (g.interconnect_bandwidth, g.allreduce_latency_s) == (0.9e12, 1.5e-5)
    assert resolve_gpu(BASE).interconnect_bandwidth is None


@pytest.mark.parametrize(
    "extra, reason",
    [
        ("interconnect_bandwidth=0", "interconnect_bandwidth must be a positive finite number"),
        ("interconnect_bandwidth=-450e9", "interconnect_bandwidth must be a positive finite number"),
        ("interconnect_bandwidth=fast", "cannot read interconnect_bandwidth"),
        ("interconnect_bandwidth=1e400", "interconnect_bandwidth must be a positive finite number"),
        ("allreduce_latency=-1us", "allreduce_latency must be a duration of 0 to 1 s"),
        ("allreduce_latency=2s", "allreduce_latency must be a duration of 0 to 1 s"),
        ("allreduce_latency=5parsecs", "cannot read allreduce_latency"),
        ("interconnect_bandwidth=1e9,interconnect_bandwidth=2e9", "given twice"),
    ],
)
def test_bad_dimensions(extra, reason):
    with pytest.raises(UserError, match=reason):
        resolve_gpu(f"{BASE},{extra}")


@pytest.mark.parametrize(
    "line, reason",
    [
        ("interconnect_bandwidth = 0", "interconnect_bandwidth must be a positive finite number"),
        ("interconnect_bandwidth = -1.0", "interconnect_bandwidth must be a positive finite number"),
        ("interconnect_bandwidth = true", "interconnect_bandwidth must be a positive number"),
        ("allreduce_latency = -5e-6", "allreduce_latency must be a duration of 0 to 1 s"),
        ("allreduce_latency = true", "allreduce_latency must be a duration"),
        ("allreduce_latency_s = 5e-6", "unknown key 'allreduce_latency_s'"),
    ],
)
def test_bad_toml(tmp_path, line, reason):
    path = tmp_path / "bad.toml"
    path.write_text(f'memory = "80GiB"\nhbm_bandwidth = 2e12\nbf16_flops = 756e12\n{line}\n')
    with pytest.raises(UserError, match=f"{path}: {reason}"):
        resolve_gpu(str(path))


def test_cli_exit_2_on_a_non_positive_interconnect(tmp_path, capsys, repo_root):
    path = tmp_path / "bad.toml"
    path.write_text('memory = "80GiB"\nhbm_bandwidth = 2e12\nbf16_flops = 756e12\ninterconnect_bandwidth = 0\n')
    trace = f"{repo_root}/traces/alpaca-2k.csv"
    assert main(["replay", trace, "--gpu", str(path), "-q", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "interconnect_bandwidth must be a positive finite number" in err and "Traceback" not in err


def test_gpus_json_lists_the_new_fields(capsys):
    assert main(["gpus", "--json"]) == 0
    by_name = {g["name"]: g for g in json.loads(capsys.readouterr().out)}
    assert by_name["h100-80gb"]["interconnect_bandwidth"] == 450e9
    assert by_name["h100-80gb"]["allreduce_latency_s"] == 5e-6
    assert by_name["l4"]["interconnect_bandwidth"] == 32e9
