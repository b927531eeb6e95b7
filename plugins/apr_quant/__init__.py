"""apr quantize: the schemes of `apr_quant.schemes` (fp16, bf16, int8, int8-channel, int4, nf4, q8_0, q6k,
q4k, q4k_m, q5k_m, q3k_m), one table row each, streamed tensor by tensor."""
