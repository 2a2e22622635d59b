"""The weight hub: versions, holders and read plans."""
