"""The exchange log (DESIGN §3.2): a Merkle tree over every transaction record, signed checkpoints,
proofs, verify and export, and the data tracker's index of accesses by subject."""
