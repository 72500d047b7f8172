"""One trainer for every objective, reference-model handling, memory tracking."""
