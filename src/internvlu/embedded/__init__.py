"""The embedded default model: a tiny InternVL-U trained by our own recipe on the shapes world."""
