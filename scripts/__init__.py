"""Thin command-line entry points; each is a short main() over library calls."""
