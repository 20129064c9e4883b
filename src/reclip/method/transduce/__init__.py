"""Training-free transduction: features and a classifier in, class probabilities out."""
