"""The toy task: integer arithmetic a tiny model learns on a CPU, with its experiments (README)."""
