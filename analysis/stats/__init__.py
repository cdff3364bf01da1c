"""The statistics: numbers and what they support (no words, no files, no torch)."""
