"""The challenge's data: shard format and loaders, tokenizers and byte tables, dataset
preparation, the hub download and the embedded sample corpora."""
