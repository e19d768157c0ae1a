"""The bound on one dense ΔW follows the base: 2**26 elements by default (SD, FLUX.1 and the other
families fit), the family's own largest real weight where that is larger (FLUX.2's fused linear1,
Wan 14B), so real files of every family load while a small file describing a huge ΔW is refused."""

from __future__ import annotations

import math

import pytest
import torch

from krona_core import families
from krona_core.files.model import KronAFileError
from krona_core.files.reader import read
from krona_core.files.writer import build_metadata, write
from krona_core.ops.limits import MAX_DELTA_ELEMENTS, DeltaTooLarge, check_delta_shape

LINEAR1 = "lora_unet_single_blocks_0_linear1"  # FLUX.2: 55296 × 6144 (q, k, v + gated MLP input)


def _file(tmp_path, base: str) -> str:
    modules = {LINEAR1: (torch.randn(64, 8) * 1e-2, torch.randn(864, 768) * 1e-2)}  # ⊗ = 55296 × 6144
    return write(tmp_path / f"{base}.krona.safetensors", modules, build_metadata(modules, base_model=base, title=base))


def test_a_flux2_fused_weight_loads_and_the_same_factors_for_sd1_are_refused(tmp_path):
    file = read(_file(tmp_path, "flux2"))
    assert math.prod(file.modules[LINEAR1][0].shape) * math.prod(file.modules[LINEAR1][1].shape) == 55296 * 6144
    with pytest.raises(KronAFileError, match=r"over the limit of 67,108,864"):
        read(_file(tmp_path, "sd1"))


def test_the_limit_is_the_default_unless_the_family_is_larger():
    assert families.delta_limit(None) == families.delta_limit("sd1") == MAX_DELTA_ELEMENTS
    assert families.delta_limit("flux2") == 55296 * 6144 and families.delta_limit("wan") == 30720 * 5120
    check_delta_shape((55296, 6144), "x", target=(6144, 55296))  # a known target weight is its own bound
    with pytest.raises(DeltaTooLarge, match="the model's weight is"):
        check_delta_shape((64, 64), "x", target=(64, 32))


@pytest.mark.slow
@pytest.mark.parametrize("family", families.FAMILIES, ids=lambda f: f.name)
def test_every_real_weight_of_a_family_fits_its_bound(family):
    model = family.build_unet()  # the real architecture on the meta device
    largest = max(math.prod(p.shape) for p in model.parameters() if p.ndim >= 2)
    assert largest <= families.delta_limit(family), f"{family.name}: a {largest:,}-element weight"
    if family.largest_weight:  # stated only where needed, and then exactly
        assert math.prod(family.largest_weight) == largest > MAX_DELTA_ELEMENTS
