"""The model object: backbone + attention mode + pooling + normalisation + instructions."""
