"""Attribute names, prevalences and mask geometry (areas as in the mask table of bincam.attributes)."""

import numpy as np
import pytest

from bincam.attributes import (ATTRIBUTE_REGION, ATTRIBUTES, MASK_REGIONS, TRAIN_POSITIVE_SHARE,
                               attribute_masks, mask_array, resolve_attributes)
from bincam.errors import BincamError

AREAS = {  # rows × cols of the mask rectangles on the 224 frame
    "upper_head": 96 * 96, "hat": 96 * 160, "eyes": 64 * 96, "nose_cheeks": 64 * 96,
    "ears": 2 * 96 * 64, "mouth": 32 * 96, "goatee": 64 * 32, "double_chin": 32 * 96,
    "neck": 64 * 96, "face": 160 * 96, "global": 192 * 160, "hair": 192 * 160 - 160 * 96,
}


def test_forty_attributes_in_celeba_order():
    assert len(ATTRIBUTES) == 40 and len(set(ATTRIBUTES)) == 40
    assert ATTRIBUTES[0] == "5_o_Clock_Shadow" and ATTRIBUTES[20] == "Male"
    assert ATTRIBUTES[-1] == "Young"
    assert set(TRAIN_POSITIVE_SHARE) == set(ATTRIBUTES) == set(ATTRIBUTE_REGION)
    majority_positive = {a for a, p in TRAIN_POSITIVE_SHARE.items() if p > 0.5}
    assert majority_positive == {"Attractive", "Young", "No_Beard"}


@pytest.mark.parametrize("region", sorted(AREAS))
def test_mask_areas(region):
    assert MASK_REGIONS[region].area(224) == AREAS[region]
    assert MASK_REGIONS[region].area(112) == AREAS[region] // 4


def test_mask_positions():
    eyes = mask_array("Eyeglasses")
    assert eyes[64, 64] and eyes[127, 159] and not eyes[128, 100] and not eyes[63, 100]
    hair = mask_array("Blond_Hair")
    assert hair[40, 100] and hair[100, 40] and not hair[100, 100] and not hair[10, 100]
    masks = attribute_masks(["Bald", "Wearing_Hat"], 56)
    assert masks.shape == (2, 56, 56) and masks.dtype == bool
    assert np.array_equal(masks[0], mask_array("Receding_Hairline", 56))


def test_resolve_attributes():
    assert resolve_attributes(None) == list(ATTRIBUTES)
    assert resolve_attributes("Male,0") == ["Male", "5_o_Clock_Shadow"]
    with pytest.raises(BincamError, match="unknown attribute.*Beardy"):
        resolve_attributes("Beardy")
    with pytest.raises(BincamError, match="out of range"):
        resolve_attributes("40")
    with pytest.raises(BincamError, match="repeat"):
        resolve_attributes("Male,Male")
