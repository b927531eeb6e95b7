"""apr merge: average, weighted, slerp, task arithmetic, TIES, DARE and DARE-TIES, streamed tensor by tensor."""
