import numpy as np
import pytest

from lifelong.incremental.metrics import cil_metrics, mean_std

R = [[0.9, 0.0, 0.0],
     [0.6, 0.8, 0.0],
     [0.5, 0.4, 0.7]]


def test_metrics_by_hand():
    m = cil_metrics(R)
    seen = [0.9, (0.6 + 0.8) / 2, (0.5 + 0.4 + 0.7) / 3]
    assert m["average_incremental_accuracy"] == pytest.approx(np.mean(seen))
    assert m["last_accuracy"] == pytest.approx(seen[-1])
    # forgetting: exp0 best 0.9 -> 0.5, exp1 best 0.8 -> 0.4
    assert m["forgetting"] == pytest.approx(((0.9 - 0.5) + (0.8 - 0.4)) / 2)
    assert m["bwt"] == pytest.approx(((0.5 - 0.9) + (0.4 - 0.8)) / 2)


def test_seen_accuracy_is_weighted_by_test_set_size():
    m = cil_metrics(R, test_sizes=[100, 300, 100])
    assert m["last_accuracy"] == pytest.approx((0.5 * 100 + 0.4 * 300 + 0.7 * 100) / 500)


def test_forgetting_uses_the_best_earlier_accuracy_not_the_first():
    m = cil_metrics([[0.5, 0.0], [0.2, 0.9]])
    assert m["forgetting"] == pytest.approx(0.3)
    m3 = cil_metrics([[0.5, 0, 0], [0.8, 0.7, 0], [0.1, 0.7, 0.9]])
    assert m3["forgetting"] == pytest.approx(((0.8 - 0.1) + (0.7 - 0.7)) / 2)


def test_single_step_and_bad_shape():
    assert cil_metrics([[0.7]])["forgetting"] == 0.0
    with pytest.raises(ValueError, match="square"):
        cil_metrics([[0.1, 0.2]])


def test_mean_std_uses_sample_std():
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(np.sqrt(2.0)))
    assert mean_std([5.0]) == (5.0, 0.0)


def test_heatmap_cells_have_the_viridis_colour_of_their_value():
    import io

    from PIL import Image

    from lifelong.incremental.plots import heatmap_png, viridis

    matrix = [[0.9, 0.0, 0.0], [0.6, 0.8, 0.0], [0.5, 0.4, 0.7]]
    image = Image.open(io.BytesIO(heatmap_png(matrix, "R[i][j]: naive on split-digits (seed 0)"))).convert("RGB")
    assert image.width > 100 and image.height > 100
    colours = {image.getpixel((x, y)) for x in range(image.width) for y in range(image.height)}
    for value in (0.9, 0.6, 0.5, 0.4, 0.7, 0.8, 0.0):
        assert viridis(value) in colours, value  # each value's cell is filled with its colour
    assert viridis(0.0) != viridis(1.0) and viridis(float("nan")) == viridis(0.0)


def test_viridis_matches_matplotlib_within_three_levels():
    import matplotlib

    from lifelong.incremental.plots import viridis

    reference = matplotlib.colormaps["viridis"]
    for value in np.linspace(0, 1, 101):
        expected = np.round(np.asarray(reference(value)[:3]) * 255)
        assert np.abs(np.asarray(viridis(value)) - expected).max() <= 3, value


def test_line_plot_draws_each_series_in_its_colour_and_the_band_lighter():
    import io

    from PIL import Image

    from lifelong.incremental.plots import TAB10, line_plot_png

    series = [{"label": "a", "values": [0.9, 0.5, 0.3], "band": [0.0, 0.1, 0.2]},
              {"label": "b", "values": [0.95, 0.9, 0.85]}]
    data = line_plot_png(series, xlabel="training step", ylabel="accuracy", title="t", size=(400, 300))
    image = Image.open(io.BytesIO(data)).convert("RGB")
    assert image.size == (400, 300) and data[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = np.asarray(image).reshape(-1, 3)
    for colour in TAB10[:2]:
        rgb = np.array([int(colour[k:k + 2], 16) for k in (1, 3, 5)])
        assert (np.abs(pixels - rgb).max(axis=1) <= 8).sum() > 50, colour  # the line and its markers
