"""morphometry: SynthSeg+ segmentation of clinical brain MRI and population analyses of volumes."""

__version__ = "0.1.0"
