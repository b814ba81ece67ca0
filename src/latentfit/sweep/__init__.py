"""Sweeps of the pipeline over grids x seeds on Ray (`latentfit sweep`)."""
