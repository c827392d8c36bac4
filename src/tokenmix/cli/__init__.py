"""Thin command-line front end: parse arguments, call the library, print results."""
