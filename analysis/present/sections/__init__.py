"""The report's sections: each module gives its section's typed numbers and its tables and paragraphs, in the
order of `report/index.qmd`."""
