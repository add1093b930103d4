"""EAGLE-3 draft training: data, training-time-test attention, loss, the loop, the run."""
