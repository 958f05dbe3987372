/*
 * libFuzzer harness for the PEFT config reader: parse arbitrary bytes and,
 * when they parse, ask the rank, alpha, scale and target questions a real
 * import asks, on a few fixed module names.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "peft_config.h"

static const char *const fuzz_modules[] = {
	"model.layers.0.self_attn.q_proj",
	"model.layers.17.mlp.down_proj",
	"lm_head",
	"",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/*
	 * An exact-size copy, so that a read past len lands in AddressSanitizer's
	 * redzone instead of in libFuzzer's buffer.
	 */
	char *text = malloc(size ? size : 1);
	if (!text)
		return 0;
	if (size)
		memcpy(text, data, size);

	struct ls_peft_config cfg;
	struct ls_err err;
	int rc = ls_peft_config_parse(text, size, "fuzz/adapter_config.json", &cfg, &err);
	if (rc == 0) {
		for (size_t i = 0; i < sizeof(fuzz_modules) / sizeof(fuzz_modules[0]); i++) {
			const char *m = fuzz_modules[i];
			int r = ls_peft_rank_for(&cfg, m);
			double alpha = ls_peft_alpha_for(&cfg, m);
			double scale = ls_peft_scale_for(&cfg, m);
			/* What the parser promises about every parsed config. */
			if (r < 1 || !(alpha > 0.0) || !(scale > 0.0) || alpha != alpha)
				abort();
			(void)ls_peft_targets(&cfg, m);
		}
	} else if (err.code != rc || memchr(err.msg, '\0', sizeof(err.msg)) == NULL) {
		abort();
	}
	ls_peft_config_free(&cfg);
	free(text);
	return 0;
}
