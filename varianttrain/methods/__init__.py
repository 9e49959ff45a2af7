"""Acceleration methods plugged into the one sampler."""
