"""Training: objectives per task, GradCache, cross-device negatives (the trainer and recipes build on these)."""
