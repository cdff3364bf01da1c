"""The stages, one module each: its config fields (FIELDS), the run facts it reads (FACTS), the stages whose records
it takes (NEEDS, passed to `compute` by name) and `compute(ctx, config, **upstream) -> record`, the record's class
its return annotation. `pipeline.stages` assembles the graph and the keys from these modules."""
