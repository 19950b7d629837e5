"""The word for a ratio follows its interval (featlab.probe.change / describe_change), and probe.sweep draws no
progress bar where a saved notebook would keep its first frame."""

import pytest
import torch

from featlab import probe
from featlab.probe import Change
from conftest import tiny_model


@pytest.mark.parametrize("ci, want", [
    ((1.94, 1.90, 1.98), Change.UP),
    ((1.04, 1.005, 1.073), Change.SMALL_UP),        # barely clears 1: notebook 01's extra cut at eps 0.3
    ((1.01, 0.98, 1.05), Change.NONE),              # contains 1
    ((1.30, 1.00, 1.60), Change.NONE),              # touches 1: still contains it
    ((0.70, 0.40, 1.00), Change.NONE),
    ((0.94, 0.93, 0.96), Change.SMALL_DOWN),        # ends within a factor 1.1 of 1
    ((0.28, 0.27, 0.29), Change.DOWN),
    ((1.20, 1.10, 1.30), Change.UP),                # the band's edge: a change of at least 10% is not small
    ((0.80, 0.70, 1 / 1.1), Change.DOWN),
    ((0.90, 1.01, 1.20), Change.NONE),              # the value disagrees with its interval: no direction
    ((1.10, 0.80, 0.99), Change.NONE),
])
def test_change_follows_the_interval(ci, want):
    assert probe.change(ci) is want


def test_the_small_band_is_a_parameter():
    ci = (1.04, 1.005, 1.073)
    assert probe.change(ci, small=1.001) is Change.UP
    assert probe.change(ci, small=2.0) is Change.SMALL_UP
    assert probe.change((1.5, 1.2, 1.8), small=1.25) is Change.SMALL_UP
    assert probe.change((0.6, 0.5, 0.85), small=1.25) is Change.SMALL_DOWN


def test_describe_change_words_the_numbers():
    assert probe.describe_change((1.94, 1.90, 1.98)) == "grows (1.94x, 95% interval 1.90-1.98)"
    # a third digit where two would not show on which side of 1 the interval ends
    assert (probe.describe_change((1.04, 1.005, 1.073))
            == "grows slightly, a small effect (1.04x, 95% interval 1.005-1.073)")
    assert (probe.describe_change((1.01, 0.98, 1.05))
            == "shows no measurable change (1.01x, 95% interval 0.98-1.05)")
    assert probe.describe_change((0.28, 0.27, 0.29), level=0.9) == "shrinks (0.28x, 90% interval 0.27-0.29)"
    # caller's words replace the defaults they name, by member or by its value; the rest stay
    words = {Change.SMALL_UP: "is just above 1", "down": "is below 1"}
    assert probe.describe_change((1.04, 1.005, 1.073), words).startswith("is just above 1 (1.04x")
    assert probe.describe_change((0.5, 0.4, 0.6), words).startswith("is below 1 (0.50x")
    assert probe.describe_change((2.0, 1.5, 2.5), words).startswith("grows (2.00x")


def test_the_direction_word_never_contradicts_the_ratio():
    g = torch.Generator().manual_seed(0)
    for _ in range(500):
        low, high = sorted((0.5 + 1.5 * torch.rand(2, generator=g)).tolist())
        value = low + (high - low) * float(torch.rand(1, generator=g))
        text = probe.describe_change((value, low, high))
        if low <= 1 <= high:
            assert text.startswith("shows no measurable change"), (value, low, high, text)
        else:
            assert text.startswith("grows" if value > 1 else "shrinks"), (value, low, high, text)
            assert ("small effect" in text) == (min(abs(low - 1), abs(high - 1)) < 1.1 - 1 if value > 1
                                                else high > 1 / 1.1), (value, low, high, text)


def test_describe_change_reads_ratio_interval():
    b = 1 + torch.rand(40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert probe.describe_change(probe.ratio_interval(1.5 * b, b)).startswith("grows (1.50x")
    assert probe.describe_change(probe.ratio_interval(1.03 * b, b)).startswith("grows slightly, a small effect (1.03x")


@pytest.mark.parametrize("ci, words, match", [
    ((1.0, 1.2, 1.1), None, "low <= high"),
    ((float("nan"), 0.9, 1.1), None, "finite"),
    ((1.0, 0.9), None, "three numbers"),
    ((1.0, 0.9, 1.1), {"sideways": "x"}, "words: keys must be featlab.probe.Change"),
])
def test_bad_intervals_and_words_are_named(ci, words, match):
    with pytest.raises(ValueError, match=match):
        probe.describe_change(ci, words)
    with pytest.raises(ValueError, match="small must be > 1"):
        probe.change((1.0, 0.9, 1.1), small=1.0)


@pytest.mark.parametrize("flag, progress, shown", [(None, None, True), ("1", None, False), ("1", True, True),
                                                   (None, False, False)])
def test_sweep_draws_its_bar_only_where_someone_watches(monkeypatch, capsys, flag, progress, shown):
    """Under papermill (FEATLAB_NOTEBOOK_RUN=1) the bar is off by default: a saved notebook keeps a notebook bar's
    first frame ("0%") as the cell's output. ``progress`` overrides; the results do not depend on it."""
    if flag is None:
        monkeypatch.delenv("FEATLAB_NOTEBOOK_RUN", raising=False)
    else:
        monkeypatch.setenv("FEATLAB_NOTEBOOK_RUN", flag)
    m = tiny_model().eval()
    x, y = torch.rand(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    res = probe.sweep({"m": m}, x, y, [0.1, 0.2], attack_steps=2, progress=progress)
    assert ("probe sweep" in capsys.readouterr().err) is shown
    again = probe.sweep({"m": m}, x, y, [0.1, 0.2], attack_steps=2, progress=not shown)
    assert torch.equal(res["m"][0.2]["adversarial"].l2["conv"], again["m"][0.2]["adversarial"].l2["conv"])
