"""Process entry points: the `headhub` console script and the `headhub up` supervisor."""
