"""Commands that use a finished run: predict, probe, request_labels, analyze, answer_from_truth."""
