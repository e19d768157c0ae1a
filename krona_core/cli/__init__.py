"""The command line, `python -m krona_core` / `krona`: demo, train, info, convert, merge."""
