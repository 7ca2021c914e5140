import numpy as np
import pytest

from harmony_ops.resolution import ResolutionPolicy, foreground_box, inference_size, plan_inference


def mask_with_box(h, w, box):
    m = np.zeros((h, w), np.float32)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 1
    return m


@pytest.mark.parametrize("w,h", [(512, 512), (640, 480), (1920, 1080), (300, 1200), (5000, 100), (64, 64)])
@pytest.mark.parametrize("side", [512, 1024])
def test_inference_size_is_64_aligned_within_budget_and_keeps_aspect(w, h, side):
    tw, th = inference_size(w, h, side)
    assert tw % 64 == 0 and th % 64 == 0 and tw >= 64 and th >= 64
    assert tw * th <= side * side
    aspect = min(max(w / h, 0.25), 4.0)
    assert abs(np.log((tw / th) / aspect)) < 0.25
    # close to the budget: one more row or column of 64 would exceed it or the aspect
    assert tw * th >= 0.75 * side * side


def test_square_images_use_the_full_class_size():
    assert inference_size(3000, 3000, 1024) == (1024, 1024)
    assert inference_size(256, 256, 512) == (512, 512)


def test_fixed_modes_never_crop_and_use_their_class():
    m = mask_with_box(2000, 3000, (100, 100, 150, 150))  # tiny foreground
    for mode, side in (("512", 512), ("1024", 1024)):
        plan = plan_inference(m, ResolutionPolicy(mode=mode))
        assert plan.crop is None and plan.resolution_class == side
        assert plan.width * plan.height <= side * side
        assert plan.region == (0, 0, 3000, 2000)


def test_auto_crops_around_a_small_foreground():
    m = mask_with_box(2000, 3000, (1000, 800, 1100, 900))  # 0.17% of the image
    plan = plan_inference(m, ResolutionPolicy())
    assert plan.crop is not None
    x0, y0, x1, y1 = plan.crop
    assert 0 <= x0 <= 1000 and 0 <= y0 <= 800 and x1 >= 1100 and y1 >= 900 and x1 <= 3000 and y1 <= 2000
    # the foreground covers about the target share of the crop, with at least 2x context
    share = (100 * 100) / ((x1 - x0) * (y1 - y0))
    assert 0.1 <= share <= 0.25 + 1e-9
    assert (x1 - x0) >= 200 and (y1 - y0) >= 200
    assert plan.bucket == f"{plan.width}x{plan.height}"


def test_auto_crop_is_clamped_inside_the_image_at_a_corner():
    m = mask_with_box(1000, 1000, (0, 0, 30, 30))
    plan = plan_inference(m, ResolutionPolicy())
    assert plan.crop is not None and plan.crop[0] == 0 and plan.crop[1] == 0
    assert plan.crop[2] <= 1000 and plan.crop[3] <= 1000


def test_auto_does_not_crop_large_foregrounds_and_picks_class_by_region_size():
    big = plan_inference(mask_with_box(2000, 2000, (200, 200, 1500, 1500)), ResolutionPolicy())
    assert big.crop is None and big.resolution_class == 1024 and (big.width, big.height) == (1024, 1024)
    small = plan_inference(mask_with_box(400, 600, (100, 100, 400, 300)), ResolutionPolicy())
    assert small.crop is None and small.resolution_class == 512


def test_crop_covering_most_of_the_image_is_skipped():
    # 4% foreground, but the minimum crop side covers 97% of this small image anyway
    m = mask_with_box(130, 130, (50, 50, 76, 76))
    assert plan_inference(m, ResolutionPolicy()).crop is None


def test_custom_class_sizes_for_tests_and_benchmarks():
    plan = plan_inference(mask_with_box(300, 400, (10, 10, 300, 200)), ResolutionPolicy(mode="512", class_sizes=(128, 256)))
    assert plan.width * plan.height <= 128 * 128 and plan.resolution_class == 512


def test_foreground_box_and_empty_mask():
    assert foreground_box(np.zeros((5, 5))) is None
    assert foreground_box(mask_with_box(10, 10, (2, 3, 5, 7))) == (2, 3, 5, 7)
    plan = plan_inference(np.zeros((64, 64)), ResolutionPolicy())
    assert plan.fg_ratio == 0 and plan.crop is None


def test_bad_mode_and_sizes_are_rejected():
    with pytest.raises(ValueError):
        ResolutionPolicy(mode="768")
    with pytest.raises(ValueError):
        inference_size(0, 10, 512)
