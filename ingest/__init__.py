"""Sources, readers, label rules and the batch pipeline (fetch → decode → embed → upsert)."""
