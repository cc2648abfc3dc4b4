"""Shared non-test code of the suite: tiny priors and pipelines, problems with exact answers, official rules."""
