"""Catalog, KV-cache capacity and cold start of the engine model (serving/hardware.py)."""

import pytest

from serving.hardware import (
    GPUS,
    MODELS,
    UnknownHardware,
    check_deployment,
    cold_start_s,
    gpu_spec,
    kv_block_capacity,
    model_spec,
)


def test_catalog_numbers_from_profiles():
    assert {"A100", "H100", "H200"} <= set(GPUS)
    assert {"llama-3-8b", "llama-3-70b"} <= set(MODELS)
    assert gpu_spec("H100").hbm_tb_s == 3.35
    assert gpu_spec("H200").memory_gib == 141.0
    assert gpu_spec("A100").bf16_tflops == 312.0
    assert model_spec("llama-3-70b").layers == 80


def test_unknown_gpu_message_is_one_line():
    with pytest.raises(UnknownHardware) as e:
        gpu_spec("V100")
    assert str(e.value) == "unknown GPU 'V100' (known: A100, H100, H200)"
    assert isinstance(e.value, ValueError)
    with pytest.raises(UnknownHardware, match="unknown model 'gpt-5'"):
        model_spec("gpt-5")


def test_kv_capacity_8b_h100_matches_vllm_order():
    # vLLM logs ~450k tokens of KV cache for Llama-3-8B on one H100 at 0.9 utilisation:
    # (72 GiB usable - 15 GiB weights - ~2 GiB reserve) / 128 KiB per token.
    blocks = kv_block_capacity("llama-3-8b", "H100", 1)
    assert 26_000 < blocks < 30_000
    big = kv_block_capacity("llama-3-8b", "H100", 1, block_size=32)
    assert big == pytest.approx(blocks / 2, abs=1)
    assert kv_block_capacity("llama-3-8b", "H100", 1, gpu_memory_utilization=0.8) < blocks
    assert kv_block_capacity("llama-3-8b", "H200", 1) > 1.9 * blocks


def test_kv_capacity_70b_grows_with_tp():
    tp4 = kv_block_capacity("llama-3-70b", "H100", 4)
    tp8 = kv_block_capacity("llama-3-70b", "H100", 8)
    assert 20_000 < tp4 < 40_000
    assert tp8 > 2 * tp4  # half the weights per GPU and half the KV heads per GPU


def test_deployment_errors():
    with pytest.raises(UnknownHardware, match="does not fit on 1xH100"):
        kv_block_capacity("llama-3-70b", "H100", 1)
    with pytest.raises(UnknownHardware, match="tensor-parallel degree 3"):
        kv_block_capacity("llama-3-8b", "H100", 3)
    with pytest.raises(UnknownHardware, match="no step-time profile"):
        check_deployment("llama-3-8b", "H100", 2, profiled=True)
    check_deployment("llama-3-8b", "H100", 2)  # runs in vLLM, just not profiled


def test_cold_start():
    small = cold_start_s("llama-3-8b", "H100", 1)
    assert 20 < small < 30  # 16 GB at 4 GB/s + 20 s init
    assert cold_start_s("llama-3-8b", "H100", 1, load_gb_s=1.0) > small + 10
    assert cold_start_s("llama-3-70b", "H100", 8) < cold_start_s("llama-3-70b", "H100", 4)
