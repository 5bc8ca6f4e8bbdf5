"""Workloads whose training loop belongs to another framework; each writes the suite's run record."""
