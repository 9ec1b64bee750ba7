"""Fine-tuning and evaluation: datasets, losses, training and recall-at-k."""
