"""Shared test setup: make the flat top-level modules importable and keep runs reproducible."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
