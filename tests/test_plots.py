"""tasks/plots.py: pictures a person can read at normal size."""

from __future__ import annotations

import struct
from pathlib import Path

from tasks.plots import plot_curves


def png_size(file: Path) -> tuple[int, int]:
    width, height = struct.unpack(">II", file.read_bytes()[16:24])
    return width, height


def test_six_training_curves_make_a_grid_not_a_strip(tmp_path: Path) -> None:
    keys = [(f"k{i}", f"metric {i}") for i in range(6)]
    history = [{"iteration": t, **{k: float(t * i) for i, (k, _) in enumerate(keys)}} for t in range(5)]
    plot_curves(history, keys, tmp_path / "curves.png", "PPO training")
    width, height = png_size(tmp_path / "curves.png")
    assert 1.4 < width / height < 2.5 and width <= 1500  # 2 rows of 3 (a 1 x 6 strip is about 7:1)
