"""Tests of the command-stream format."""
