"""Support code: what the PRIME loop uses but a reader of the method need not open (README)."""
