"""The math of inference on a fitted decoder: AIS and BDMC, the importance-sampling estimators, the inference-gap
and sampling diagnostics, encoding, reconstruction and prior search."""
