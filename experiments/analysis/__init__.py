"""Analysis: run records -> tables (`aggregate`), the lr-robustness statistic (`robustness`) and the
paper's figures (`plot`). Reads records through experiments.layout; never imports the record writer."""
