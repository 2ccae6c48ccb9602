"""The demo (`make run`): a synthetic register, a simulated program and its HTML report. Never shipped to Lambda."""
