"""Generation: the job (plan, files, index, summary), batched decoding, the fast step, sampling, quality."""
