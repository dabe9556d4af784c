"""Training of the segmentation networks by domain randomisation (PyTorch, extra ``[train]``)."""
