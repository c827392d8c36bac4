"""Figures: learning curves, confusion matrices and prediction grids (matplotlib, Agg)."""
