"""Training of MIL models on cell bags: shared pieces, the embed regime, input checks and run outputs."""
