"""The evaluation: each fit's numbers on its own (run, likelihoods, structure, anatomy), the data's own
(reference), the comparison of the fits (compare), and the schema of every number."""
