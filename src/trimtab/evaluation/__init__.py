"""Evaluation: metrics on a fine-tuned model, the results file, and the report made from it."""
