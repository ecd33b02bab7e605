"""Gradient checkpointing `auto` decided from given memory figures (core.training.memory_plan), and what an
out-of-memory step tells the user. Pure functions: every card class is a set of numbers here."""

import pytest

from core.training import memory_plan as mp

GIB = 2 ** 30
# Measured on an H200 (bench/RESULTS.md, bf16, batch 1): step peak minus the bf16 weights
MEASURED_ACTIVATIONS_GIB = {("sdxl", 1024): 13.0 - 6.46, ("sd1", 512): 3.07 - 1.99}
WEIGHTS_GIB = {"sdxl": 6.46, "sd1": 1.99}  # bf16 frozen weights, loaded before the decision


def _free_after_load(card_gib: float, family: str, context_gib: float = 0.5, other_gib: float = 0.0) -> int:
    """Free bytes a card of `card_gib` shows once the model is loaded (driver context and other programs taken)."""
    return int((card_gib - context_gib - other_gib - WEIGHTS_GIB[family]) * GIB)


def _choose(free, family="sdxl", size=1024, batch=1, precision="bf16", pref="auto", device="cuda", previews=True):
    return mp.choose_checkpointing(pref, device_type=device, family=family, width=size, height=size, batch=batch,
                                   precision=precision, free_bytes=free, previews=previews)


def test_on_and_off_force_it_whatever_the_memory():
    assert _choose(1 * GIB, pref="off").on is False
    assert _choose(500 * GIB, pref="on").on is True
    assert "gradient_checkpointing = on" in _choose(None, pref="on").reason


@pytest.mark.parametrize("device", ["cpu", "mps"])
def test_auto_is_off_off_cuda(device):
    choice = _choose(None, device=device)
    assert choice.on is False and device in choice.reason


def test_an_80_gib_card_trains_sdxl_1024_without_it():
    choice = _choose(_free_after_load(80, "sdxl"))
    assert choice.on is False
    assert choice.reason.startswith("auto: off") and "GiB are free" in choice.reason
    assert choice.need_without_gib is not None and choice.free_gib > choice.need_without_gib


def test_the_model_is_conservative_against_the_measured_peaks():
    """The modelled need is at least 1.5x the measured activations (plus reserve and preview room), for both
    measured points, so a card it calls big enough has room to spare."""
    for (family, size), measured in MEASURED_ACTIVATIONS_GIB.items():
        modelled = mp.activation_bytes(family, size, size, 1, "bf16", False) / GIB
        assert modelled >= 1.5 * measured, (family, modelled, measured)
        need = mp.step_need_bytes(family, size, size, 1, "bf16", False) / GIB
        assert need >= modelled + mp.RESERVE_GIB


@pytest.mark.parametrize("other_gib", [0.0, 0.5, 1.0, 1.5, 3.0])
def test_a_24_gib_card_at_sdxl_1024_batch_1_always_has_room(other_gib):
    """Whatever a 24 GiB card has free (a desktop may hold some of it), either checkpointing is on, or the
    measured activations plus a preview fit with at least 3 GiB to spare."""
    free = _free_after_load(24, "sdxl", other_gib=other_gib)
    choice = _choose(free)
    if not choice.on:
        preview = mp.PREVIEW_GIB_PER_MEGAPIXEL * 1024 * 1024 / 1e6
        spare = free / GIB - MEASURED_ACTIVATIONS_GIB[("sdxl", 1024)] - preview
        assert spare >= 3.0, (other_gib, spare, choice.reason)
    else:
        assert choice.reason.startswith("auto: on") and "only" in choice.reason


def test_smaller_cards_and_bigger_batches_turn_it_on():
    assert _choose(_free_after_load(16, "sdxl")).on is True
    assert _choose(_free_after_load(12, "sd1"), family="sd1", size=512).on is False  # SD1.5 at 512 fits a 12 GiB card
    assert _choose(_free_after_load(12, "sd1"), family="sd1", size=512, batch=8).on is True
    assert _choose(_free_after_load(24, "sd1"), family="sd1", size=512, batch=8).on is False


def test_fp32_needs_twice_the_activations_and_unknown_memory_counts_as_tight():
    assert mp.activation_bytes("sd1", 512, 512, 1, "fp32", False) == 2 * mp.activation_bytes("sd1", 512, 512, 1,
                                                                                            "bf16", False)
    assert mp.activation_bytes("sdxl", 1024, 1024, 1, "bf16", True) < mp.activation_bytes("sdxl", 1024, 1024, 1,
                                                                                          "bf16", False) / 4
    choice = _choose(None)
    assert choice.on is True and "could not be read" in choice.reason


def test_previews_take_room_only_when_on():
    with_previews = mp.step_need_bytes("sdxl", 1024, 1024, 1, "bf16", False, previews=True)
    without = mp.step_need_bytes("sdxl", 1024, 1024, 1, "bf16", False, previews=False)
    assert with_previews - without == pytest.approx(mp.PREVIEW_GIB_PER_MEGAPIXEL * GIB * 1.048576, rel=1e-6)


def test_an_out_of_memory_step_retries_with_checkpointing_only_under_auto():
    assert mp.retry_with_checkpointing("auto", checkpointing_on=False) is True
    assert mp.retry_with_checkpointing("auto", checkpointing_on=True) is False
    assert mp.retry_with_checkpointing("off", checkpointing_on=False) is False
    assert mp.retry_with_checkpointing("on", checkpointing_on=True) is False


def test_out_of_memory_errors_are_recognised():
    import torch

    assert mp.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert mp.is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not mp.is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not mp.is_out_of_memory(MemoryError())  # host memory: not a GPU setting to change


def test_the_out_of_memory_message_says_what_to_change_and_where_it_resumes():
    text = mp.out_of_memory_message(41, batch=4, width=1024, height=1024, checkpointing_on=False, saved_step=41,
                                    free_gib=3.2)
    assert "out of GPU memory at step 42" in text and "3.2 GiB were free" in text
    for words in ("batch_size (now 4)", "width/height (now 1024x1024)", "gradient_checkpointing on",
                  "state of step 41 is saved", "resume"):
        assert words in text, words
    text = mp.out_of_memory_message(0, batch=1, width=512, height=512, checkpointing_on=True, saved_step=None)
    assert "batch_size" not in text and "gradient_checkpointing" not in text and "start again" in text
