"""Shared code for the pipeline stages in stages/: config, data, model, training, evaluation.

Importing the package imports nothing heavy; each stage imports only the modules it needs.
"""
