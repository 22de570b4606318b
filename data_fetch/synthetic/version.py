"""The generator's version: one place, imported by the cohort writer and the data card.

Bump it whenever the images change for the same config (cached cohorts carry it in their
folder name, so a bump makes every course regenerate its cohort).

>>> GENERATOR_VERSION >= 1
True
"""
GENERATOR_VERSION = 4
