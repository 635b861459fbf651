"""Export: write a finished run in other forms (a plain transformers model with the method merged in)."""
