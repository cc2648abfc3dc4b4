"""What a batch with one seed per image promises, method by method (``invsolve.solve``'s docstring)."""

#: Methods whose images of a batch equal their solo runs only in distribution, and why.
SHARED_GENERATOR = {
    "mcgdiff": "the SMC resampling of its particle systems draws from the shared generator",
    "tds": "the SMC resampling of its particles draws from the shared generator",
}
