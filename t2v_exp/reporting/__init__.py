"""Sweep report: collect job directories, then render markdown, HTML and plots."""
