"""GPU presets checked by hand against their datasheets, and GPUs given as a TOML file or as dimensions."""

import math

import pytest

from sim.cli.main import main
from sim.errors import UserError
from sim.hardware.gpus import GPUS, NVLINK_C2C, PCIE_GEN4_X16, PCIE_GEN5_X16, GpuSpec, resolve_gpu

GiB, MiB = 2**30, 2**20
TRACE = "arrival_s,prompt_tokens,output_tokens\n0,100,20\n0.5,200,10\n1.0,50,5\n"


def test_existing_presets_keep_their_figures():
    """Reports and tests depend on these: bit-identical to the figures every earlier run used."""
    assert (GPUS["a100-40gb"].memory_bytes, GPUS["a100-40gb"].hbm_bandwidth, GPUS["a100-40gb"].bf16_flops) == (
        40 * GiB,
        1.555e12,
        312e12,
    )
    assert (GPUS["a100-80gb"].memory_bytes, GPUS["a100-80gb"].hbm_bandwidth, GPUS["a100-80gb"].bf16_flops) == (
        80 * GiB,
        2.039e12,
        312e12,
    )
    # H100 SXM5 datasheet: 80GB HBM3, 3.35TB/s, BF16 1,979 TFLOPS with sparsity (989.4 dense, Hopper whitepaper)
    h100 = GPUS["h100-80gb"]
    assert (h100.memory_bytes, h100.hbm_bandwidth, h100.bf16_flops) == (80 * GiB, 3.35e12, 989.4e12)
    assert (GPUS["h200"].memory_bytes, GPUS["h200"].hbm_bandwidth, GPUS["h200"].bf16_flops) == (
        141 * 10**9,
        4.8e12,
        989.4e12,
    )
    assert (GPUS["l40s"].memory_bytes, GPUS["l40s"].hbm_bandwidth, GPUS["l40s"].bf16_flops) == (
        48 * 10**9,
        0.864e12,
        362.05e12,
    )
    for name, source in [
        ("a100-40gb", "NVIDIA A100 datasheet (SXM4 40GB)"),
        ("a100-80gb", "NVIDIA A100 datasheet (SXM4 80GB)"),
        ("h100-80gb", "NVIDIA H100 datasheet (SXM5)"),
        ("h200", "NVIDIA H200 datasheet (SXM)"),
        ("l40s", "NVIDIA L40S datasheet"),
    ]:
        assert GPUS[name].source == source


def test_hopper_fp8_and_host_links():
    # H100 SXM datasheet: FP8 3,958 TFLOPS with sparsity -> 1,978.9 dense; host: PCIe Gen5 x16, 64 GB/s each way
    assert GPUS["h100-80gb"].fp8_flops == 1978.9e12 and GPUS["h100-80gb"].host_link_bandwidth == 64e9
    assert GPUS["h200"].fp8_flops == 1978.9e12
    # H100 PCIe (Hopper whitepaper): 2TB/s HBM2e, 756 dense BF16 TFLOPS, 1,513 dense FP8 TFLOPS
    pcie = GPUS["h100-pcie"]
    assert (pcie.memory_bytes, pcie.hbm_bandwidth, pcie.bf16_flops, pcie.fp8_flops) == (
        80 * GiB,
        2.0e12,
        756e12,
        1513e12,
    )
    # Ampere has no fp8 tensor cores; the A100 SXM4 talks to the host over PCIe Gen4 x16 (32 GB/s each way)
    assert GPUS["a100-80gb"].fp8_flops is None and GPUS["a100-80gb"].host_link_bandwidth == 32e9


def test_b200_from_its_datasheet():
    # NVIDIA HGX B200 datasheet, 8 GPUs: FP16/BF16 Tensor Core 36 PFLOPS and FP8 72 PFLOPS, both with sparsity,
    # so 36 / 8 / 2 = 2.25 dense PFLOPS bf16 and 4.5 fp8 per GPU; 8 TB/s HBM3e per GPU; 180 GB, which nvidia-smi
    # shows as 183,359 MiB.
    b200 = GPUS["b200"]
    assert b200.bf16_flops == 36e15 / 8 / 2 == 2250e12
    assert b200.fp8_flops == 72e15 / 8 / 2 == 4500e12
    assert b200.hbm_bandwidth == 8e12
    assert b200.memory_bytes == 183359 * MiB
    assert b200.host_link_bandwidth == PCIE_GEN5_X16 == 64e9


def test_gb200_per_gpu():
    # GB200 NVL72 datasheet, 72 GPUs: 576 TB/s HBM3e, FP16/BF16 360 PFLOPS, FP8 720 PFLOPS with sparsity;
    # NVLink-C2C 900 GB/s both ways (450 GB/s each way) to the Grace CPU
    gb200 = GPUS["gb200"]
    assert gb200.hbm_bandwidth == pytest.approx(576e12 / 72)
    assert gb200.bf16_flops == pytest.approx(360e15 / 72 / 2)
    assert gb200.fp8_flops == pytest.approx(720e15 / 72 / 2)
    assert gb200.host_link_bandwidth == NVLINK_C2C == 450e9


def test_mi300x_from_its_datasheet():
    # AMD Instinct MI300X datasheet: 192 GB HBM3, 5.3 TB/s peak memory bandwidth, peak BF16 1,307.4 TFLOPS and
    # FP8 2,614.9 TFLOPS dense (2,614.9 / 5,229.8 with sparsity), PCIe Gen5 x16 (128 GB/s both ways)
    mi300x = GPUS["mi300x"]
    assert (mi300x.memory_bytes, mi300x.hbm_bandwidth, mi300x.bf16_flops, mi300x.fp8_flops) == (
        192 * GiB,
        5.3e12,
        1307.4e12,
        2614.9e12,
    )
    assert mi300x.host_link_bandwidth == 64e9
    # MI325X: the same compute die with 256 GB HBM3E at 6 TB/s
    assert (GPUS["mi325x"].memory_bytes, GPUS["mi325x"].hbm_bandwidth) == (256 * GiB, 6e12)
    assert GPUS["mi325x"].bf16_flops == mi300x.bf16_flops


def test_small_inference_gpus():
    # NVIDIA L4 datasheet: 24GB GDDR6 (nvidia-smi: 23,034 MiB), 300 GB/s, BF16 242 and FP8 485 TFLOPS with
    # sparsity, PCIe Gen4 x16
    l4 = GPUS["l4"]
    assert (l4.memory_bytes, l4.hbm_bandwidth, l4.bf16_flops, l4.fp8_flops) == (23034 * MiB, 300e9, 121e12, 242.5e12)
    assert l4.host_link_bandwidth == PCIE_GEN4_X16
    assert GPUS["l40s"].fp8_flops == 733e12  # L40S datasheet: FP8 1,466 TFLOPS with sparsity
    a10g = GPUS["a10g"]
    assert (a10g.memory_bytes, a10g.hbm_bandwidth, a10g.fp8_flops) == (23028 * MiB, 600e9, None)


@pytest.mark.parametrize("name", sorted(GPUS))
def test_every_preset_is_complete(name):
    g = GPUS[name]
    assert g.name == name == name.lower()
    assert "datasheet" in g.source or "AWS" in g.source
    assert g.memory_bytes > 0 and isinstance(g.memory_bytes, int)
    assert g.hbm_bandwidth > 0 and g.bf16_flops > 0
    assert g.fp8_flops is None or g.fp8_flops > g.bf16_flops
    assert g.host_link_bandwidth in (PCIE_GEN4_X16, PCIE_GEN5_X16, NVLINK_C2C)
    assert g.price_per_hour is None
    assert resolve_gpu(name) is g and resolve_gpu(name.upper()) is g


def test_presets_are_case_insensitive_and_h100_sxm_is_h100_80gb():
    assert resolve_gpu("H100-SXM") is GPUS["h100-80gb"]
    assert resolve_gpu("MI300X") is GPUS["mi300x"]
    with pytest.raises(UserError, match="unknown GPU 'h300'"):
        resolve_gpu("h300")


def test_toml_file(tmp_path):
    path = tmp_path / "my-h100.toml"
    path.write_text(
        'name = "my-h100"\nmemory = "80GiB"\nhbm_bandwidth = "3.35TB/s"\nbf16_flops = 989.4e12\n'
        'fp8_flops = 1978.9e12\nhost_link_bandwidth = "64GB/s"\nprice_per_hour = 2.5\nsource = "my notes"\n'
    )
    g = resolve_gpu(str(path))
    assert g == GpuSpec("my-h100", 80 * GiB, 3.35e12, 989.4e12, "my notes", 1978.9e12, 64e9, 2.5)
    # the same figures as the preset, so the KV budget and roofline are the preset's
    h100 = GPUS["h100-80gb"]
    assert (g.memory_bytes, g.hbm_bandwidth, g.bf16_flops) == (h100.memory_bytes, h100.hbm_bandwidth, h100.bf16_flops)


def test_toml_file_minimal_numbers_and_defaults(tmp_path):
    path = tmp_path / "lab-gpu.toml"
    path.write_text("memory = 25769803776\nhbm_bandwidth = 1e12\nbf16_flops = 1e14\n")
    g = resolve_gpu(str(path))
    assert (g.name, g.memory_bytes, g.hbm_bandwidth, g.bf16_flops) == ("lab-gpu", 24 * GiB, 1e12, 1e14)
    assert (g.fp8_flops, g.host_link_bandwidth, g.price_per_hour) == (None, None, None)
    assert g.source == f"file {path}"


def test_dimension_string():
    g = resolve_gpu("memory=80GiB,bandwidth=3.35e12,bf16_flops=989.4e12")
    assert (g.name, g.memory_bytes, g.hbm_bandwidth, g.bf16_flops, g.fp8_flops) == (
        "custom",
        80 * GiB,
        3.35e12,
        989.4e12,
        None,
    )
    g = resolve_gpu(
        "memory=141GB, bandwidth=4.8TB/s, bf16_flops=989.4TFLOP/s, fp8_flops=1978.9e12, host_link=64e9, "
        "price=3.5, name=rented-h200"
    )
    assert g == GpuSpec("rented-h200", 141 * 10**9, 4.8e12, 989.4e12, "command line", 1978.9e12, 64e9, 3.5)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("memory=80GiB,bandwidth=3.35e12", "missing bf16_flops"),
        ("memory=0GiB,bandwidth=3.35e12,bf16_flops=1e14", "memory must be a positive size"),
        ("memory=80GiB,bandwidth=-1,bf16_flops=1e14", "bandwidth must be a positive finite number, got '-1'"),
        ("memory=80GiB,bandwidth=0,bf16_flops=1e14", "bandwidth must be a positive finite number, got '0'"),
        ("memory=80GiB,bandwidth=fast,bf16_flops=1e14", "cannot read bandwidth 'fast'"),
        ("memory=80GiB,bandwidth=1e12,bf16_flops=1e14,colour=green", "unknown GPU dimension 'colour'"),
        ("memory=80GiB,memory=40GiB,bandwidth=1e12,bf16_flops=1e14", "memory is given twice"),
        ("memory=80GiB,bandwidth=1e12,bf16_flops=inf", "cannot read bf16_flops 'inf'"),
        ("memory=80GiB,bandwidth=1e12,bf16_flops=1e999", "bf16_flops must be a positive finite number"),
        ("memory=80GiB,bandwidth=1e12,bf16_flops=1e14,price=0", "price must be a positive finite number"),
    ],
)
def test_bad_dimension_strings(text, reason):
    with pytest.raises(UserError) as info:
        resolve_gpu(text)
    assert str(info.value).startswith(f"GPU dimensions {text!r}: ")
    assert reason in str(info.value)


BAD_FILES = [
    ('memory = "80GiB"\nhbm_bandwidth = "3.35TB/s"\n', "missing bf16_flops"),
    ('memory = "80GiB"\nhbm_bandwidth = "3.35TB/s"\nbf16_flops = 0\n', "bf16_flops must be a positive finite number"),
    ('memory = "80GiB"\nhbm_bandwidth = -3.35e12\nbf16_flops = 1e14\n', "hbm_bandwidth must be a positive finite"),
    ("memory = -1\nhbm_bandwidth = 1e12\nbf16_flops = 1e14\n", "memory must be a positive size"),
    ('memory = "lots"\nhbm_bandwidth = 1e12\nbf16_flops = 1e14\n', "cannot read memory 'lots'"),
    ('memory = "80GiB"\nhbm_bandwidth = 1e12\nbf16_flops = nan\n', "bf16_flops must be a positive finite number"),
    ('memory = "80GiB"\nhbm_bandwidth = 1e12\nbf16_flops = true\n', "bf16_flops must be a positive number"),
    ('memory = "80GiB"\nhbm_bandwidth = 1e12\nbf16_flops = 1e14\nfp8_flops = 0\n', "fp8_flops must be a positive"),
    ('memory = "80GiB"\nhbm_bandwidth = 1e12\nbf16_flops = 1e14\nbandwidth = 1\n', "unknown key 'bandwidth'"),
    ('memory = "80GiB"\nhbm_bandwidth = 1e12\nbf16_flops = 1e14\nname = ""\n', "name must be a non-empty string"),
    ("memory = \n", "not valid TOML"),
]


@pytest.mark.parametrize("text, reason", BAD_FILES)
def test_bad_toml_files_exit_2_with_file_and_reason(tmp_path, capsys, text, reason):
    gpu = tmp_path / "bad.toml"
    gpu.write_text(text)
    trace = tmp_path / "trace.csv"
    trace.write_text(TRACE)
    assert main(["replay", str(trace), "--gpu", str(gpu), "--out", str(tmp_path / "out"), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sim: error: {gpu}: ")
    assert reason in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_missing_toml_file_and_bad_dimensions_exit_2(tmp_path, capsys):
    trace = tmp_path / "trace.csv"
    trace.write_text(TRACE)
    missing = tmp_path / "nowhere.toml"
    assert main(["replay", str(trace), "--gpu", str(missing), "-q"]) == 2
    assert (
        capsys.readouterr().err.strip() == f"sim: error: {missing}: cannot read the GPU file: No such file or directory"
    )
    assert main(["replay", str(trace), "--gpu", "memory=80GiB,bandwidth=3.35e12", "-q"]) == 2
    err = capsys.readouterr().err
    assert "GPU dimensions 'memory=80GiB,bandwidth=3.35e12': missing bf16_flops" in err
    assert main(["replay", str(trace), "--gpu", "B300", "-q"]) == 2
    assert "unknown GPU 'B300'" in capsys.readouterr().err


def test_replay_on_a_toml_gpu_matches_the_preset(tmp_path, capsys):
    """A TOML file with the preset's figures gives the preset's KV budget and results."""
    trace = tmp_path / "trace.csv"
    trace.write_text(TRACE)
    gpu = tmp_path / "h100.toml"
    gpu.write_text('name = "h100-80gb"\nmemory = "80GiB"\nhbm_bandwidth = 3.35e12\nbf16_flops = 989.4e12\n')
    summaries = []
    for i, choice in enumerate([str(gpu), "H100-SXM"]):
        out = tmp_path / f"out{i}"
        assert main(["replay", str(trace), "--gpu", choice, "--out", str(out), "-q"]) == 0
        printed = capsys.readouterr().out
        summaries.append([line for line in printed.splitlines() if line.startswith(("KV ", "duration", "ttft"))])
    assert summaries[0] == summaries[1] and summaries[0]


def test_json_numbers_are_finite():
    for g in GPUS.values():
        for value in (g.hbm_bandwidth, g.bf16_flops, g.fp8_flops or 1.0, g.host_link_bandwidth or 1.0):
            assert math.isfinite(value)
