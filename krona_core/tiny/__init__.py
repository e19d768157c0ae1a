"""Internal: the embedded tiny default (a seeded SD-shaped pipeline that trains on a CPU in
seconds) and the teacher–student harness measured on it. Used by the demo, the tests and the
benchmarks; not part of the public API (`krona_core.__all__`)."""
