"""The fitting layer: the training loops of both fits, resumable checkpoints, the evaluate-only fits (post-hoc
encoders, the feature classifier)."""
