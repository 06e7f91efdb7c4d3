"""conf/hardware tables: parsing, selection by name and by device name, unknown devices."""

from __future__ import annotations

import pytest

from pytest_dsocr.errors import DsocrError
from pytest_dsocr.hardware import (
    PEAK_KEYS,
    get_hardware,
    hardware_names,
    load_hardware_table,
    match_device,
    select_hardware,
)

REQUIRED = {"h100_sxm", "h100_pcie", "h200", "a100_sxm_40gb", "a100_sxm_80gb", "l40s", "rtx_4090", "rtx_5090"}


def test_table_has_the_required_gpus_with_sane_numbers():
    table = load_hardware_table()
    assert REQUIRED <= set(table)
    for hw in table.values():
        assert set(hw.peak_tflops) == set(PEAK_KEYS)
        # dense tensor-core half precision beats plain FP32 and TF32; bandwidth in GB/s
        assert hw.peak_tflops["bf16"] >= hw.peak_tflops["tf32"] >= hw.peak_tflops["fp32"] * 0.99 > 0
        assert 500 < hw.memory_bandwidth_gb_s < 10_000 and hw.memory_gb > 0


def test_every_table_cites_a_vendor_source():
    for hw in load_hardware_table().values():
        text = open(hw.source, encoding="utf-8").read()
        assert "Source: NVIDIA" in text and "nvidia.com" in text, hw.source


def test_by_name():
    hw = get_hardware("h100_sxm")
    assert hw.peak_flops("bfloat16") == 989.5e12 and hw.bandwidth == 3350e9
    assert hw.peak_flops("float32") == 67e12 and hw.peak_flops("tf32") == 494.5e12
    choice = select_hardware("a100_sxm_80gb", device_name=None)
    assert choice.hardware.name == "a100_sxm_80gb" and "hardware.name" in choice.reason


@pytest.mark.parametrize("device, name", [
    ("NVIDIA H100 80GB HBM3", "h100_sxm"),
    ("NVIDIA H100 PCIe", "h100_pcie"),
    ("NVIDIA H100 NVL", "h100_nvl"),
    ("NVIDIA H200", "h200"),
    ("NVIDIA H200 NVL", "h200_nvl"),  # the longer rule wins over "H200"
    ("NVIDIA A100-SXM4-80GB", "a100_sxm_80gb"),
    ("NVIDIA A100-SXM4-40GB", "a100_sxm_40gb"),
    ("NVIDIA L40S", "l40s"),
    ("NVIDIA GeForce RTX 4090", "rtx_4090"),
    ("NVIDIA GeForce RTX 5090", "rtx_5090"),
])
def test_by_device_name(device, name):
    assert match_device(device).name == name
    choice = select_hardware(None, device_name=device)
    assert choice.hardware.name == name and choice.device_name == device


@pytest.mark.parametrize("device", ["NVIDIA A100 80GB PCIe", "NVIDIA L40", "Tesla T4"])
def test_unknown_device_is_omitted_with_reason(device):
    choice = select_hardware(None, device_name=device)
    assert choice.hardware is None
    assert device in choice.reason and "hardware.name" in choice.reason


def test_cpu_is_omitted_with_reason():
    choice = select_hardware(None, device_name=None)
    assert choice.hardware is None and "no CUDA device" in choice.reason


def test_unknown_name_lists_known_names():
    with pytest.raises(DsocrError) as err:
        select_hardware("h1000", device_name=None)
    message = str(err.value)
    assert "hardware.name='h1000'" in message
    assert all(name in message for name in hardware_names())


def test_bad_table_names_the_file(tmp_path):
    (tmp_path / "broken.yaml").write_text("display_name: X\nmatch: [X]\npeak_tflops: {bf16: 1}\n")
    with pytest.raises(DsocrError, match=r"broken\.yaml lacks memory_bandwidth_gb_s.*peak_tflops\.fp16"):
        load_hardware_table(tmp_path)


def test_unknown_dtype_names_it():
    with pytest.raises(DsocrError, match="int8"):
        get_hardware("l40s").peak_flops("int8")
