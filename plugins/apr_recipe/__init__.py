"""apr recipe: the playbook as declarative, cached pipelines of apr techniques (docs/recipes.md)."""
