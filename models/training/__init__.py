"""The training loop, its validation loss and the text it prints."""
