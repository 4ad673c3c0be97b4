import math
import struct

import numpy as np
import pytest
import torch

from skiprnn import plots


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert len(data) > 1000
    return struct.unpack(">II", data[16:24])


def adding_batch(n=3, T=20):
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(n, T, 2)
    x[..., 0] = torch.rand(n, T, generator=g) - 0.5
    x[:, 1, 1] = 1
    x[:, T - 3, 1] = 1
    u = (torch.rand(n, T, generator=g) > 0.5).float()
    return x, u


def test_adding_samples(tmp_path):
    x, u = adding_batch()
    p = plots.plot_adding_samples(x, u, tmp_path / "sub" / "adding.png", figsize=(6, 4), dpi=50)
    assert png_size(p) == (300, 200)
    # a single sequence and numpy input work, default size
    p2 = plots.plot_adding_samples(x[0].numpy(), u[0].numpy(), tmp_path / "one.png")
    assert png_size(p2)[0] == 900
    with pytest.raises(ValueError, match="updates"):
        plots.plot_adding_samples(x, u[:, :5], tmp_path / "bad.png")


def test_frequency_samples(tmp_path):
    t = torch.linspace(0, 99, 100)
    x = torch.cos(2 * math.pi * t / torch.tensor([5.5, 20.0])[:, None]).unsqueeze(-1)
    u = torch.zeros(2, 100)
    u[:, :15] = 1
    u[:, ::17] = 1
    p = plots.plot_frequency_samples(x, u, tmp_path / "freq.png", labels=[0, 1],
                                     sampling_period_ms=1.0, figsize=(5, 3), dpi=60)
    assert png_size(p) == (300, 180)
    p2 = plots.plot_frequency_samples(x[..., 0], u, tmp_path / "freq2.png")  # (N, T) input
    png_size(p2)


@pytest.mark.parametrize("shape", [(3, 784), (3, 28, 28), (3, 784, 1)])
def test_mnist_masks(tmp_path, shape):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    u = (torch.rand(3, 784, generator=g) > 0.5).float()
    p = plots.plot_mnist_masks(images, u, tmp_path / "mnist.png", labels=[1, 2, 3], figsize=(4, 2), dpi=50)
    assert png_size(p) == (200, 100)
    with pytest.raises(ValueError):
        plots.plot_mnist_masks(images, u[:, :100], tmp_path / "bad.png")


CSV = """epoch,step,train_loss,val_loss,val_metric,val_updates
0,49,0.9,,,
0,99,0.5,,,
0,99,,0.45,0.6,0.9
1,149,0.3,,,
1,199,0.2,,,
1,199,,0.25,0.8,0.7
"""


def test_learning_curves_from_csv(tmp_path):
    f = tmp_path / "metrics.csv"
    f.write_text(CSV)
    s = plots.read_metrics_csv(f)
    assert list(s) == ["train_loss", "val_loss", "val_metric", "val_updates"]
    assert s["val_metric"][0].tolist() == [99.0, 199.0] and s["train_loss"][1].tolist() == [0.9, 0.5, 0.3, 0.2]
    p = plots.plot_learning_curves(f, tmp_path / "curves.png", figsize=(8, 6), dpi=50)
    assert png_size(p) == (400, 300)
    p = plots.plot_learning_curves(f, tmp_path / "curves_epoch.png", x="epoch", keys=["val_metric"])
    png_size(p)


def test_learning_curves_dicts_and_runs(tmp_path):
    run_a = {"val_metric": ([0, 1, 2], [0.5, 0.7, 0.9]), "train_loss": [1.0, 0.5, 0.2]}
    run_b = {"val_metric": {"x": [0, 1, 2], "y": [0.4, 0.8, 0.95]}, "train_loss": [1.1, 0.4, float("nan")]}
    p = plots.plot_learning_curves([run_a, run_b], tmp_path / "runs.png", labels=["a", "b"],
                                   title="two runs", figsize=(6, 3), dpi=50)
    assert png_size(p) == (300, 150)
    table = {"step": [0, 1, 2, 3], "val_metric": [float("nan"), 0.5, float("nan"), 0.7]}
    png_size(plots.plot_learning_curves(table, tmp_path / "table.png"))
    with pytest.raises(ValueError):
        plots.plot_learning_curves({"a": [float("nan")]}, tmp_path / "empty.png")


def test_tradeoff(tmp_path):
    pts = [
        {"label": "λ=0", "group": "Skip LSTM", "updates_fraction": 0.81, "updates_fraction_std": 0.036,
         "metric": 0.99, "metric_std": 0.004},
        {"label": "λ=1e-5", "group": "Skip LSTM", "updates_fraction": 0.54, "metric": 0.985},
        {"label": "p=0.5", "group": "LSTM + random skip", "updates_fraction": 0.5, "metric": 0.6},
        {"label": "LSTM", "updates_fraction": 1.0, "metric": 0.995},
    ]
    p = plots.plot_tradeoff(pts, tmp_path / "trade.png", metric_name="1 - MSE", figsize=(5, 4), dpi=60)
    assert png_size(p) == (300, 240)
    p = plots.plot_tradeoff([{"label": "a", "updates": 392.6, "metric": 0.976}], tmp_path / "t2.png")
    png_size(p)
    with pytest.raises(ValueError):
        plots.plot_tradeoff([{"label": "a", "updates": 1, "metric": 1}, {"label": "b", "updates_fraction": 0.5,
                                                                          "metric": 1}], tmp_path / "t3.png")


def test_mnist_mask_colours_match_the_legend_and_differ_from_the_background():
    from matplotlib.colors import to_rgb
    img = torch.zeros(1, 28, 28)
    img[0, 10:18, 10:18] = 1.0                       # the "digit"; the rest is background
    u = torch.zeros(1, 784)
    u[0, ::2] = 1                                    # every other pixel used
    fig = plots.mnist_masks_figure(img, u, max_samples=1)
    drawn = fig.axes[0].images[0].get_array()        # (28, 28, 3)
    used_digit, skipped_digit = drawn[10, 10], drawn[10, 11]      # pixels 290 (used), 291
    used_bg, skipped_bg = drawn[0, 0], drawn[0, 1]
    assert np.allclose(used_digit, to_rgb(plots.USED_COLOR))
    assert np.allclose(skipped_digit, to_rgb(plots.SKIPPED_COLOR))
    colours = [used_digit, used_bg, skipped_digit, skipped_bg]
    # four colours, all different, none white and none black
    assert min(np.abs(a - b).sum() for i, a in enumerate(colours) for b in colours[i + 1:]) > 0.3
    assert all(0.05 < c.mean() < 0.95 for c in colours)
    legend = {h.get_label(): np.array(to_rgb(h.get_color())) for h in fig.legends[0].legend_handles}
    assert np.allclose(legend["used, digit"], used_digit) and np.allclose(legend["used, background"], used_bg)
    assert np.allclose(legend["skipped, digit"], skipped_digit)
    assert np.allclose(legend["skipped, background"], skipped_bg)


@pytest.mark.parametrize("scale", ["grey levels", "standardized"])
def test_mnist_masks_draw_other_pixel_scales_as_pixels_in_0_1(scale):
    """0-255 grey levels and standardized pixels (recipe fast's MNIST input, negative background)
    colour the digit as the same image in [0, 1] does."""
    img = torch.zeros(1, 28, 28)
    img[0, 10:18, 10:18] = 1.0
    u = torch.zeros(1, 784)
    u[0, ::2] = 1
    other = img * 255 if scale == "grey levels" else (img - 0.13) / 0.31
    want = plots.mnist_masks_figure(img, u, max_samples=1).axes[0].images[0].get_array()
    got = plots.mnist_masks_figure(other, u, max_samples=1).axes[0].images[0].get_array()
    assert np.allclose(got, want, atol=1e-6)


def test_learning_curves_scales_threshold_labels_and_single_points():
    steps = [100, 200, 300, 400]
    fig = plots.learning_curves_figure(
        {"val/mse": (steps, [0.17, 0.02, 0.001, 0.0004]), "val/accuracy": (steps, [0.5, 0.7, 0.9, 0.99]),
         "val/updates": ([100], [50.0])},
        hlines={"val/mse": (1 / 600, "solved")}, ylabels={"val/mse": "validation MSE"})
    ax = {a.get_title(): a for a in fig.axes if a.get_title()}
    assert ax["val/mse"].get_yscale() == "log" and ax["val/accuracy"].get_yscale() == "linear"
    assert ax["val/mse"].get_ylabel() == "validation MSE" and ax["val/mse"].get_xlabel() == "step"
    assert ax["val/accuracy"].get_ylabel() == "val/accuracy"
    solved = [ln for ln in ax["val/mse"].get_lines() if ln.get_label() == "solved"]
    assert len(solved) == 1 and solved[0].get_ydata()[0] == pytest.approx(1 / 600)
    ymin, ymax = ax["val/mse"].get_ylim()
    assert ymin <= 1 / 600 <= ymax
    (point,) = ax["val/updates"].get_lines()      # one validation: a marker, not an empty axis
    assert point.get_marker() not in (None, "None", "", " ") and list(point.get_ydata()) == [50.0]
