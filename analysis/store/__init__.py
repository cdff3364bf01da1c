"""The store: content-keyed stage folders, Jacobian shards, the record codec (every record written and read from its
type annotations), GMT files."""
