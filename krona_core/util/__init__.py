"""Host-free helpers: image folders and conversion, PNG plots, terminal progress."""
