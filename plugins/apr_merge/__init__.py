"""apr merge: average, weighted, slerp and the task-vector family (task arithmetic, TIES, DARE,
DARE-TIES), streamed tensor by tensor."""
