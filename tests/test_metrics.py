"""The paper's measures and the forensic ones, against examples computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from minorage import groups
from minorage.paper import metrics


def test_groups_round_ages_first():
    ages = np.array([0, 5.4, 5.5, 10.49, 15.6, 17.49, 17.5, 25.4, 25.5, 40])
    names = [groups.ALL_GROUPS[i] for i in groups.group_index(ages)]
    assert names == ["0-5", "0-5", "6-10", "6-10", "16-17", "16-17", "18-25", "18-25", "26+", "26+"]
    assert [groups.age_group(a) for a in (5.4, 5.5, 25.5)] == ["0-5", "6-10", "26+"]


def test_mae_and_age_averaged_mae():
    true = np.array([2, 2, 2, 20])
    pred = np.array([3, 3, 3, 30])
    assert metrics.mae(true, pred) == pytest.approx((1 + 1 + 1 + 10) / 4)
    # per age: age 2 -> 1, age 20 -> 10; averaged over the two ages
    assert metrics.age_averaged_mae(true, pred) == pytest.approx(5.5)


def test_group_accuracy_is_the_mean_over_groups():
    true = np.array([1, 2, 3, 7, 8, 12, 16, 20, 21])
    pred = np.array([1, 9, 3, 7, 12, 12, 19, 20, 30])
    acc = metrics.group_accuracy(true, pred)
    # [0-5]: 2/3, [6-10]: 1/2, [11-15]: 1/1, [16-17]: 0/1, [18-25]: 1/2
    assert acc["0-5"] == pytest.approx(2 / 3) and acc["6-10"] == 0.5 and acc["11-15"] == 1.0
    assert acc["16-17"] == 0.0 and acc["18-25"] == 0.5
    assert acc["Acc"] == pytest.approx((2 / 3 + 0.5 + 1 + 0 + 0.5) / 5)


def test_confusion_counts():
    matrix = metrics.confusion(np.array([1, 1, 16, 30]), np.array([1, 7, 18, 17]))
    assert matrix.sum() == 4 and matrix[0, 0] == 1 and matrix[0, 1] == 1 and matrix[3, 4] == 1 and matrix[5, 3] == 1


def test_impv_follows_equation_2():
    assert metrics.impv(7.26, 4.07) == pytest.approx(43.94, abs=0.01)  # the paper's headline
    assert metrics.impv(20.0, 39.2) == pytest.approx(-96.0)  # for Acc, negative is better


def test_minor_decision():
    true = np.array([5, 10, 17, 17, 18, 24, 30, 50])
    pred = np.array([6, 19, 17.4, 17.6, 16, 22, 20, 12])
    out = metrics.minor_decision(true, pred)
    # minors: 5->6 yes, 10->19 no, 17->17 yes, 17->18 (17.6 rounds up) no: 2/4
    assert out["minor_recall"] == 0.5
    assert out["specificity_18_25"] == 0.5  # 18->16 wrong, 24->22 right
    assert out["specificity_26plus"] == 0.5 and out["adults_called_minors"] == 0.5


def test_evaluate_leaves_adults_out_of_the_paper_measures():
    true = np.array([3, 12, 20, 45])
    pred = np.array([3, 12, 20, 10])
    out = metrics.evaluate(true, pred)
    assert out["MAE"] == 0 and out["Acc"] == 1.0 and out["adults_called_minors"] == 1.0 and out["n"] == 4


def test_minor_threshold_calibration_reaches_the_recall():
    true = np.array([10, 15, 16, 17, 17, 20, 22])
    pred = np.array([11, 16, 17.2, 17.8, 18.6, 21, 23])
    assert metrics.calibrate_minor_threshold(true, pred, 0.5) == 17.5  # 3 of 5 already below 17.5
    below = metrics.calibrate_minor_threshold(true, pred, 1.0)
    assert below == pytest.approx(18.7) and metrics.minor_decision(true, pred, below)["minor_recall"] == 1.0


def test_recall_at_85_percent_specificity():
    """Minors estimated 5, 17 and 19.5; seven 18-24 year olds, one estimated 17.2. Flagging one
    of the seven keeps 6/7 = 86 % specificity, two would not: thresholds up to 19.0 qualify, and
    19.0 flags two of the three minors."""
    true = np.array([5, 16, 17, 18, 19, 20, 21, 22, 23, 24])
    pred = np.array([5, 17.0, 19.5, 17.2, 19, 20, 21, 22, 23, 24])
    out = metrics.recall_at_specificity(true, pred)
    assert out["threshold_at_spec85"] == pytest.approx(19.0) and out["recall_at_spec85"] == pytest.approx(2 / 3)
    assert out["recall_at_spec85_under16"] == 1.0  # the 5-year-old; the 17-year-old is the miss
    assert metrics.recall_at_specificity(true[:3], pred[:3]) == {}
    # a 14-year-old estimated 19.5 is missed too: half the under-16s
    out = metrics.recall_at_specificity(np.append(true, 14), np.append(pred, 19.5))
    assert out["recall_at_spec85_under16"] == pytest.approx(1 / 2) and out["recall_at_spec85"] == pytest.approx(2 / 4)
    assert "recall_at_spec85_under16" not in metrics.recall_at_specificity(true[1:], pred[1:])


def test_flagged_by_age_says_which_minors_a_threshold_misses():
    """Two 5-year-olds estimated 6 and 8, two 17-year-olds estimated 17.2 and 18.4, one adult:
    at 17.5 every 5-year-old and half the 17-year-olds are flagged; at 19 all; adults are not listed."""
    true = np.array([5, 5, 17, 17, 30], float)
    pred = np.array([6, 8, 17.2, 18.4, 25], float)
    assert metrics.flagged_by_age(true, pred) == {5: 1.0, 17: 0.5}
    assert metrics.flagged_by_age(true, pred, 19.0) == {5: 1.0, 17: 1.0}
    assert metrics.evaluate(true, pred)["flagged_by_age"] == {5: 1.0, 17: 0.5}


def test_estimate_by_age_gives_each_ages_mean_estimate_up_to_25():
    """Two 17-year-olds estimated 18 and 20 (mean 19), one 18-year-old estimated 17.5 (true 17.6
    rounds to 18), one 30-year-old left out: the 17s read older than the 18."""
    true = np.array([17, 17, 17.6, 30], float)
    pred = np.array([18, 20, 17.5, 25], float)
    assert metrics.estimate_by_age(true, pred) == {17: 19.0, 18: 17.5}
    assert metrics.evaluate(true, pred)["estimate_by_age"] == {17: 19.0, 18: 17.5}


def test_bootstrap_intervals_bracket_the_measure_and_narrow_with_more_faces():
    """Every face off by exactly 2 years leaves nothing to vary; mixed errors give an interval
    around the measure that four times the faces make narrower; the same seed, the same interval."""
    true = np.array([1, 3, 5, 8, 12, 15, 16, 17, 19, 20, 22, 24, 30, 40], float)
    even = metrics.bootstrap_intervals(true, true + 2, resamples=200)
    assert even["MAE"] == [2.0, 2.0] and even["MAE_age_averaged"] == [2.0, 2.0]
    errors = np.array([0, 4, -1, 3, -6, 2, 1, 5, -2, 0, -3, 1, -8, 2], float)
    small = metrics.bootstrap_intervals(true, true + errors, resamples=300)
    point = metrics.evaluate(true, true + errors)
    low, high = small["MAE_age_averaged"]
    assert low < point["MAE_age_averaged"] < high
    assert small["adults_called_minors"][0] <= point["adults_called_minors"] <= small["adults_called_minors"][1]
    large = metrics.bootstrap_intervals(np.tile(true, 4), np.tile(true + errors, 4), resamples=300)
    assert large["MAE"][1] - large["MAE"][0] < small["MAE"][1] - small["MAE"][0]
    assert metrics.bootstrap_intervals(true, true + errors, resamples=300) == small
    with pytest.raises(ValueError, match="resamples"):
        metrics.bootstrap_intervals(true, true, resamples=0)


def test_fairness_by_group_against_a_hand_computed_example():
    """Two groups. Women: ages 10, 16 (minors), 20 (18-25), 30, 40 (26+); estimates 12, 19, 21,
    17, 35. Men: 12 (minor), 22 (18-25), 50 (26+); estimates 12, 16, 40. At 17.5:
    women: MAE averaged over ages 0-25 = (2 + 3 + 1) / 3 = 2; minors flagged 1 of 2 (the
    16-year-old read 19); 18-25 unflagged 1 of 1; 26+ called minors 1 of 2 (the 30-year-old read 17).
    men: MAE (0 + 6) / 2 = 3; minors flagged 1 of 1; 18-25 unflagged 0 of 1; 26+ called minors 0.
    Minors read older by: women (2 + 3) / 2 = 2.5 years, men 0."""
    true = np.array([10, 16, 20, 30, 40, 12, 22, 50], float)
    pred = np.array([12, 19, 21, 17, 35, 12, 16, 40], float)
    sex = np.array(["female"] * 5 + ["male"] * 3)
    table = metrics.by_group(true, pred, sex)
    assert table["female"] == {"n": 5, "n_minors": 2, "n_18_25": 1, "n_26plus": 2, "MAE_age_averaged": 2.0,
                               "minor_recall": 0.5, "specificity_18_25": 1.0, "adults_called_minors": 0.5, "minor_bias": 2.5,
                               "minor_recall_age_mix": 0.5, "minor_bias_age_mix": 2.5}
    assert table["male"] == {"n": 3, "n_minors": 1, "n_18_25": 1, "n_26plus": 1, "MAE_age_averaged": 3.0,
                             "minor_recall": 1.0, "specificity_18_25": 0.0, "adults_called_minors": 0.0, "minor_bias": 0.0,
                             "minor_recall_age_mix": 1.0, "minor_bias_age_mix": 0.0}
    with_intervals = metrics.by_group(true, pred, sex, resamples=200)
    low, high = with_intervals["female"]["intervals"]["adults_called_minors"]
    assert 0.0 <= low <= 0.5 <= high <= 1.0 and with_intervals["male"]["intervals"]["adults_called_minors"] == [0.0, 0.0]
    low, high = with_intervals["female"]["intervals"]["minor_bias"]
    assert 2.0 <= low <= 2.5 <= high <= 3.0
    missed = metrics.by_group(true, np.where(true == 16, np.inf, pred), sex)  # a face the detector missed has no estimate
    assert missed["female"]["minor_bias"] == 2.0 and missed["female"]["minor_recall"] == 0.5


def test_groups_compared_at_all_minors_mix_of_ages():
    """Group A: ages 5, 5, 5, 15 read 6, 6, 6, 19 (an adult of 30 read 40 aside); group B: 5, 15,
    15, 15 read 5, 15, 15, 19. Each flags 3 of 4 minors, A reads them 1.75 years older, B 1.0.
    All minors are half 5 and half 15, so at that mix A flags (1 + 0) / 2 = 0.5 and reads
    (1 + 4) / 2 = 2.5 years older, B flags (1 + 2/3) / 2 = 5/6 and reads (0 + 4/3) / 2 = 2/3
    older: A's raw share hid that it misses the teenagers B flags. With B's unflagged
    15-year-old missed by the detector, B still flags 5/6 and its read minors are read 0 older."""
    true = np.array([5, 5, 5, 15, 30, 5, 15, 15, 15], float)
    pred = np.array([6, 6, 6, 19, 40, 5, 15, 15, 19], float)
    group = np.array(["A"] * 5 + ["B"] * 4)
    table = metrics.by_group(true, pred, group)
    assert table["A"]["minor_recall"] == table["B"]["minor_recall"] == 0.75
    assert (table["A"]["minor_bias"], table["B"]["minor_bias"]) == (1.75, 1.0)
    assert table["A"]["minor_recall_age_mix"] == 0.5 and table["A"]["minor_bias_age_mix"] == 2.5
    assert table["B"]["minor_recall_age_mix"] == pytest.approx(5 / 6) and table["B"]["minor_bias_age_mix"] == pytest.approx(2 / 3)
    missed = metrics.by_group(true, np.where(pred == 19, [np.inf if g == "B" else 19 for g in group], pred), group)
    assert missed["B"]["minor_recall_age_mix"] == pytest.approx(5 / 6) and missed["B"]["minor_bias_age_mix"] == 0.0
    low, high = metrics.by_group(true, pred, group, resamples=200)["A"]["intervals"]["minor_bias_age_mix"]
    assert 1.0 <= low <= 2.5 <= high <= 4.0


def test_the_file_names_give_sex_and_ethnicity():
    from minorage.paper.readers import demographics

    assert demographics("utkface", "/x/23_1_2_20170116174525125.jpg.chip.jpg") == ("female", "Asian")
    assert demographics("utkface", "61_0_20170109142408075.jpg.chip.jpg") == ("male", "unknown")  # real UTKFace: no race
    assert demographics("agedb", "0_MariaCallas_35_f.jpg") == ("female", "unknown")
    assert demographics("appa-real", "train/000001.jpg") == ("unknown", "unknown")
