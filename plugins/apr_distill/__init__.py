"""``apr distill``: knowledge distillation of a teacher into a student (standard, progressive, ensemble)."""
