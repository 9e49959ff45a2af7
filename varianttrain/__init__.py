"""varianttrain: elastic-depth supernets (VARiant) for VAR and side-by-side evaluation of VAR accelerators."""

__version__ = "0.1.0"
