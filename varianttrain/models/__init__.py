"""Model definitions: the VQVAE tokenizer and the elastic-depth VAR transformer."""
