"""Searching a video collection with a trained AMDNet: index, search function, CLI, HTTP API, page."""
