"""Model code: the verifier's pieces we read, and the EAGLE-3 draft module."""
