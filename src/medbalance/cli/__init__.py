"""Command-line interface (typer). Each stage's commands live in their own module."""
