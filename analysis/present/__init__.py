"""Presentation: every word, table and chart, made from the results container."""
