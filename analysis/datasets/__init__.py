"""Datasets: the demo world and its trained model, the known-answer models, the calibration worlds."""
