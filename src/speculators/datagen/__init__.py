"""`speculators datagen`: chat data -> verifier hidden states, loss masks and token counts."""
