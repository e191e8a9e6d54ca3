/* endpoints_fuzz: any bytes as a runtime's answer to each probe (Ollama
 * /api/version, /api/tags, /api/ps, /api/show; llama.cpp /props, /slots,
 * /health; vLLM /metrics; OpenAI /v1/models), through the pure parsers of
 * src/endpoints/probe.c. Every parser sees every input: /api/ps after
 * /api/tags on the same answer, so that it finds models to mark.
 *
 * Checks: a refusal is -EINVAL with a printable reason inside the error
 * buffer; a model list is at most LM_ENDPOINT_MAX_MODELS long, ids unique,
 * printable and bounded, fields bounded and printable; numbers in their
 * documented ranges. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "endpoints/endpoints_internal.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define ERRCAP 96

static void
check_err(int rc, const char *err)
{
    if (rc == 0)
        return;
    if (rc != -EINVAL)
        abort();
    size_t n = strnlen(err, ERRCAP);
    if (n == 0 || n == ERRCAP)
        abort();
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)err[i] < 0x20 || (unsigned char)err[i] >= 0x7f)
            abort();
}

static void
check_field(const char *s, size_t max)
{
    if (!s)
        return;
    size_t n = strlen(s);
    if (n == 0 || n > max)
        abort();
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            abort();
}

static void
check_models(const struct lm_probe_result *res)
{
    if (res->n_models > LM_ENDPOINT_MAX_MODELS || (res->n_models && !res->models))
        abort();
    for (size_t i = 0; i < res->n_models; i++) {
        const struct lm_model *m = &res->models[i];
        if (!m->id)
            abort();
        check_field(m->id, LM_MODEL_ID_MAX);
        check_field(m->digest, LM_MODEL_FIELD_MAX);
        check_field(m->family, LM_MODEL_FIELD_MAX);
        check_field(m->param_size, LM_MODEL_FIELD_MAX);
        check_field(m->quant, LM_MODEL_FIELD_MAX);
        if (m->context_length < 0)
            abort();
        if (lm_models_find(res->models, i, m->id) >= 0)
            abort(); /* listed twice */
        if (m->alias && !lm_model_matches(m, m->alias))
            abort();
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact copy, so ASan sees any read past the answer. */
    char *body = lm_xmalloc(size ? size : 1);
    memcpy(body, data, size);
    char *err = lm_xmalloc(ERRCAP);
    struct lm_probe_result res;
    int rc;

    lm_parse_version(body, size);
    lm_parse_ollama_version(body, size);

    lm_probe_result_init(&res);
    err[0] = '\0';
    rc = lm_parse_ollama_tags(body, size, &res, err, ERRCAP);
    check_err(rc, err);
    check_models(&res);
    err[0] = '\0';
    rc = lm_parse_ollama_ps(body, size, &res, err, ERRCAP);
    check_err(rc, err);
    check_models(&res);
    lm_probe_result_clear(&res);

    int64_t ctx = -1;
    err[0] = '\0';
    rc = lm_parse_ollama_show(body, size, &ctx, err, ERRCAP);
    check_err(rc, err);
    if (rc == 0 && ctx < 0)
        abort();

    lm_probe_result_init(&res);
    err[0] = '\0';
    rc = lm_parse_openai_models(body, size, &res, err, ERRCAP);
    check_err(rc, err);
    check_models(&res);
    for (size_t i = 0; i < res.n_models; i++)
        if (!res.models[i].loaded)
            abort();
    lm_probe_result_clear(&res);

    int64_t n_ctx = -1;
    int total = 0;
    err[0] = '\0';
    rc = lm_parse_llamacpp_props(body, size, &n_ctx, &total, err, ERRCAP);
    check_err(rc, err);
    if (rc == 0 && (n_ctx < 0 || total == 0 || total < -1 || total >= 1 << 20))
        abort();

    int free_slots = -1;
    err[0] = '\0';
    rc = lm_parse_llamacpp_slots(body, size, &free_slots, err, ERRCAP);
    check_err(rc, err);
    if (rc == 0 && free_slots < 0)
        abort();

    lm_parse_loading(503, body, size);
    if (lm_parse_loading(200, body, size))
        abort();

    int running = -2, waiting = -2;
    rc = lm_parse_vllm_metrics(body, size, &running, &waiting);
    if (rc != 0 && rc != -EINVAL)
        abort();
    if (rc == 0 && (running < -1 || running > 1000000 || waiting < -1 || waiting > 1000000))
        abort();

    free(err);
    free(body);
    return 0;
}
