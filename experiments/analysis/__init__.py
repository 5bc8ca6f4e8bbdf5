"""Analysis: run records -> the summary -> figures (docs/design.md §6). `selection` picks a sweep's runs,
`summary` holds what every figure is drawn from (our runs or the paper's records), `spec` says what each
figure shows. Reads records through experiments.layout; never imports the record writer."""
