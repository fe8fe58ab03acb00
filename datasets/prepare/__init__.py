"""Offline tools that make data sets in the Med-AD layout: the benchmark's raw downloads (python -m
datasets.prepare), the Fashion-MNIST dev sets and the synthetic demo."""
