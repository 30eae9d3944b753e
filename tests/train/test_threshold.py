import numpy as np
import pytest

from kdmsi_train import threshold


def _unchanged(peaks: np.ndarray, rng: np.random.Generator) -> threshold.Histograms:
    """Histograms of unchanged 8x8 maps, each with the given peak at one pixel."""
    h = threshold.Histograms()
    for peak in peaks:
        m = rng.uniform(0, peak, (1, 8, 8))
        m[0, 3, 3] = peak
        h.update(m, np.array([0]))
    return h


def test_otsu_separates_two_modes():
    rng = np.random.default_rng(0)
    h = threshold.Histograms()
    background = np.clip(rng.normal(0.1, 0.03, 9000), 0, 1)
    change = np.clip(rng.normal(0.7, 0.05, 1000), 0, 1)
    h.update(np.concatenate([background, change])[None, :, None], np.array([1]))
    t = threshold.otsu(h.changed)
    assert 0.25 < t < 0.55


def test_at_most_one_unchanged_pair_in_ten_shows_change_at_the_threshold():
    """Unchanged pairs only: the first term alone decides, an order statistic a little
    below the sample quantile (the 15th-highest of 101 peaks)."""
    peaks = np.linspace(0.1, 0.6, 101)
    t = threshold.calibrate(_unchanged(peaks, np.random.default_rng(1)))
    assert t == pytest.approx(np.sort(peaks)[-15])
    assert t < np.quantile(peaks, 1 - threshold.PAIR_FALSE_ALARM)
    assert 0.1 < np.mean(peaks > t) < 0.15


@pytest.mark.parametrize("n", [11, 40, 300])
def test_the_first_term_stays_below_the_quantile_with_the_stated_confidence(n):
    """Drawn again and again from a known distribution, the bound lies at or below the
    true 0.9 quantile in 90 % of draws or more (the sample quantile: in 54-70 %), and with
    many peaks it comes close to it."""
    rng = np.random.default_rng(n)
    q = 1 - threshold.PAIR_FALSE_ALARM
    true = -np.log(1 - q)  # the exponential distribution's q quantile
    draws = rng.exponential(1.0, (4000, n))
    bounds = np.array([threshold.quantile_lower_bound(d, q) for d in draws])
    covered = np.mean(bounds <= true)
    assert threshold.CONFIDENCE - 0.015 <= covered < threshold.CONFIDENCE + 0.05  # 4000 draws
    assert np.mean(np.quantile(draws, q, axis=1) <= true) < 0.75
    if n == 300:
        assert np.median(bounds) > 0.85 * true
    assert threshold.quantile_lower_bound([0.3], q) == 0.3  # one value: itself


def test_a_few_unchanged_pairs_with_unlabelled_change_barely_move_it():
    rng = np.random.default_rng(2)
    peaks = rng.uniform(0.1, 0.2, 100)
    clean = threshold.calibrate(_unchanged(peaks, rng))
    h = _unchanged(peaks, rng)
    for _ in range(5):  # pairs labelled unchanged that hold a sliver of real change
        m = np.full((1, 8, 8), 0.05)
        m[0, :2, :2] = 0.95
        h.update(m, np.array([0]))
    noisy = threshold.calibrate(h)
    assert noisy < 0.21 and abs(noisy - clean) < 0.02
    # A pixel quantile of the same pairs would be set by those slivers.
    assert threshold.quantile(h.unchanged, 0.998) > 0.9


def test_without_unchanged_pairs_otsu_of_changed_pairs_decides():
    h = threshold.Histograms()
    m = np.concatenate([np.full(900, 0.1), np.full(100, 0.8)])[None, :, None]
    h.update(m, np.array([1]))
    assert threshold.calibrate(h) == pytest.approx(threshold.otsu(h.changed))
    assert 0.1 < threshold.calibrate(h) < 0.8


def test_threshold_is_clipped():
    h = threshold.Histograms()
    h.update(np.zeros((1, 10, 10)), np.array([0]))
    assert threshold.calibrate(h) == threshold.T_MIN
    h = threshold.Histograms()
    h.update(np.ones((1, 10, 10)), np.array([0]))
    assert threshold.calibrate(h) == threshold.T_MAX


def test_a_lower_floor_keeps_a_faint_models_threshold():
    """A segmenter's maps can be faint everywhere: the rule's value below T_MIN is kept
    when the caller lowers the floor, and the floor still holds below it."""
    rng = np.random.default_rng(4)
    h = _unchanged(rng.uniform(0.005, 0.01, 50), rng)
    for _ in range(50):
        m = np.full((1, 8, 8), 0.002)
        m[0, 2:4, 2:4] = 0.04
        h.update(m, np.array([1]))
    rule = (np.median(h.unchanged_peaks) + 0.04) / 2
    assert threshold.calibrate(h) == threshold.T_MIN
    assert threshold.calibrate(h, floor=0.005) == pytest.approx(rule)
    assert threshold.calibrate(h, floor=0.03) == 0.03
    assert "[0.005," in threshold.rule("0.005") and f"[{threshold.T_MIN}," in threshold.RULE


def test_threshold_stays_off_the_halo_of_a_model_with_empty_unchanged_maps():
    rng = np.random.default_rng(3)
    h = _unchanged(rng.uniform(0.03, 0.05, 50), rng)
    for _ in range(50):  # changed pairs: change near 0.9, a wide halo around it
        m = np.full((1, 16, 16), 0.02)
        m[0, 4:12, 4:12] = 0.3
        m[0, 6:10, 6:10] = 0.9
        h.update(m, np.array([1]))
    t = threshold.calibrate(h)
    assert t == pytest.approx((np.median(h.unchanged_peaks) + 0.9) / 2)
    assert 0.3 < t < 0.9  # the change, not its halo


def test_square_peaks_tile_the_map():
    m = np.zeros((1, 256, 256))
    m[0, 70, 200] = 0.8  # row square 1, column square 3
    peaks = threshold.square_peaks(m, 64)
    assert len(peaks) == 16 and peaks[1 * 4 + 3] == 0.8 and sorted(peaks)[-2] == 0.0
    assert len(threshold.square_peaks(m[:, :64, :64], 64)) == 1
    assert len(threshold.square_peaks(m[:, :100, :40], 64)) == 2  # round(100/64) x 1


def test_unchanged_squares_make_the_rule_the_same_at_every_tile_size():
    """The same unchanged ground cut into 256-px tiles (peaks per 64-px square) or into
    64-px tiles gives the same threshold; one peak per 256-px tile gives a higher one, as
    each tile's peak is the highest of sixteen squares'."""
    rng = np.random.default_rng(5)
    big = rng.beta(1, 30, (12, 256, 256)) ** 0.5
    changed = rng.uniform(0, 0.2, (30, 64, 64))
    changed[:, 20:40, 20:40] = rng.uniform(0.6, 1.0, (30, 1, 1))
    squares, small, whole = (threshold.Histograms(square=64), threshold.Histograms(),
                             threshold.Histograms())
    for h in (squares, small, whole):
        h.update(changed, np.ones(len(changed)))
    squares.update(big, np.zeros(len(big)))
    whole.update(big, np.zeros(len(big)))
    pieces = big.reshape(12, 4, 64, 4, 64).transpose(0, 1, 3, 2, 4).reshape(-1, 64, 64)
    small.update(pieces, np.zeros(len(pieces)))
    assert sorted(squares.unchanged_peaks) == sorted(small.unchanged_peaks)
    assert len(squares.changed_peaks) == len(changed)
    assert threshold.calibrate(squares) == threshold.calibrate(small)
    assert threshold.calibrate(whole) > threshold.calibrate(squares)
    assert "64-px squares of the pairs labelled unchanged" in threshold.rule("0.01", 64)


def test_matching_flags_the_share_another_map_flags():
    rng = np.random.default_rng(7)
    start = np.bincount((rng.beta(1, 12, 200_000) * threshold.BINS).astype(int),
                        minlength=threshold.BINS)
    share = threshold.share_above(start, 0.454)
    sure = np.bincount((rng.beta(1, 4, 200_000) * threshold.BINS).astype(int),
                       minlength=threshold.BINS)  # the same data, a surer map
    t = threshold.matching(sure, share)
    assert t > 0.454 and threshold.share_above(sure, t) == pytest.approx(share, abs=2e-4)
    assert threshold.matching(start, share) == pytest.approx(0.454)
    assert threshold.matching(sure, 0.9, floor=0.2) == 0.2  # clipped to [floor, T_MAX]
    assert threshold.matching(sure, 1e-9) == threshold.T_MAX
    assert "(1.500%)" in threshold.matched_rule("0.01", 0.015, 0.454, "val")
