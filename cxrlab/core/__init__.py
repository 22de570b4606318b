"""The science core: session, presets, cache, datasets, models, training, model store,
metrics, plots, results and the papers' published numbers (anchors)."""
