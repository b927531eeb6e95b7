# Thin wrappers over the apr CLI for the playbook's make targets (see docs/eval.md).
#   make eval-humaneval MODEL=model.apr PROMPT_STRATEGY=few-shot
#   make eval-mbpp MODEL=model.apr MBPP_DATA=mbpp.jsonl
APR ?= $(if $(wildcard .venv/bin/apr),.venv/bin/apr,apr)
MODEL ?= model.apr
PROMPT_STRATEGY ?= standard
SAMPLES ?= 1
TEMPERATURE ?= 0
EVAL_ARGS ?=
HUMANEVAL_DATA ?=
MBPP_DATA ?= mbpp.jsonl

EVAL = $(APR) eval $(MODEL) --prompt-strategy $(PROMPT_STRATEGY) --samples $(SAMPLES) \
	--temperature $(TEMPERATURE) --allow-code-execution --json $(EVAL_ARGS)

.PHONY: eval-humaneval eval-mbpp
eval-humaneval:
	$(EVAL) --task humaneval $(if $(HUMANEVAL_DATA),--data $(HUMANEVAL_DATA))

eval-mbpp:
	$(EVAL) --task mbpp --data $(MBPP_DATA)
