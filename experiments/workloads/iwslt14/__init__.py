"""IWSLT14 De-En with fairseq (docs/design.md §5)."""
