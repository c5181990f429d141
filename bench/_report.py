"""Percentiles and the table rows every bench script prints (a ratio against a baseline)."""

from __future__ import annotations


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def row(
    name: str,
    values: list[float],
    base: list[float] | None = None,
    *,
    base_label: str = "floor",
    width: int = 46,
) -> str:
    """`name  p50 .. ms  p95 .. ms  ratio` for seconds in `values`, p50 against `base`'s."""
    p50, p95 = pct(values, 0.5) * 1000, pct(values, 0.95) * 1000
    ratio = f"{p50 / (pct(base, 0.5) * 1000):5.2f}x" if base else f"{base_label:>6}"
    return f"{name:<{width}} p50 {p50:8.1f} ms   p95 {p95:8.1f} ms   {ratio}"
