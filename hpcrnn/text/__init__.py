"""Text: tokenizers, the detokenizer, mojibake repair, and every recipe-format rule."""
