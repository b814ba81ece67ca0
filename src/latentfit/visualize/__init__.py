"""The visualize layer: each fit's figure arrays, the final stage's figures and report, the drawing."""
