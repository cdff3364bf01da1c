"""Presentation: every word, table and chart, made from the results container.

`report` (the article's numbers: one frozen record per section) and `sections/` (each section's numbers, tables and
paragraphs); `wording` (the verdict's criteria worded from their ids and numbers) and `prose` (sentences about a
result); `formatting` (numbers, p-values, symbols, tables); `charts` (every chart as `chart(results, line)`),
`drawing` (how each is drawn) and `rendering` (how it renders for HTML and typst); `quality` (Part 0) and
`summary` (the CLI's summary)."""
