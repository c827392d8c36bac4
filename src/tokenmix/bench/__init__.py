"""Measurement: operation counts (GMACs with FFTs), timing and memory."""
