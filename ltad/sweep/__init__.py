"""Ray Tune sweeps across imbalance levels (tune/sweep.py)."""
