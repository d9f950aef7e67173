"""Analytics: pure detectors over numbers and frames. Numbers or frames in, findings out; no I/O."""
