"""The sample plan: the statistics of the real competition data, at full scale and small."""

from __future__ import annotations

import pandas as pd
import pytest

from conserviz_utils import SPECIES
from conserviz_utils.tools.sample import REAL_CLASS_COUNTS, REAL_IMAGE_SIZES, plan_sample

REAL_SHARES = pd.Series(REAL_CLASS_COUNTS) / sum(REAL_CLASS_COUNTS.values())
SIZE_SHARES = pd.Series(REAL_IMAGE_SIZES) / sum(REAL_IMAGE_SIZES.values())


@pytest.fixture(scope="module")
def full_plan() -> pd.DataFrame:
    """The plan of a full-size sample (16,488 + 4,464 images); planning draws no images."""
    return plan_sample(16488, 4464, seed=0)


@pytest.fixture(scope="module")
def small_plan() -> pd.DataFrame:
    """The plan of a few hundred images, as the quick course runs use."""
    return plan_sample(400, 100, seed=3)


# --- statistics of the real data -----------------------------------------------------------------


def test_full_size_plan_reproduces_the_real_counts(full_plan):
    train = full_plan[full_plan.split == "train"]
    test = full_plan[full_plan.split == "test"]
    assert len(train) == 16488 and len(test) == 4464
    ends = list(full_plan.index[[0, 16487, 16488, -1]])
    assert ends == ["ZJ000000", "ZJ016487", "ZJ016488", "ZJ020951"]
    counts = train.species.value_counts()
    for name, real in REAL_CLASS_COUNTS.items():
        assert abs(counts[name] - real) <= 1, name
    assert train.site.nunique() == 148 and test.site.nunique() == 51
    numbers = sorted(int(s[1:]) for s in full_plan.site.unique())
    assert numbers == list(range(1, 200))


@pytest.mark.parametrize("plan_name", ["full_plan", "small_plan"])
def test_train_and_test_sites_are_disjoint(plan_name, request):
    plan = request.getfixturevalue(plan_name)
    train_sites = set(plan.site[plan.split == "train"])
    test_sites = set(plan.site[plan.split == "test"])
    assert not train_sites & test_sites
    assert len(train_sites) >= 9 and len(test_sites) >= 3


def test_small_samples_keep_several_sites_on_each_side():
    plan = plan_sample(160, 40, seed=0)
    assert plan.site[plan.split == "train"].nunique() == 9
    assert plan.site[plan.split == "test"].nunique() == 3
    plan = plan_sample(2000, 500, seed=0)
    # Sites grow as images^0.6 from the real 148 and 51, so small samples keep many sites.
    assert plan.site[plan.split == "train"].nunique() == 42
    assert plan.site[plan.split == "test"].nunique() == 14


def test_class_shares_hold_in_a_small_sample(small_plan):
    for split in ("train", "test"):
        shares = small_plan.species[small_plan.split == split].value_counts(normalize=True)
        assert (shares.reindex(SPECIES) - REAL_SHARES.reindex(SPECIES)).abs().max() < 0.02, split


def test_site_sizes_are_heavy_tailed(full_plan, small_plan):
    sizes = full_plan[full_plan.split == "train"].site.value_counts()
    assert sizes.min() >= 1
    assert sizes.max() > 5 * sizes.median()  # real: 1,132 vs a median of 70.5
    assert 0.45 < sizes.median() / sizes.mean() < 0.8  # real: 70.5 / 111
    test_sizes = full_plan[full_plan.split == "test"].site.value_counts()
    assert test_sizes.max() / test_sizes.sum() >= 0.10  # real: one site holds 11 %
    small = small_plan[small_plan.split == "train"].site.value_counts()
    assert small.max() > 2 * small.median()


def test_species_live_at_only_some_sites(full_plan, small_plan):
    train = full_plan[full_plan.split == "train"]
    present = pd.crosstab(train.site, train.species) > 0
    n_sites = len(present)
    # Real: civet_genet at 49, leopard 47, hog 37 and blank at 142 of 148 sites.
    assert abs(present.civet_genet.sum() - 49) <= 6
    assert abs(present.leopard.sum() - 47) <= 6
    assert abs(present.hog.sum() - 37) <= 6
    assert present.blank.sum() >= 0.9 * n_sites
    # Per-site mixes differ from the overall mix: the course's leakage comes from here.
    for plan in (full_plan, small_plan):
        side = plan[plan.split == "train"]
        mix = pd.crosstab(side.site, side.species, normalize="index")
        overall = side.species.value_counts(normalize=True)
        distance = 0.5 * (mix - overall).abs().sum(axis=1)
        assert distance.median() > 0.25


def test_image_size_mix(full_plan, small_plan):
    full = full_plan.groupby(["width", "height"]).size() / len(full_plan)
    for size, share in SIZE_SHARES.items():
        assert abs(full[size] - share) < 0.02, size
    small = small_plan.groupby(["width", "height"]).size() / len(small_plan)
    assert abs(small.get((640, 360), 0) - SIZE_SHARES[(640, 360)]) < 0.15
    assert abs(small.get((960, 540), 0) - SIZE_SHARES[(960, 540)]) < 0.15
    assert set(small.index) <= set(REAL_IMAGE_SIZES)
    # Cut-off info bands: those cameras print none.
    cropped = full_plan.height.isin([335, 515])
    assert (full_plan.band[cropped] == "none").all()
    assert full_plan.band.isin(["top", "bottom"]).mean() > 0.6


def test_night_share(full_plan, small_plan):
    for plan in (full_plan, small_plan):
        assert 0.33 < plan.night.mean() < 0.55
    by_class = full_plan.groupby("species").night.mean()
    assert by_class.civet_genet > 0.8 and by_class.monkey_prosimian < 0.2


def test_plan_is_deterministic_for_a_seed():
    pd.testing.assert_frame_equal(plan_sample(300, 60, seed=7), plan_sample(300, 60, seed=7))
    assert not plan_sample(300, 60, seed=7).equals(plan_sample(300, 60, seed=8))
