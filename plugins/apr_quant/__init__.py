"""apr quantize: one scheme per module (fp16, bf16, int8, int8-channel, int4, q8_0, q4k, q6k, nf4)."""
