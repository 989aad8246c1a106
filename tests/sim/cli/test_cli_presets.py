"""`sim gpus` and `sim models`: the text tables and their --json form."""

import json

from sim.cli.main import main
from sim.hardware.gpus import GPUS
from sim.hardware.models import MODELS

GPU_KEYS = {
    "name",
    "memory_bytes",
    "hbm_bandwidth",
    "bf16_flops",
    "fp8_flops",
    "host_link_bandwidth",
    "price_per_hour",
    "source",
    "aliases",
}


def test_gpus_json(capsys):
    assert main(["gpus", "--json"]) == 0
    gpus = json.loads(capsys.readouterr().out)
    assert [g["name"] for g in gpus] == list(GPUS)
    for g in gpus:
        assert GPU_KEYS <= set(g)
    by_name = {g["name"]: g for g in gpus}
    h100 = by_name["h100-80gb"]
    assert (h100["memory_bytes"], h100["hbm_bandwidth"], h100["bf16_flops"]) == (80 * 2**30, 3.35e12, 989.4e12)
    assert h100["fp8_flops"] == 1978.9e12 and h100["host_link_bandwidth"] == 64e9 and h100["price_per_hour"] is None
    assert h100["aliases"] == ["h100-sxm"]
    assert by_name["a100-80gb"]["fp8_flops"] is None
    assert by_name["b200"]["bf16_flops"] == 2250e12


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    models = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in models] == list(MODELS)
    opt = next(m for m in models if m["name"] == "opt-13b")
    for key in ("num_layers", "hidden_size", "num_q_heads", "num_kv_heads", "head_size", "intermediate_size"):
        assert key in opt
    assert opt["num_layers"] == 40 and opt["kv_bytes_per_token"] == 819_200 and opt["source"] == "facebook/opt-13b"


def test_gpus_text_keeps_its_columns_and_adds_fp8_host_link_and_price(capsys):
    assert main(["gpus"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header[:4] == ["name", "memory", "HBM", "TB/s"]
    assert "fp8" in header and "host" in header and "$/hour" in header
    h100 = next(line for line in lines if line.startswith("h100-80gb "))
    assert h100.split()[:9] == ["h100-80gb", "80.00", "GiB", "3.350", "989.4", "1978.9", "64", "-", "NVIDIA"]
    a100 = next(line for line in lines if line.startswith("a100-40gb "))
    assert a100.split()[:8] == ["a100-40gb", "40.00", "GiB", "1.555", "312.0", "-", "32", "-"]
    assert "aliases: h100-sxm = h100-80gb" in lines
    assert main(["models"]) == 0
    assert "819,200" in capsys.readouterr().out
