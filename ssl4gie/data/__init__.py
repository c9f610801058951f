"""Dataset readers for the on-disk layouts of the study, paired transforms, splits and synthetic data writers."""
