"""KronA adapters on torch models: target selection, attach / apply / merge, per-block strengths,
parameter counts."""
