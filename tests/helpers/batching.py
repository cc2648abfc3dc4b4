"""What a batch with one seed per image promises, method by method (``invsolve.solve``'s docstring)."""

#: Methods whose images of a batch equal their solo runs only in distribution, and why.
SHARED_GENERATOR = {
    "mcgdiff": "the SMC resampling of its particle systems draws from the shared generator",
    "tds": "the SMC resampling of its particles draws from the shared generator",
    # Found by the contract suite: chains are grouped by torch.unique over y (sorted rows), and one
    # chain serves several samples, so rows follow the sort order, not sample * B + image.
    "pnpdm": "its chains are ordered by the sorted measurements, not by image, and serve several samples",
}
