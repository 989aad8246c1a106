"""GPUs: `GpuSpec` (one GPU's datasheet figures), the presets in `GPUS`, and `resolve_gpu`, which also reads a GPU
from a TOML file (`--gpu my-gpu.toml`) or from dimensions (`--gpu memory=80GiB,bandwidth=3.35e12,bf16_flops=989e12`).
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import asdict, dataclass

from sim.errors import UserError
from sim.units import GiB, parse_size

MiB = 2**20

# GPU <-> host links, bytes/s in each direction (nominal: 16 lanes x 2 or 4 GB/s; the 128b/130b encoding leaves
# about 31.5 and 63 GB/s). NVLink-C2C joins Grace and Blackwell in a GB200 superchip: 900 GB/s both ways together.
PCIE_GEN4_X16 = 32e9
PCIE_GEN5_X16 = 64e9
NVLINK_C2C = 450e9

# GPU <-> GPU links (what tensor parallelism's all-reduce runs over), bytes/s one GPU can send to its peers in each
# direction: half the "total" (both directions) figure the datasheets give. NVLink 3 (A100 SXM4): 12 links, 600 GB/s;
# NVLink 4 (H100/H200 SXM5): 18 links, 900 GB/s; NVLink 5 (B200, GB200): 18 links, 1.8 TB/s. AMD Infinity Fabric
# (MI300X, MI325X datasheets): 7 links of 128 GB/s (both directions) to the 7 peers of an 8-GPU platform, 896 GB/s; a
# GPU reaches the full figure only with all 7 peers (tp 8): at tp 2 a ring runs over one link (64 GB/s each way), so
# give a smaller interconnect_bandwidth for such runs. GPUs without NVLink use their PCIe link (constants above).
NVLINK3 = 300e9
NVLINK4 = 450e9
NVLINK5 = 900e9
INFINITY_FABRIC_MI300 = 448e9

# Fixed time of one all-reduce (launch, synchronisation, the hops of a small message), seconds. Estimates, not
# measurements: vLLM's custom all-reduce (one-shot over NVLink peer memory inside CUDA graphs, vllm-project/vllm#2192)
# finishes the small messages of a decode step in a few microseconds on NVLink / Infinity Fabric; over PCIe vLLM uses
# NCCL (its custom all-reduce is off for more than two PCIe GPUs), whose small-message all-reduce takes tens of
# microseconds (nccl-tests all_reduce_perf at 8 bytes). Calibrate on your GPUs or give allreduce_latency to override.
ALLREDUCE_LATENCY_S = 5e-6
PCIE_ALLREDUCE_LATENCY_S = 20e-6


@dataclass(frozen=True)
class GpuSpec:
    """One GPU's datasheet figures. FLOP/s are dense tensor-core figures (no 2:4 sparsity)."""

    name: str
    memory_bytes: int  # device memory, bytes
    hbm_bandwidth: float  # bytes / s
    bf16_flops: float  # dense bf16 tensor FLOP / s
    source: str = ""
    fp8_flops: float | None = None  # dense fp8 tensor FLOP / s; None: no fp8 tensor cores (A100, A10G)
    host_link_bandwidth: float | None = None  # GPU <-> host, bytes / s in each direction; None: not known
    price_per_hour: float | None = None  # price of one GPU-hour (USD), when given
    # GPU <-> GPU (NVLink, Infinity Fabric, else PCIe), bytes / s one GPU sends to its peers in each direction: prices
    # tensor parallelism's all-reduce (sim.cost.roofline); None: not known (a run with --tp > 1 then needs one)
    interconnect_bandwidth: float | None = None
    allreduce_latency_s: float = ALLREDUCE_LATENCY_S  # fixed time of one all-reduce, seconds

    def to_dict(self) -> dict:
        """Every field, for JSON."""
        return asdict(self)


# Vendor datasheets: dense (no sparsity) tensor throughput, peak memory bandwidth; where a datasheet gives only
# figures with sparsity they are halved. Memory: the first five as they always were (A100 and H100 as the driver
# reports the A100's, H200 and L40S as the datasheet's GB); the others as nvidia-smi reports them where that was
# found (B200, GB200, L4, A10G), else the datasheet's GB read as GiB (MI300X, MI325X: 8 HBM stacks of 24 and 32 GiB;
# H100 PCIe: as the H100 SXM).
GPUS: dict[str, GpuSpec] = {
    g.name: g
    for g in (
        # NVLink 3: 600 GB/s (A100 datasheet, SXM4)
        GpuSpec(
            "a100-40gb",
            40 * GiB,
            1.555e12,
            312e12,
            "NVIDIA A100 datasheet (SXM4 40GB)",
            None,
            PCIE_GEN4_X16,
            interconnect_bandwidth=NVLINK3,
        ),
        GpuSpec(
            "a100-80gb",
            80 * GiB,
            2.039e12,
            312e12,
            "NVIDIA A100 datasheet (SXM4 80GB)",
            None,
            PCIE_GEN4_X16,
            interconnect_bandwidth=NVLINK3,
        ),
        # fp8: 3,958 TFLOPS with sparsity; NVLink 4: 900 GB/s
        GpuSpec(
            "h100-80gb",
            80 * GiB,
            3.35e12,
            989.4e12,
            "NVIDIA H100 datasheet (SXM5)",
            1978.9e12,
            PCIE_GEN5_X16,
            interconnect_bandwidth=NVLINK4,
        ),
        # Hopper whitepaper: H100 PCIe 756 / 1,513 dense bf16 / fp8 TFLOPS (datasheet: 1,513 / 3,026 with sparsity).
        # GPU <-> GPU over PCIe Gen5 x16 (128 GB/s both ways): the datasheet's 600 GB/s NVLink needs NVLink bridges,
        # which join pairs only; for tp 2 on bridged pairs give interconnect_bandwidth=300e9.
        GpuSpec(
            "h100-pcie",
            80 * GiB,
            2.0e12,
            756e12,
            "NVIDIA H100 datasheet (PCIe 80GB, 2TB/s) and Hopper whitepaper (756 dense bf16 TFLOPS), "
            "https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet",
            1513e12,
            PCIE_GEN5_X16,
            interconnect_bandwidth=PCIE_GEN5_X16,
            allreduce_latency_s=PCIE_ALLREDUCE_LATENCY_S,
        ),
        # NVLink 4: 900 GB/s
        GpuSpec(
            "h200",
            141 * 10**9,
            4.8e12,
            989.4e12,
            "NVIDIA H200 datasheet (SXM)",
            1978.9e12,
            PCIE_GEN5_X16,
            interconnect_bandwidth=NVLINK4,
        ),
        # HGX B200: FP16/BF16 36 PFLOPS, FP8 72 PFLOPS for 8 GPUs with sparsity; 180 GB and 8 TB/s per GPU; NVLink 5:
        # 1.8 TB/s per GPU
        GpuSpec(
            "b200",
            183359 * MiB,
            8e12,
            2250e12,
            "NVIDIA HGX B200 datasheet (per GPU; 180GB HBM3e, driver reports 183,359 MiB), "
            "https://www.nvidia.com/en-us/data-center/hgx/",
            4500e12,
            PCIE_GEN5_X16,
            interconnect_bandwidth=NVLINK5,
        ),
        # GB200 NVL72: 72 GPUs, 13.4 TB HBM3e, 576 TB/s, FP16/BF16 360 PFLOPS, FP8 720 PFLOPS with sparsity; NVLink 5:
        # 130 TB/s for 72 GPUs, 1.8 TB/s each
        GpuSpec(
            "gb200",
            189471 * MiB,
            8e12,
            2500e12,
            "NVIDIA GB200 NVL72 datasheet (per GPU, 1/72; 186GB HBM3e, driver reports 189,471 MiB; NVLink-C2C to "
            "Grace), https://www.nvidia.com/en-us/data-center/gb200-nvl72/",
            5000e12,
            NVLINK_C2C,
            interconnect_bandwidth=NVLINK5,
        ),
        # Infinity Fabric: 7 links x 128 GB/s (see INFINITY_FABRIC_MI300)
        GpuSpec(
            "mi300x",
            192 * GiB,
            5.3e12,
            1307.4e12,
            "AMD Instinct MI300X datasheet (192GB HBM3, 5.3TB/s, PCIe Gen5 x16, 7 Infinity Fabric links of 128GB/s), "
            "https://www.amd.com/en/products/accelerators/instinct/mi300/mi300x.html",
            2614.9e12,
            PCIE_GEN5_X16,
            interconnect_bandwidth=INFINITY_FABRIC_MI300,
        ),
        GpuSpec(
            "mi325x",
            256 * GiB,
            6.0e12,
            1307.4e12,
            "AMD Instinct MI325X datasheet (256GB HBM3E, 6TB/s, PCIe Gen5 x16, 7 Infinity Fabric links of 128GB/s), "
            "https://www.amd.com/en/products/accelerators/instinct/mi300/mi325x.html",
            2614.9e12,
            PCIE_GEN5_X16,
            interconnect_bandwidth=INFINITY_FABRIC_MI300,
        ),
        # fp8: 1,466 TFLOPS with sparsity; no NVLink: GPU <-> GPU over PCIe Gen4 x16 (64 GB/s both ways)
        GpuSpec(
            "l40s",
            48 * 10**9,
            0.864e12,
            362.05e12,
            "NVIDIA L40S datasheet",
            733e12,
            PCIE_GEN4_X16,
            interconnect_bandwidth=PCIE_GEN4_X16,
            allreduce_latency_s=PCIE_ALLREDUCE_LATENCY_S,
        ),
        # L4 datasheet: BF16 242, FP8 485 TFLOPS with sparsity; no NVLink: PCIe Gen4 x16 (64 GB/s both ways)
        GpuSpec(
            "l4",
            23034 * MiB,
            300e9,
            121e12,
            "NVIDIA L4 datasheet (24GB GDDR6, driver reports 23,034 MiB), https://www.nvidia.com/en-us/data-center/l4/",
            242.5e12,
            PCIE_GEN4_X16,
            interconnect_bandwidth=PCIE_GEN4_X16,
            allreduce_latency_s=PCIE_ALLREDUCE_LATENCY_S,
        ),
        # No NVIDIA datasheet for the A10G (an AWS part): 70 dense bf16 TFLOPS is the commonly cited figure (the A10's
        # datasheet gives 125); 600 GB/s as the A10. No NVLink (as the A10): GPU <-> GPU over PCIe Gen4 x16.
        GpuSpec(
            "a10g",
            23028 * MiB,
            600e9,
            70e12,
            "AWS EC2 G5 (NVIDIA A10G, 24GB GDDR6, driver reports 23,028 MiB; bf16 as commonly cited, no NVIDIA "
            "datasheet), https://aws.amazon.com/ec2/instance-types/g5/",
            None,
            PCIE_GEN4_X16,
            interconnect_bandwidth=PCIE_GEN4_X16,
            allreduce_latency_s=PCIE_ALLREDUCE_LATENCY_S,
        ),
    )
}

# Other names of presets (lower case).
GPU_ALIASES: dict[str, str] = {"h100-sxm": "h100-80gb"}

# What a GPU given by dimensions or a TOML file may state, by key; the first three are required.
TOML_KEYS = (
    "name",
    "memory",
    "hbm_bandwidth",
    "bf16_flops",
    "fp8_flops",
    "host_link_bandwidth",
    "price_per_hour",
    "interconnect_bandwidth",
    "allreduce_latency",
    "source",
)
DIM_KEYS = {  # dimension string key -> TOML key
    "memory": "memory",
    "bandwidth": "hbm_bandwidth",
    "bf16_flops": "bf16_flops",
    "fp8_flops": "fp8_flops",
    "host_link": "host_link_bandwidth",
    "price": "price_per_hour",
    "interconnect_bandwidth": "interconnect_bandwidth",
    "allreduce_latency": "allreduce_latency",
    "name": "name",
}
REQUIRED = ("memory", "hbm_bandwidth", "bf16_flops")
DIMS_HELP = (
    "memory=80GiB,bandwidth=3.35e12,bf16_flops=989e12[,fp8_flops=..,host_link=..,price=..,interconnect_bandwidth=..,"
    "allreduce_latency=..,name=..]"
)
# Bounds: memory at most 1 EiB, rates and the price finite.
MAX_MEMORY = 2**60


def resolve_gpu(name: str) -> GpuSpec:
    """A preset (case-insensitive), dimensions 'memory=80GiB,bandwidth=3.35e12,bf16_flops=989e12[,...]', or a TOML
    file (a name ending in .toml)."""
    key = name.lower()
    key = GPU_ALIASES.get(key, key)
    if key in GPUS:
        return GPUS[key]
    if "=" in name:
        return _gpu_from_dims(name)
    if name.lower().endswith(".toml"):
        return gpu_from_toml(name)
    raise UserError(
        f"unknown GPU {name!r}; presets: {', '.join(GPUS)} (or {', '.join(GPU_ALIASES)}), a TOML file (NAME.toml) "
        f"or dimensions: {DIMS_HELP}"
    )


def gpu_from_toml(path: str) -> GpuSpec:
    """A GPU described by a TOML file; every error is a UserError 'path: reason'."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise UserError(f"{path}: cannot read the GPU file: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    try:
        unknown = [k for k in data if k not in TOML_KEYS]
        if unknown:
            raise UserError(f"unknown key {unknown[0]!r}; known: {', '.join(TOML_KEYS)}")
        stem = os.path.splitext(os.path.basename(path))[0] or "custom"
        return _gpu_from_values(data, default_name=stem, default_source=f"file {path}")
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None


def _gpu_from_dims(text: str) -> GpuSpec:
    shown = repr(text) if len(text) <= 80 else f"{text[:60]!r}... ({len(text):,} characters)"
    try:
        values: dict[str, object] = {}
        for item in text.split(","):
            key, _, raw = item.partition("=")
            key, raw = key.strip(), raw.strip()
            if key not in DIM_KEYS:
                raise UserError(f"unknown GPU dimension {key!r}; known: {', '.join(DIM_KEYS)}")
            if DIM_KEYS[key] in values:
                raise UserError(f"GPU dimension {key} is given twice")
            values[DIM_KEYS[key]] = raw
        return _gpu_from_values(values, default_name="custom", default_source="command line", dims=True)
    except UserError as exc:
        raise UserError(f"GPU dimensions {shown}: {exc}") from None


def _gpu_from_values(values: dict, default_name: str, default_source: str, dims: bool = False) -> GpuSpec:
    """The GpuSpec of checked values (TOML keys; a dimension string's values are strings)."""
    label = {v: k for k, v in DIM_KEYS.items()} if dims else {k: k for k in TOML_KEYS}
    missing = [label[k] for k in REQUIRED if k not in values]
    if missing:
        raise UserError(f"missing {', '.join(missing)} (a GPU needs memory, {label['hbm_bandwidth']} and bf16_flops)")

    def text(key: str, default: str) -> str:
        if key not in values:
            return default
        value = values[key]
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{label[key]} must be a non-empty string, got {value!r}")
        return value.strip()

    def optional(key: str, parse):
        return parse(label[key], values[key]) if key in values else None

    return GpuSpec(
        name=text("name", default_name),
        memory_bytes=_memory(label["memory"], values["memory"]),
        hbm_bandwidth=_bandwidth(label["hbm_bandwidth"], values["hbm_bandwidth"]),
        bf16_flops=_flops(label["bf16_flops"], values["bf16_flops"]),
        source=text("source", default_source) if not dims else default_source,
        fp8_flops=optional("fp8_flops", _flops),
        host_link_bandwidth=optional("host_link_bandwidth", _bandwidth),
        price_per_hour=optional("price_per_hour", _price),
        interconnect_bandwidth=optional("interconnect_bandwidth", _bandwidth),
        allreduce_latency_s=(
            _latency(label["allreduce_latency"], values["allreduce_latency"])
            if "allreduce_latency" in values
            else ALLREDUCE_LATENCY_S
        ),
    )


_NUMBER = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z/]*)\s*$", re.IGNORECASE)
_SI = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "p": 1e15}


def _read_number(key: str, value, units: dict[str, float], example: str, divide: bool = False) -> float:
    """A TOML number, or a string of a number with one of `units` (lower case): multiplied by the unit's factor, or
    divided by it when `divide` (so that 5us is 5 / 1e6 exactly as written). Range checks are the caller's."""
    if isinstance(value, bool):
        raise UserError(f"{key} must be a number, e.g. {example}, got {value!r}")
    if isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:  # an integer beyond any float
            return math.inf
    m = _NUMBER.match(str(value))
    unit = m.group(2).lower() if m else None
    if not m or unit not in units:
        raise UserError(f"cannot read {key} {value!r}: expected a number, e.g. {example}")
    return float(m.group(1)) / units[unit] if divide else float(m.group(1)) * units[unit]


def _number(key: str, value, units: dict[str, float], example: str) -> float:
    """A positive finite number: a TOML number, or a string of a number with one of `units` (lower case)."""
    if isinstance(value, bool):
        raise UserError(f"{key} must be a positive number, e.g. {example}, got {value!r}")
    number = _read_number(key, value, units, example)
    if not (number > 0 and math.isfinite(number)):  # nan fails too
        raise UserError(f"{key} must be a positive finite number, got {value!r}")
    return number


def _memory(key: str, value) -> int:
    """Bytes: a size string (80GiB, 141GB, 85899345920) or a TOML number of bytes."""
    if isinstance(value, str):
        try:
            number = parse_size(value)
        except UserError:
            raise UserError(f"cannot read {key} {value!r}: expected a size such as 80GiB or 141GB") from None
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        number = int(round(_number(key, value, {"": 1.0}, "80GiB")))
    if not 1 <= number <= MAX_MEMORY:
        raise UserError(f"{key} must be a positive size of at most 1 EiB, got {value!r}")
    return number


# Units of a bandwidth string (lower case): 3.35TB/s, 3350GB/s, 3.35e12 (B/s), 2000GiB/s.
_BANDWIDTH_UNITS = {
    "": 1.0,
    **{f"{p}b/s": f for p, f in _SI.items()},
    **{f"{p}ib/s": float(2 ** (10 * i)) for i, p in enumerate(("", "k", "m", "g", "t")) if p},
}
_FLOPS_UNITS = {"": 1.0, **{f"{p}flop/s": f for p, f in _SI.items()}, **{f"{p}flops": f for p, f in _SI.items()}}


def _bandwidth(key: str, value) -> float:
    return _number(key, value, _BANDWIDTH_UNITS, "3.35TB/s or 3.35e12")


def _flops(key: str, value) -> float:
    return _number(key, value, _FLOPS_UNITS, "989.4e12 or 989.4TFLOP/s")


# Units of a latency string (lower case), as divisors of seconds (5us is 5 / 1e6 = 5e-6 exactly as written): 5us,
# 0.005ms, 5e-6 (s).
_TIME_UNITS = {"": 1.0, "s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}
MAX_ALLREDUCE_LATENCY_S = 1.0


def _latency(key: str, value) -> float:
    """Seconds in [0, 1]: a TOML number of seconds, or a string of a number with a unit (5us, 0.01ms, 5e-6)."""
    if isinstance(value, bool):
        raise UserError(f"{key} must be a duration, e.g. 5us or 5e-6 (seconds), got {value!r}")
    try:
        number = _read_number(key, value, _TIME_UNITS, "5us or 5e-6 (seconds)", divide=True)
    except UserError:
        raise UserError(f"cannot read {key} {value!r}: expected a duration, e.g. 5us or 5e-6 (seconds)") from None
    if not 0 <= number <= MAX_ALLREDUCE_LATENCY_S:  # nan fails too
        raise UserError(f"{key} must be a duration of 0 to {MAX_ALLREDUCE_LATENCY_S:g} s, got {value!r}")
    return number


def _price(key: str, value) -> float:
    return _number(key, value, {"": 1.0}, "2.50")
