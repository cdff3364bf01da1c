"""The store: content-keyed stage folders, Jacobian shards, the record codec, GMT files and the readers."""
