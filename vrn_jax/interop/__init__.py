"""Interoperation with the original VRN and PyTorch: `torch_reference` (PyTorch builds of our networks,
state-dict conversion) and `release_import` (the released weights, .pth or Torch7 .t7, into a workdir).
Both import torch (the `[release]` extra); nothing in training, evaluation or the web app does."""
